//! Head losses added by plugins: a new method without touching lortflow itself.
//!
//! A plugin is a value implementing [`LossPlugin`]: the language side (a [`VariantSpec`]: name,
//! description, typed and range-checked properties with defaults) and a builder of the
//! per-sample loss ([`SampleLoss`]) from those properties and the training class counts. After
//! [`register_loss`], `loss "name" prop=value` is a component of the language like the built-in
//! ones: `lint` checks it, `--set` and sweeps reach its properties, `docs` lists it, its version
//! is part of the cache key, and the head trainer runs it with every other component (linear
//! logits, class weights, samplers, MaxNorm, inference maps, trials, sweeps, selection).
//!
//! `examples/custom_head_method.rs` is a complete plugin (label-aware smoothing) and a
//! `lortflow` binary that includes it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use lortflow_lang::schema::{self, PluginVariant, RegisterError, VariantSpec};

use crate::head::SampleLoss;

/// A head loss a plugin adds to the language and the trainer.
pub trait LossPlugin: Send + Sync {
    /// The `loss` variant: name, description, properties (numbers, each with a default).
    fn variant(&self) -> &'static VariantSpec;

    /// The implementation's version: change it when results change, so that cached heads that
    /// use the loss are retrained.
    fn version(&self) -> &'static str;

    /// The loss for one head, from the variant's properties (all present, defaults filled in,
    /// range-checked by the linter) and the counts of the classes it trains on. An `Err` is a
    /// sentence saying what is wrong with the settings.
    fn build(
        &self,
        params: &BTreeMap<String, f64>,
        class_counts: &[usize],
    ) -> Result<Arc<dyn SampleLoss>, String>;
}

static LOSSES: RwLock<Vec<&'static dyn LossPlugin>> = RwLock::new(Vec::new());

/// Registers a loss with the language (`loss "name"`) and the head trainer, for the rest of the
/// process. Registering the same plugin again is a no-op.
pub fn register_loss(plugin: &'static dyn LossPlugin) -> Result<(), RegisterError> {
    schema::register_variant(PluginVariant {
        node: "loss",
        variant: plugin.variant(),
        version: plugin.version(),
    })?;
    let mut losses = LOSSES.write().unwrap_or_else(|e| e.into_inner());
    match losses
        .iter()
        .find(|p| p.variant().name == plugin.variant().name)
    {
        // The same plugin again: nothing to do.
        Some(existing) if std::ptr::addr_eq(*existing, plugin) => Ok(()),
        // Another implementation under a taken name would silently lose to the first.
        Some(_) => Err(RegisterError::Taken {
            node: "loss".into(),
            name: plugin.variant().name.into(),
        }),
        None => {
            losses.push(plugin);
            Ok(())
        }
    }
}

/// The registered plugin called `name`.
pub(crate) fn find(name: &str) -> Option<&'static dyn LossPlugin> {
    LOSSES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|p| p.variant().name == name)
        .copied()
}

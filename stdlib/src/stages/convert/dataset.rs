//! A `dataset` stage's IR: how its train split becomes long-tailed and how its classes are
//! grouped.

use lortflow_data::dataset::{
    Boundary, ClassOrder, GroupConfig, ImbalanceProfile, LongTailConfig, SampleSelection,
    Thresholds,
};
use lortflow_lang::ir::{DatasetSpec, GroupRule, TailProfile, TailSelect};

/// How the train split is subsampled; `None` for `long-tail "none"`, which keeps every sample
/// (the data is long-tailed already: ImageNet-LT lists, iNaturalist, imported features).
pub(crate) fn long_tail(spec: &DatasetSpec) -> Option<LongTailConfig> {
    let lt = &spec.long_tail;
    let profile = match lt.profile {
        TailProfile::Exp => ImbalanceProfile::Exp,
        TailProfile::Step => ImbalanceProfile::Step,
        TailProfile::None => return None,
    };
    let selection = match lt.select {
        TailSelect::Shuffle => SampleSelection::Shuffle { seed: lt.seed },
        TailSelect::First => SampleSelection::First,
    };
    Some(LongTailConfig {
        profile,
        imbalance_ratio: lt.imbalance_ratio,
        n_max: lt.max_per_class.map(|m| m as usize),
        max_per_class: None,
        class_order: ClassOrder::Labels,
        selection,
    })
}

/// The many / medium / few thresholds and boundary rule.
pub(crate) fn groups(spec: &DatasetSpec) -> GroupConfig {
    let g = &spec.groups;
    let thresholds = if g.relative {
        Thresholds::Relative {
            many: g.many,
            few: g.few,
        }
    } else {
        Thresholds::Absolute {
            many: g.many.round() as usize,
            few: g.few.round() as usize,
        }
    };
    let boundary = match g.rule {
        GroupRule::Inclusive => Boundary::Oltr,
        GroupRule::Strict => Boundary::Strict,
    };
    GroupConfig {
        thresholds,
        boundary,
    }
}

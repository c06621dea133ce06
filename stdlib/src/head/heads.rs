//! What the training loop drives: one SGD step of a group of stacked heads, in one of three
//! implementations (see [`train`](super::train)): the closed-form gradient in host memory
//! ([`host`](super::host)) or on a device ([`analytic`](super::analytic)), and autodiff
//! ([`autodiff`](super::autodiff)).

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::analytic::AnalyticHeads;
use super::autodiff::AutodiffHeads;
use super::host::HostHeads;
use super::step::{HeadParams, SgdState, StepInput, read};

/// The three step implementations (see the module docs).
pub(crate) enum Heads<B: AutodiffBackend> {
    Autodiff(Box<AutodiffHeads<B>>),
    Analytic(Box<AnalyticHeads<B::InnerBackend>>),
    Host(Box<HostHeads>),
}

impl<B: AutodiffBackend> Heads<B> {
    /// One step; returns the per-head losses, then the per-head correct counts. `x_all` is the
    /// train matrix on the device (absent for host heads, which read `train`).
    pub(crate) fn step(
        &mut self,
        x_all: Option<&Tensor<B::InnerBackend, 2>>,
        train: &[f32],
        input: &StepInput,
        sgd: &SgdState<B::InnerBackend>,
    ) -> Vec<f32> {
        let on_device = || x_all.expect("device heads have the train matrix on the device");
        match self {
            Heads::Autodiff(heads) => read(heads.step(on_device(), input, sgd)),
            Heads::Analytic(heads) => read(heads.step(on_device(), input)),
            Heads::Host(heads) => heads.step(train, input),
        }
    }

    pub(crate) fn begin_epoch(&mut self, lrs: &[f64]) {
        match self {
            Heads::Autodiff(_) => {}
            Heads::Analytic(heads) => heads.begin_epoch(lrs),
            Heads::Host(heads) => heads.begin_epoch(lrs),
        }
    }

    pub(crate) fn end_epoch(&mut self) {
        match self {
            Heads::Autodiff(heads) => heads.end_epoch(),
            Heads::Analytic(heads) => heads.end_epoch(),
            Heads::Host(heads) => heads.end_epoch(),
        }
    }

    pub(crate) fn download(&self) -> Vec<HeadParams> {
        match self {
            Heads::Autodiff(heads) => heads.download(),
            Heads::Analytic(heads) => heads.download(),
            Heads::Host(heads) => heads.download(),
        }
    }
}

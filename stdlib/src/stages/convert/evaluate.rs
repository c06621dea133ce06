//! An `evaluate` stage's IR: which samples the RSD's standard deviation is taken over.

use lortflow_lang::ir;
use lortflow_report::metric::RsdOver;

/// The sample set of the RSD.
pub(crate) fn rsd_over(over: ir::RsdOver) -> RsdOver {
    match over {
        ir::RsdOver::Positive => RsdOver::Positive,
        ir::RsdOver::All => RsdOver::All,
        ir::RsdOver::Negative => RsdOver::Negative,
    }
}

/// The pipeline's name of a sample set, for the report.
pub(crate) fn rsd_over_name(over: RsdOver) -> &'static str {
    match over {
        RsdOver::Positive => ir::RsdOver::Positive,
        RsdOver::All => ir::RsdOver::All,
        RsdOver::Negative => ir::RsdOver::Negative,
    }
    .name()
}

//! A `features` stage's IR: its test-time augmentation.

use crate::features::Tta;

/// The test-time augmentation `tta` names.
pub(crate) fn tta(tta: lortflow_lang::ir::Tta) -> Tta {
    match tta {
        lortflow_lang::ir::Tta::None => Tta::None,
        lortflow_lang::ir::Tta::Hflip => Tta::Hflip,
    }
}

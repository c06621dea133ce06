//! The instruction-set level of lortflow's CPU kernels and of its matrix products: the best this
//! CPU has, or a lower one named by `LORTFLOW_CPU_LEVEL` (`scalar`, `avx2`, `avx512`), so that
//! the AVX2 path can be measured on an AVX-512 machine and the baseline anywhere.
//!
//! The variable is read once per process ([`choice`]); the CLI reads it before any work and
//! turns an unknown value into an error. A level above what the CPU has runs at the CPU's best
//! (the variable is a cap). Burn's own CPU operations (its element-wise ops, the classifier's
//! matmul) choose their instruction set themselves and are not capped: the convolutions, batch
//! norm, pooling and every matrix product of the heads and of the im2col path are lortflow's.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use thiserror::Error;

/// The environment variable that caps the level.
pub const LEVEL_VARIABLE: &str = "LORTFLOW_CPU_LEVEL";

/// An x86-64 instruction-set level, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuLevel {
    /// No SIMD beyond the x86-64 baseline (the kernels' loops on one lane, gemm's scalar kernels).
    Scalar,
    /// AVX2 and FMA (x86-64-v3): 8 lanes of f32, 16 vector registers.
    Avx2,
    /// AVX-512 F/BW/CD/DQ/VL (x86-64-v4): 16 lanes of f32, 32 vector registers.
    Avx512,
}

impl CpuLevel {
    /// Every level, lowest first.
    pub const ALL: [CpuLevel; 3] = [CpuLevel::Scalar, CpuLevel::Avx2, CpuLevel::Avx512];

    /// The name `LORTFLOW_CPU_LEVEL` takes.
    pub fn name(self) -> &'static str {
        match self {
            CpuLevel::Scalar => "scalar",
            CpuLevel::Avx2 => "avx2",
            CpuLevel::Avx512 => "avx512",
        }
    }

    /// The best level this CPU runs. On other architectures than x86-64 the levels do not
    /// apply: this is `Scalar`, and an uncapped process dispatches as `pulp` detects (NEON).
    pub fn detected() -> CpuLevel {
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V4::try_new().is_some() {
                return CpuLevel::Avx512;
            }
            if pulp::x86::V3::try_new().is_some() {
                return CpuLevel::Avx2;
            }
        }
        CpuLevel::Scalar
    }

    /// The levels this CPU can run, lowest first (what tests compare).
    pub fn available() -> impl Iterator<Item = CpuLevel> {
        let best = CpuLevel::detected();
        CpuLevel::ALL.into_iter().filter(move |&l| l <= best)
    }

    /// The `pulp` dispatcher for this level, or the highest below it this CPU has.
    pub(crate) fn arch(self) -> pulp::Arch {
        #[cfg(target_arch = "x86_64")]
        {
            if self >= CpuLevel::Avx512
                && let Some(simd) = pulp::x86::V4::try_new()
            {
                return pulp::Arch::V4(simd);
            }
            if self >= CpuLevel::Avx2
                && let Some(simd) = pulp::x86::V3::try_new()
            {
                return pulp::Arch::V3(simd);
            }
        }
        pulp::Arch::Scalar
    }
}

impl fmt::Display for CpuLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `LORTFLOW_CPU_LEVEL` holds something that is not a level.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error(
    "{LEVEL_VARIABLE}={value:?} is not an instruction-set level: use `scalar`, `avx2` or `avx512`, \
     or unset it for the best this CPU has ({detected})",
    detected = CpuLevel::detected()
)]
pub struct UnknownCpuLevel {
    /// The value as written.
    pub value: String,
}

impl FromStr for CpuLevel {
    type Err = UnknownCpuLevel;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        CpuLevel::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(value.trim()))
            .ok_or_else(|| UnknownCpuLevel {
                value: value.to_owned(),
            })
    }
}

/// The level a process runs at, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLevelChoice {
    /// What the kernels run: the requested level, at most the detected one.
    pub in_use: CpuLevel,
    /// The best this CPU has.
    pub detected: CpuLevel,
    /// What `LORTFLOW_CPU_LEVEL` asked for, when set (and not empty).
    pub requested: Option<CpuLevel>,
}

impl CpuLevelChoice {
    /// The choice for the variable's value (`None` when unset or empty).
    pub fn new(requested: Option<&str>) -> Result<CpuLevelChoice, UnknownCpuLevel> {
        let requested = requested
            .filter(|v| !v.trim().is_empty())
            .map(str::parse)
            .transpose()?;
        let detected = CpuLevel::detected();
        Ok(CpuLevelChoice {
            in_use: requested.map_or(detected, |r: CpuLevel| r.min(detected)),
            detected,
            requested,
        })
    }

    /// The dispatcher: `pulp`'s own detection unless a level below the CPU's was requested (on
    /// x86-64 that is the detected level's; elsewhere, NEON on AArch64, where the x86 levels do
    /// not apply and are ignored), else the capped level's.
    fn arch(&self) -> pulp::Arch {
        match self.requested {
            Some(requested) if requested < self.detected => self.in_use.arch(),
            _ => pulp::Arch::new(),
        }
    }
}

impl fmt::Display for CpuLevelChoice {
    /// `avx2 (the best this CPU has)`, `avx2 (LORTFLOW_CPU_LEVEL=avx2; this CPU has avx512)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.requested {
            None => write!(f, "{} (the best this CPU has)", self.in_use),
            Some(r) if r == self.detected => {
                write!(
                    f,
                    "{} ({LEVEL_VARIABLE}={r}, the best this CPU has)",
                    self.in_use
                )
            }
            Some(r) => write!(
                f,
                "{} ({LEVEL_VARIABLE}={r}; this CPU has {})",
                self.in_use, self.detected
            ),
        }
    }
}

static CHOICE: OnceLock<Result<CpuLevelChoice, UnknownCpuLevel>> = OnceLock::new();

fn read_once() -> &'static Result<CpuLevelChoice, UnknownCpuLevel> {
    CHOICE.get_or_init(|| CpuLevelChoice::new(std::env::var(LEVEL_VARIABLE).ok().as_deref()))
}

/// The process's level, from `LORTFLOW_CPU_LEVEL` read on the first call.
pub fn choice() -> Result<CpuLevelChoice, UnknownCpuLevel> {
    read_once().clone()
}

/// The level the kernels run at. Panics if `LORTFLOW_CPU_LEVEL` is not a level: the CLI checks
/// [`choice`] before any work, so only a library caller that did not can get there.
pub fn level() -> CpuLevel {
    in_use().in_use
}

fn in_use() -> &'static CpuLevelChoice {
    match read_once() {
        Ok(choice) => choice,
        Err(err) => panic!("{err}"),
    }
}

/// The level `LORTFLOW_CPU_LEVEL` holds the process to, when it is set: libraries with their own
/// dispatch (`gemm`) keep their own choice when it is not.
pub(crate) fn cap() -> Option<CpuLevel> {
    let choice = in_use();
    choice.requested.map(|_| choice.in_use)
}

/// Runs `kernel` compiled for the process's level (see [`level`]).
#[inline(always)]
pub(crate) fn dispatch<K: pulp::WithSimd>(kernel: K) -> K::Output {
    in_use().arch().dispatch(kernel)
}

/// The f32 lanes of the vectors a level runs: `cpu::dispatch(Lanes)`, `level.arch().dispatch(Lanes)`.
pub(crate) struct Lanes;

impl pulp::WithSimd for Lanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
        S::F32_LANES
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_name_and_anything_else_is_an_error() {
        for level in CpuLevel::ALL {
            assert_eq!(level.name().parse::<CpuLevel>(), Ok(level));
            assert_eq!(level.name().to_uppercase().parse::<CpuLevel>(), Ok(level));
        }
        let err = "avx-512".parse::<CpuLevel>().unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(
                "LORTFLOW_CPU_LEVEL=\"avx-512\" is not an instruction-set level: use `scalar`, \
                 `avx2` or `avx512`"
            ),
            "{message}"
        );
    }

    #[test]
    fn the_variable_caps_the_level_and_never_raises_it() {
        let detected = CpuLevel::detected();
        for requested in CpuLevel::ALL {
            let choice = CpuLevelChoice::new(Some(requested.name())).unwrap();
            assert_eq!(choice.in_use, requested.min(detected));
            assert_eq!(choice.requested, Some(requested));
            assert!(choice.to_string().starts_with(choice.in_use.name()));
        }
        for unset in [None, Some(""), Some("  ")] {
            let choice = CpuLevelChoice::new(unset).unwrap();
            assert_eq!((choice.in_use, choice.requested), (detected, None));
        }
        assert!(CpuLevelChoice::new(Some("sse")).is_err());
        assert_eq!(CpuLevel::available().last(), Some(detected));
    }

    /// The level the parent test process expects a child to run at (`scalar`, `avx2`,
    /// `avx512`): set by `kernels::tests::every_level_passes_the_kernel_tests` beside
    /// `LORTFLOW_CPU_LEVEL`, so that the child checks the variable reached the kernels.
    pub(crate) const EXPECTED_LEVEL_VARIABLE: &str = "LORTFLOW_TEST_EXPECTED_CPU_LEVEL";

    /// In a child process of `every_level_passes_the_kernel_tests`: the kernels dispatch at the
    /// level the parent asked for through `LORTFLOW_CPU_LEVEL`. Elsewhere: at this CPU's best,
    /// unless the variable is set.
    #[test]
    fn the_process_runs_at_the_variable_s_level() {
        let expected: CpuLevel = match std::env::var(EXPECTED_LEVEL_VARIABLE) {
            Ok(name) => name.parse().expect("the parent names a level"),
            Err(_) if std::env::var_os(LEVEL_VARIABLE).is_some() => return, // set by hand
            Err(_) => CpuLevel::detected(),
        };
        assert_eq!(level(), expected);
        assert_eq!(dispatch(Lanes), lanes_of(expected), "{expected}");
    }

    fn lanes_of(level: CpuLevel) -> usize {
        match level {
            CpuLevel::Scalar => 1,
            CpuLevel::Avx2 => 8,
            CpuLevel::Avx512 => 16,
        }
    }

    #[test]
    fn each_level_dispatches_its_own_lane_width() {
        for level in CpuLevel::available() {
            assert_eq!(level.arch().dispatch(Lanes), lanes_of(level), "{level}");
        }
    }
}

//! Backend selection: the CPU backend (`flex`) always, CUDA when built with the `cuda` feature.
//!
//! Stage code is written once, generic over `B: AutodiffBackend`, and the choice of backend is
//! made at the edge (the CLI's `--backend`) through [`run_on`] or [`with_backend!`]. Generic code is
//! compiled once per backend, so the set stays small: `Autodiff<Flex>` and, behind the feature,
//! `Autodiff<Cuda>`.
//!
//! CUDA is probed before any work starts ([`probe_cuda`]). Burn loads the driver lazily, at the
//! first tensor operation, and a missing driver or device is a *panic* deep inside cubecl (not a
//! `Result`), possibly after minutes of data loading. The probe runs one tiny tensor round trip on
//! a fresh thread: a panic there ends only that thread and comes back as a `JoinHandle` error,
//! which we turn into [`BackendError::CudaUnavailable`] with the panic's message. Looking for
//! `/dev/nvidia0` and `libcuda.so` instead would be cheaper but wrong in both directions (WSL and
//! containers have no `/dev/nvidia0`; a driver/toolkit mismatch passes the file check and still
//! panics), so we test the thing that actually fails. A timeout guards against a driver that hangs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// The CPU backend without autodiff (inference, feature extraction).
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with autodiff (training).
pub type CpuAutodiff = burn::backend::Autodiff<CpuBackend>;
/// The CPU device.
pub type CpuDevice = burn_flex::FlexDevice;

/// The CUDA backend without autodiff.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;
/// The CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<CudaBackend>;
/// A CUDA device (by ordinal).
#[cfg(feature = "cuda")]
pub type CudaDevice = burn::backend::cuda::CudaDevice;

/// How long the CUDA probe may take: creating a context on a cold GPU takes seconds, not minutes.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const CUDA_PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// Which backend runs the tensor work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// `flex`, the pure-Rust CPU backend.
    #[default]
    Cpu,
    /// CUDA device `index` (0 for the first GPU).
    Cuda {
        /// The device ordinal.
        index: usize,
    },
}

impl BackendChoice {
    /// The name used in cache keys and messages: `cpu`, `cuda` or `cuda:N`.
    pub fn name(&self) -> String {
        match self {
            BackendChoice::Cpu => "cpu".into(),
            BackendChoice::Cuda { index: 0 } => "cuda".into(),
            BackendChoice::Cuda { index } => format!("cuda:{index}"),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for BackendChoice {
    type Err = BackendError;

    /// Parses `cpu`, `cuda` or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda { index: 0 }),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(|index| BackendChoice::Cuda { index })
                .ok_or_else(|| BackendError::UnknownBackend(s.to_string())),
        }
    }
}

/// Why a backend cannot be used.
#[derive(Debug, Error)]
pub enum BackendError {
    /// Not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown backend `{0}`, expected `cpu`, `cuda` or `cuda:N`")]
    UnknownBackend(String),
    /// The binary was built without the `cuda` cargo feature.
    #[error(
        "this lortflow was built without CUDA support; rebuild with `--features cuda` or use `--backend cpu`"
    )]
    CudaNotCompiled,
    /// The driver, the device or NVRTC could not be used.
    #[error("CUDA device {index} is not usable: {reason}")]
    CudaUnavailable {
        /// The device ordinal.
        index: usize,
        /// What the probe saw (the driver's or cubecl's message).
        reason: String,
    },
}

/// Checks that CUDA device `index` can run a tensor operation, without risking a panic in the
/// caller's thread. Call it once, before any data loading, when the user asks for CUDA.
pub fn probe_cuda(index: usize) -> Result<(), BackendError> {
    #[cfg(not(feature = "cuda"))]
    {
        let _ = index;
        Err(BackendError::CudaNotCompiled)
    }
    #[cfg(feature = "cuda")]
    {
        // Without a driver, cubecl's device thread dies and the probe only sees a closed
        // channel; say what is actually missing.
        if let Err(reason) = find_driver() {
            return Err(BackendError::CudaUnavailable { index, reason });
        }
        probe_in_thread(index, CUDA_PROBE_TIMEOUT, move || {
            use burn::tensor::Tensor;
            let device = CudaDevice::new(index);
            let x = Tensor::<CudaBackend, 1>::from_floats([1.0, 2.0, 3.0], &device);
            let sum: f32 = x.sum().into_scalar();
            if (sum - 6.0).abs() > 1e-4 {
                return Err(format!("a test sum gave {sum} instead of 6"));
            }
            Ok(())
        })
    }
}

/// Loads the CUDA driver library under the names cudarc tries first (`libcuda.so`,
/// `libcuda.so.1`; `nvcuda.dll` on Windows), and keeps it loaded: cudarc loads it again, and
/// unloading a GPU driver is best avoided.
#[cfg(feature = "cuda")]
fn find_driver() -> Result<(), String> {
    let names: &[&str] = if cfg!(windows) {
        &["nvcuda.dll"]
    } else {
        &["libcuda.so", "libcuda.so.1"]
    };
    let mut last = None;
    for &name in names {
        // SAFETY: loading the driver runs its initialisers, which is exactly what cudarc does on
        // the first CUDA call.
        #[allow(unsafe_code)]
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => {
                std::mem::forget(library);
                return Ok(());
            }
            Err(err) => last = Some((name, err)),
        }
    }
    let (name, err) = last.expect("at least one name is tried");
    Err({
        // libloading's message is "dlopen failed"; the loader's own reason is its source.
        let reason =
            std::error::Error::source(&err).map_or_else(|| err.to_string(), |s| s.to_string());
        format!(
            "the NVIDIA driver library `{name}` cannot be loaded ({reason}); is an NVIDIA driver \
             installed on this machine?"
        )
    })
}

/// Runs `probe` on a fresh thread and maps a panic, an error or a timeout to
/// [`BackendError::CudaUnavailable`]. Separate from [`probe_cuda`] so that the panic path can be
/// tested without a GPU.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn probe_in_thread(
    index: usize,
    timeout: Duration,
    probe: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), BackendError> {
    quiet_probe_panics();
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("{PROBE_THREAD}{index}"))
        .spawn(move || {
            // A panic unwinds this thread only; the sender is dropped and `recv` sees it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(probe))
                .unwrap_or_else(|payload| Err(panic_message(payload.as_ref())));
            let _ = tx.send(result);
        });
    let unavailable = |reason: String| BackendError::CudaUnavailable { index, reason };
    if let Err(err) = spawned {
        return Err(unavailable(format!("cannot start the probe thread: {err}")));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(unavailable(reason)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(unavailable(format!(
            "no answer from the driver within {}s",
            timeout.as_secs()
        ))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(unavailable(
            "the probe thread ended without an answer".into(),
        )),
    }
}

/// The name prefix of probe threads.
const PROBE_THREAD: &str = "lortflow-cuda-probe-";

/// Keeps the default panic message (and backtrace) of probe threads off stderr: their panics
/// are caught and reported as a [`BackendError`]. Other threads' panics print as before.
fn quiet_probe_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let probe = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with(PROBE_THREAD));
            if !probe {
                previous(info);
            }
        }));
    });
}

/// The text of a panic payload (`&str` or `String`; anything else gets a generic message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the driver panicked without a message".to_string()
    }
}

/// Work that is written once, generic over the backend, and dispatched by [`run_on`].
///
/// A closure cannot be generic over a type, hence a trait with a generic method:
///
/// ```
/// use burn::tensor::{Tensor, backend::AutodiffBackend};
/// use lortflow_stdlib::backend::{BackendChoice, BackendTask, run_on};
///
/// struct Sum(Vec<f32>);
/// impl BackendTask for Sum {
///     type Output = f32;
///     fn run<B: AutodiffBackend>(self, device: B::Device) -> f32 {
///         Tensor::<B, 1>::from_floats(self.0.as_slice(), &device).sum().into_scalar().elem()
///     }
/// }
/// # use burn::tensor::ElementConversion;
/// assert_eq!(run_on(BackendChoice::Cpu, Sum(vec![1.0, 2.0]))?, 3.0);
/// # Ok::<(), lortflow_stdlib::backend::BackendError>(())
/// ```
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on `B` and `device`.
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the chosen backend, probing CUDA first.
pub fn run_on<T: BackendTask>(choice: BackendChoice, task: T) -> Result<T::Output, BackendError> {
    match choice {
        BackendChoice::Cpu => Ok(task.run::<CpuAutodiff>(CpuDevice::default())),
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda { index } => {
            probe_cuda(index)?;
            Ok(task.run::<CudaAutodiff>(CudaDevice::new(index)))
        }
        #[cfg(not(feature = "cuda"))]
        BackendChoice::Cuda { .. } => Err(BackendError::CudaNotCompiled),
    }
}

/// Expands `$body` once per compiled backend with `$B` bound to the autodiff backend type and
/// `$device` to its device, for code that would rather not define a [`BackendTask`]. Evaluates to
/// `Result<T, BackendError>`; CUDA is probed first.
///
/// ```
/// use burn::tensor::Tensor;
/// use lortflow_stdlib::{backend::BackendChoice, with_backend};
///
/// let n = with_backend!(BackendChoice::Cpu, |B, device| {
///     Tensor::<B, 1>::zeros([4], &device).dims()[0]
/// })?;
/// assert_eq!(n, 4);
/// # Ok::<(), lortflow_stdlib::backend::BackendError>(())
/// ```
#[macro_export]
macro_rules! with_backend {
    ($choice:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $choice {
            $crate::backend::BackendChoice::Cpu => {
                type $B = $crate::backend::CpuAutodiff;
                let $device = $crate::backend::CpuDevice::default();
                Ok::<_, $crate::backend::BackendError>($body)
            }
            $crate::backend::BackendChoice::Cuda { index } => {
                $crate::__with_cuda!(index, |$B, $device| $body)
            }
        }
    }};
}

/// The CUDA arm of [`with_backend!`] (present only with the `cuda` feature).
#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cuda {
    ($index:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $crate::backend::probe_cuda($index) {
            Ok(()) => {
                type $B = $crate::backend::CudaAutodiff;
                let $device = $crate::backend::CudaDevice::new($index);
                Ok($body)
            }
            Err(err) => Err(err),
        }
    }};
}

/// The CUDA arm of [`with_backend!`] (present only with the `cuda` feature).
#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cuda {
    ($index:expr, |$B:ident, $device:ident| $body:expr) => {{
        let _ = $index;
        Err($crate::backend::BackendError::CudaNotCompiled)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_names() {
        assert_eq!("cpu".parse::<BackendChoice>().unwrap(), BackendChoice::Cpu);
        assert_eq!(
            "cuda:1".parse::<BackendChoice>().unwrap(),
            BackendChoice::Cuda { index: 1 }
        );
        assert_eq!(BackendChoice::Cuda { index: 0 }.to_string(), "cuda");
        assert!("gpu".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn a_panicking_probe_becomes_an_error() {
        let err = probe_in_thread(3, Duration::from_secs(10), || {
            panic!("Unable to dynamically load the \"cuda\" shared library")
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("CUDA device 3 is not usable"), "{msg}");
        assert!(msg.contains("shared library"), "{msg}");
    }

    #[test]
    fn a_hanging_probe_times_out() {
        let err = probe_in_thread(0, Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = probe_cuda(0).unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}

//! Backend selection: the CPU backend (`flex`) always, CUDA when built with the `cuda` feature,
//! wgpu (Vulkan, Metal) when built with the `wgpu` feature.
//!
//! Stage code is written once, generic over `B: AutodiffBackend`, and the choice of backend is
//! made at the edge (the CLI's `--backend`) through [`run_on`] or [`with_backend!`]. Generic code is
//! compiled once per backend, so the set stays small: `Autodiff<Flex>` and, behind the features,
//! `Autodiff<Cuda>` and `Autodiff<Wgpu>`.
//!
//! Accelerators are probed before any work starts ([`probe_cuda`], [`probe_wgpu`]). Burn loads the driver lazily, at the
//! first tensor operation, and a missing driver or device is a *panic* deep inside cubecl (not a
//! `Result`), possibly after minutes of data loading. The probe runs one tiny tensor round trip on
//! a fresh thread: a panic there ends only that thread and comes back as a `JoinHandle` error,
//! which we turn into [`BackendError::CudaUnavailable`] (or `WgpuUnavailable`) with the panic's
//! message. Looking for
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

/// The wgpu backend without autodiff (Vulkan on Linux and Windows, Metal on macOS).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu;
/// The wgpu backend with autodiff.
#[cfg(feature = "wgpu")]
pub type WgpuAutodiff = burn::backend::Autodiff<WgpuBackend>;
/// A wgpu device: always the default one, which wgpu picks (a discrete GPU first, then an
/// integrated one, then a software one) unless `CUBECL_WGPU_DEFAULT_DEVICE` names another
/// (`DiscreteGpu(1)`, `IntegratedGpu(0)`, `Cpu`…).
#[cfg(feature = "wgpu")]
pub type WgpuDevice = burn::backend::wgpu::WgpuDevice;

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
    /// wgpu's default adapter (see [`WgpuDevice`](burn::backend::wgpu::WgpuDevice)).
    Wgpu,
}

impl BackendChoice {
    /// The name used in cache keys and messages: `cpu`, `cuda`, `cuda:N` or `wgpu`.
    pub fn name(&self) -> String {
        match self {
            BackendChoice::Cpu => "cpu".into(),
            BackendChoice::Wgpu => "wgpu".into(),
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

    /// Parses `cpu`, `cuda`, `cuda:N` or `wgpu`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(BackendChoice::Cpu),
            "wgpu" => Ok(BackendChoice::Wgpu),
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
    /// Not `cpu`, `cuda`, `cuda:N` or `wgpu`.
    #[error("unknown backend `{0}`, expected `cpu`, `cuda`, `cuda:N` or `wgpu`")]
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
    /// The binary was built without the `wgpu` cargo feature.
    #[error(
        "this lortflow was built without wgpu support; rebuild with `--features wgpu` or use `--backend cpu`"
    )]
    WgpuNotCompiled,
    /// Data-parallel training asked for more devices than the backend can address.
    #[error(
        "the {backend} backend runs on one device, but {devices} devices were asked for (`devices` in `defaults`, or `--devices`); use `cuda` or `cpu` for several devices, or one device"
    )]
    OneDeviceOnly {
        /// The backend's name.
        backend: &'static str,
        /// The devices asked for.
        devices: usize,
    },
    /// No Vulkan (or Metal) adapter could run a tensor operation.
    #[error("the wgpu backend is not usable: {reason}")]
    WgpuUnavailable {
        /// What the probe saw, and what to install.
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
        let unavailable = |reason| BackendError::CudaUnavailable { index, reason };
        // Without a driver, cubecl's device thread dies and the probe only sees a closed
        // channel; say what is actually missing.
        let names: &[&str] = if cfg!(windows) {
            &["nvcuda.dll"]
        } else {
            &["libcuda.so", "libcuda.so.1"]
        };
        load_library(names).map_err(|(name, reason)| {
            unavailable(format!(
                "the NVIDIA driver library `{name}` cannot be loaded ({reason}); is an NVIDIA \
                 driver installed on this machine?"
            ))
        })?;
        probe_in_thread(&format!("cuda-{index}"), CUDA_PROBE_TIMEOUT, move || {
            let device = CudaDevice::new(index);
            check_sum::<CudaBackend>(&device)
        })
        .map_err(unavailable)
    }
}

/// How long the wgpu probe may take: on a software adapter, creating the device and compiling the
/// first kernels takes a few seconds.
#[cfg(feature = "wgpu")]
const WGPU_PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// Checks that wgpu finds an adapter that runs a tensor operation, without risking a panic in the
/// caller's thread, and returns the adapter's description (`llvmpipe (LLVM 15.0.6, 256 bits), a
/// CPU (software) adapter, through Vulkan`). Call it before any data loading, when the user asks
/// for wgpu. The device is set up once per process, here: later calls return the first answer.
pub fn probe_wgpu() -> Result<String, BackendError> {
    #[cfg(not(feature = "wgpu"))]
    {
        Err(BackendError::WgpuNotCompiled)
    }
    #[cfg(feature = "wgpu")]
    {
        static PROBED: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
        PROBED
            .get_or_init(|| {
                find_vulkan_loader()?;
                probe_in_thread("wgpu", WGPU_PROBE_TIMEOUT, || {
                    use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup};
                    let device = WgpuDevice::default();
                    // Set up the device here rather than at the first tensor operation, so that
                    // the adapter wgpu picked can be named.
                    let setup = init_setup::<AutoGraphicsApi>(&device, Default::default());
                    let info = setup.adapter.get_info();
                    check_sum::<WgpuBackend>(&device)?;
                    // Burn does not re-export wgpu's `DeviceType`; its variant names are stable.
                    let kind = match format!("{:?}", info.device_type).as_str() {
                        "DiscreteGpu" => "a discrete GPU",
                        "IntegratedGpu" => "an integrated GPU",
                        "VirtualGpu" => "a virtual GPU",
                        "Cpu" => "a CPU (software) adapter",
                        _ => "an adapter of unknown kind",
                    };
                    Ok(format!("{}, {kind}, through {:?}", info.name, info.backend))
                })
                .map_err(|reason| {
                    if reason.contains("adapter") {
                        format!(
                            "wgpu found no GPU adapter ({reason}). Install your GPU's Vulkan \
                             driver, or Mesa's software Vulkan to run on the CPU (Debian, \
                             Ubuntu: `apt install mesa-vulkan-drivers`)"
                        )
                    } else {
                        reason
                    }
                })
            })
            .clone()
            .map_err(|reason| BackendError::WgpuUnavailable { reason })
    }
}

/// Loads the Vulkan loader (Linux and the BSDs; wgpu reaches Metal and DX12 without one), so that
/// a machine without it is told so instead of "no adapter".
#[cfg(feature = "wgpu")]
fn find_vulkan_loader() -> Result<(), String> {
    if cfg!(any(target_os = "macos", target_os = "ios", windows)) {
        return Ok(());
    }
    load_library(&["libvulkan.so.1", "libvulkan.so"]).map_err(|(name, reason)| {
        format!(
            "the Vulkan loader `{name}` cannot be loaded ({reason}). Install it with a Vulkan \
             driver: your GPU's, or Mesa's software one to run on the CPU (Debian, Ubuntu: `apt \
             install libvulkan1 mesa-vulkan-drivers`)"
        )
    })
}

/// One tiny tensor round trip on `device`: the first thing that fails on a broken setup.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn check_sum<B: burn::tensor::backend::Backend>(device: &B::Device) -> Result<(), String> {
    use burn::tensor::{ElementConversion, Tensor};
    let x = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0], device);
    let sum: f32 = x.sum().into_scalar().elem();
    if (sum - 6.0).abs() > 1e-4 {
        return Err(format!("a test sum gave {sum} instead of 6"));
    }
    Ok(())
}

/// Loads the first of `names` that the dynamic loader finds and keeps it loaded (the backend
/// loads it again; unloading a GPU driver is best avoided). On failure: the last name tried and
/// the loader's reason.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn load_library(names: &[&'static str]) -> Result<(), (&'static str, String)> {
    let mut last = None;
    for &name in names {
        // SAFETY: loading the library runs its initialisers, which is exactly what the backend
        // does on its first call.
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
    // libloading's message is "dlopen failed"; the loader's own reason is its source.
    let reason = std::error::Error::source(&err).map_or_else(|| err.to_string(), |s| s.to_string());
    Err((name, reason))
}

/// Runs `probe` on a fresh thread named after `what` and turns a panic, an error or a timeout
/// into the reason it failed. Separate from the probes so that the panic path can be tested
/// without a GPU.
#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
fn probe_in_thread<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    probe: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    quiet_probe_panics();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("{PROBE_THREAD}{what}"))
        .spawn(move || {
            // A panic unwinds this thread only; the sender is dropped and `recv` sees it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(probe))
                .unwrap_or_else(|payload| Err(panic_message(payload.as_ref())));
            let _ = tx.send(result);
        })
        .map_err(|err| format!("cannot start the probe thread: {err}"))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "no answer from the driver within {}s",
            timeout.as_secs()
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err("the probe thread ended without an answer".into())
        }
    }
}

/// The name prefix of probe threads.
const PROBE_THREAD: &str = "lortflow-probe-";

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
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
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

/// Runs `task` on the chosen backend, probing an accelerator first.
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
        #[cfg(feature = "wgpu")]
        BackendChoice::Wgpu => {
            probe_wgpu()?;
            Ok(task.run::<WgpuAutodiff>(WgpuDevice::default()))
        }
        #[cfg(not(feature = "wgpu"))]
        BackendChoice::Wgpu => Err(BackendError::WgpuNotCompiled),
    }
}

/// Expands `$body` once per compiled backend with `$B` bound to the autodiff backend type and
/// `$device` to its device, for code that would rather not define a [`BackendTask`]. Evaluates to
/// `Result<T, BackendError>`; an accelerator is probed first.
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
            $crate::backend::BackendChoice::Wgpu => {
                $crate::__with_wgpu!(|$B, $device| $body)
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

/// The CUDA arm of [`with_backend!`] without the `cuda` feature: an error.
#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cuda {
    ($index:expr, |$B:ident, $device:ident| $body:expr) => {{
        let _ = $index;
        Err($crate::backend::BackendError::CudaNotCompiled)
    }};
}

/// The wgpu arm of [`with_backend!`] (present only with the `wgpu` feature).
#[cfg(feature = "wgpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_wgpu {
    (|$B:ident, $device:ident| $body:expr) => {{
        match $crate::backend::probe_wgpu() {
            Ok(_) => {
                type $B = $crate::backend::WgpuAutodiff;
                let $device = $crate::backend::WgpuDevice::default();
                Ok($body)
            }
            Err(err) => Err(err),
        }
    }};
}

/// The wgpu arm of [`with_backend!`] without the `wgpu` feature: an error.
#[cfg(not(feature = "wgpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_wgpu {
    (|$B:ident, $device:ident| $body:expr) => {{ Err($crate::backend::BackendError::WgpuNotCompiled) }};
}

/// For tests of the device path: wgpu's default device, or `None` with a note on stderr where
/// no adapter works — unless `LORTFLOW_TEST_WGPU=1` (set by `scripts/test` once Mesa's Vulkan
/// drivers are installed) demands one, and then a panic.
#[cfg(all(test, feature = "wgpu"))]
pub(crate) fn test_wgpu_device() -> Option<WgpuDevice> {
    match probe_wgpu() {
        Ok(_) => Some(WgpuDevice::default()),
        Err(err) if std::env::var("LORTFLOW_TEST_WGPU").is_ok_and(|v| v == "1") => {
            panic!("LORTFLOW_TEST_WGPU=1, but {err}")
        }
        Err(err) => {
            eprintln!("skipped (no wgpu adapter; LORTFLOW_TEST_WGPU=1 makes it an error): {err}");
            None
        }
    }
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
        assert_eq!(
            "wgpu".parse::<BackendChoice>().unwrap(),
            BackendChoice::Wgpu
        );
        assert_eq!(BackendChoice::Wgpu.to_string(), "wgpu");
        assert!("gpu".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn a_panicking_probe_becomes_an_error() {
        let err = probe_in_thread::<()>("test-panic", Duration::from_secs(10), || {
            panic!("Unable to dynamically load the \"cuda\" shared library")
        })
        .unwrap_err();
        assert!(err.contains("shared library"), "{err}");
    }

    #[test]
    fn a_hanging_probe_times_out() {
        let err = probe_in_thread("test-hang", Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        })
        .unwrap_err();
        assert!(err.contains("no answer"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = probe_cuda(0).unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_the_feature_is_a_clear_error() {
        let err = probe_wgpu().unwrap_err();
        assert!(err.to_string().contains("--features wgpu"), "{err}");
    }
}

//! Compute backends for the encoder's matrix products.
//!
//! The encoder's weights are fixed, its activations change with every window: an [`Engine`]
//! prepares each linear layer once at load time ([`Engine::prepare`], where a backend may convert,
//! quantize, re-lay-out or upload the weight), and the resulting [`Linear`] is then applied to
//! float32 activations per call. The engines: float32 on the CPU ([`cpu::CpuF32Engine`]), int8 on
//! the CPU ([`cpu_int8::CpuInt8Engine`]) and int8 on the AMD XDNA2 NPU ([`xdna::XdnaEngine`]), the
//! two int8 ones sharing [`quant`]'s numerics.
use std::sync::Arc;

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2};

pub mod cpu;
pub mod cpu_attn;
pub mod cpu_gemm;
pub mod cpu_int8;
pub mod cpu_math;
pub mod quant;
pub mod xdna;

pub use cpu::CpuF32Engine;

/// Where the matrix products run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Cpu,
    Xdna,
}

impl BackendKind {
    /// Short lower-case name (property values, logs): `"cpu"`, `"xdna"`.
    pub fn nick(&self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Xdna => "xdna",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.nick())
    }
}

/// Arithmetic of the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    F32,
    Int8,
}

impl Precision {
    /// Short lower-case name: `"f32"`, `"int8"`.
    pub fn nick(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.nick())
    }
}

/// A compute backend for linear layers.
pub trait Engine: Send + Sync {
    fn backend(&self) -> BackendKind;
    fn precision(&self) -> Precision;
    /// Prepare a linear layer once at load: weight is n_out x n_in (PyTorch/CT2 layout), optional
    /// bias n_out.
    ///
    /// # Panics
    /// If the bias length is not n_out.
    fn prepare(&self, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Box<dyn Linear>;

    /// [`Self::prepare`] for a layer that mostly runs on a few rows a call (the decoder's
    /// token-by-token steps), whose time is reading its weight: an engine may store it more
    /// compactly, as long as every product stays the same. By default, as `prepare`.
    fn prepare_streamed(
        &self,
        weight: ArrayView2<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Box<dyn Linear> {
        self.prepare(weight, bias)
    }

    /// The accelerator's launch counters since the engine was opened; `None` for engines that
    /// launch nothing (the CPU ones).
    fn device_counters(&self) -> Option<DeviceCounters> {
        None
    }
}

/// Launches of an accelerator, and how many of them had to reconfigure it first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    pub launches: u64,
    pub reconfigurations: u64,
}

impl DeviceCounters {
    /// What happened from `before` to `self`.
    pub fn since(&self, before: &DeviceCounters) -> DeviceCounters {
        DeviceCounters {
            launches: self.launches.saturating_sub(before.launches),
            reconfigurations: self
                .reconfigurations
                .saturating_sub(before.reconfigurations),
        }
    }
}

/// A prepared linear layer.
pub trait Linear: Send + Sync {
    fn n_in(&self) -> usize;
    fn n_out(&self) -> usize;
    /// y = x W^T + b for x rows x n_in, writing y rows x n_out (no allocation).
    ///
    /// Any strides are accepted. Called from inside the caller's rayon pool, the implementation may
    /// use that pool's threads.
    ///
    /// # Panics
    /// If the shapes do not match.
    fn forward(&self, x: ArrayView2<f32>, y: ArrayViewMut2<f32>);

    /// `y = GELU(x W^T + b)` (the erf form of [`cpu_math::Math::gelu_inplace`]) in one pass, if
    /// this implementation fuses the activation into its product: it then returns true. The
    /// default fuses nothing: it returns false without touching `y`, and the caller runs
    /// [`forward`](Self::forward) and the activation itself.
    fn forward_gelu(&self, x: ArrayView2<f32>, y: ArrayViewMut2<f32>) -> bool {
        let _ = (x, y);
        false
    }
}

/// Which backend the user asked for; `Auto` resolves to the best one that can run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Cpu,
    Xdna,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "backend=xdna: no AMD XDNA NPU at {} (is the amdxdna driver loaded?); set \
         WHISPERENCNPU_XDNA_DEVICE to the NPU's accel node, or to 'emulated' to run the CPU \
         emulation of the NPU",
        device.display()
    )]
    XdnaDeviceMissing { device: std::path::PathBuf },
    #[error(
        "backend=xdna: the NPU shim library {} is missing; build and install it with \
         `make -C kernels install` (needs XRT), or set WHISPERENCNPU_XDNA_SHIM to its path",
        path.display()
    )]
    XdnaShimMissing { path: std::path::PathBuf },
    #[error(
        "backend=xdna: the NPU shim library {} cannot be used: {reason} \
         (WHISPERENCNPU_XDNA_SHIM selects the library)",
        path.display()
    )]
    XdnaShimUnusable {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "backend=xdna: the NPU kernel binaries are missing: no {file} in {}; build them with the \
         mlir-aie toolchain (kernels/README.md) and install them there, or set \
         WHISPERENCNPU_XDNA_KERNELS to their directory",
        dir.display()
    )]
    XdnaKernelsMissing {
        dir: std::path::PathBuf,
        file: String,
    },
    #[error("backend=xdna: the NPU could not be used: {0}")]
    XdnaDevice(String),
}

/// Opens the engine for a backend choice and precision; `Auto` falls back to the CPU.
///
/// The XDNA2 engine computes in int8 only: `Xdna` (and `Auto` when it finds a usable NPU, see
/// [`xdna`]) runs int8 whatever the precision asked for, and its engine reports `Int8`.
/// The `log` target the element routes to its debug category.
const LOG_TARGET: &str = "whisperencnpu";

pub fn open_engine(
    choice: BackendChoice,
    precision: Precision,
) -> Result<Arc<dyn Engine>, EngineError> {
    if choice == BackendChoice::Auto {
        // The NPU when device, shim and kernel binaries are all there and load; else the CPU,
        // saying why (`GST_DEBUG=whisperencnpu:4`: the element routes the `log` target there).
        match xdna::XdnaEngine::open_auto() {
            Ok(engine) => {
                log::info!(target: LOG_TARGET, "backend=auto: the XDNA2 NPU");
                return Ok(Arc::new(engine));
            }
            Err(err) => log::info!(target: LOG_TARGET, "backend=auto: the CPU, as {err}"),
        }
    }
    match (choice, precision) {
        (BackendChoice::Xdna, _) => Ok(Arc::new(xdna::XdnaEngine::open(
            &xdna::XdnaConfig::from_env(),
        )?)),
        (BackendChoice::Auto | BackendChoice::Cpu, Precision::F32) => {
            Ok(Arc::new(cpu::CpuF32Engine::new()))
        }
        (BackendChoice::Auto | BackendChoice::Cpu, Precision::Int8) => {
            Ok(Arc::new(cpu_int8::CpuInt8Engine::new()))
        }
    }
}

/// Test data shared by the engines' unit tests.
#[cfg(test)]
pub(crate) mod test_data {
    use ndarray::Array2;

    /// Deterministic pseudo-random values in [-1, 1] (xorshift32, 20001 levels).
    pub fn pseudo(rows: usize, cols: usize, seed: u32) -> Array2<f32> {
        let mut st = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
        Array2::from_shape_fn((rows, cols), |_| {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            (st % 20_001) as f32 / 10_000.0 - 1.0
        })
    }
}

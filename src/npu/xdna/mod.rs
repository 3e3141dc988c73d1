//! The XDNA2 NPU engine: int8 GEMMs offloaded through the shim library (`kernels/host/`).
//!
//! The numerics are [`quant`](super::quant)'s, shared with the CPU int8 engine: weights quantized
//! once per output channel, activations per row, an exact int8 x int8 -> int32 product (on the
//! device), and the same dequantization. Since the product is exact, the output equals the CPU
//! int8 engine's bit for bit.
//!
//! What the engine does with the device:
//! - at [`prepare`](Engine::prepare): quantizes the weight, packs it into the kernel's tiled B
//!   layout ([`layout::pack_b`]) in a device buffer and syncs it: weights stay resident;
//! - per shape (padded K, N) it loads one kernel and keeps one A and one C buffer, reused by every
//!   layer of that shape and every window;
//! - at [`forward`](Linear::forward): quantizes the rows, packs them into A ([`layout::pack_a`]),
//!   runs the kernel [`layout::M_RUN`] rows at a time, and dequantizes C.
//!
//! Where it finds things (environment variables, read when the engine is opened):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `WHISPERENCNPU_XDNA_DEVICE` | `/dev/accel/accel0` | the NPU's accel node, or `emulated` |
//! | `WHISPERENCNPU_XDNA_KERNELS` | `$XDG_DATA_HOME/whisperencnpu/xdna` | xclbin and instruction files |
//! | `WHISPERENCNPU_XDNA_SHIM` | `<kernels>/libxdna_shim_xrt.so`; emulated: the emulator built with the plugin | the shim library |
//!
//! `emulated` runs the CPU emulation of the device (`xdna_shim_emu.c`, built by build.rs) and needs
//! no kernel files; `backend=auto` never picks it.
//!
//! The engine computes in int8 only: opened for `precision=f32` it still runs int8 and says so
//! (`precision()` is `Int8`, and so is the timing message).
//!
//! A failure after opening (a missing kernel for one shape, a device error) cannot be returned
//! through [`Engine::prepare`] or [`Linear::forward`]; the layer then computes the same int8
//! product on the CPU (bit-identical, slower) and the reason is kept in [`XdnaEngine::stats`].
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ndarray::{s, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::quant::{self, QuantizedWeight};
use super::{BackendKind, Engine, EngineError, Linear, Precision};

pub mod layout;
pub mod load_error;
pub mod shim;

use shim::{Buffer, GemmShape, Kernel, Role, Shim, ShimKind};

pub const ENV_DEVICE: &str = "WHISPERENCNPU_XDNA_DEVICE";
pub const ENV_KERNELS: &str = "WHISPERENCNPU_XDNA_KERNELS";
pub const ENV_SHIM: &str = "WHISPERENCNPU_XDNA_SHIM";
pub const DEFAULT_DEVICE: &str = "/dev/accel/accel0";
/// The value of `WHISPERENCNPU_XDNA_DEVICE` that selects the CPU emulation.
pub const EMULATED: &str = "emulated";
/// File name of the XRT shim in the kernels directory.
pub const XRT_SHIM_FILE: &str = "libxdna_shim_xrt.so";
/// The xclbin holding every GEMM kernel (`make -C kernels` merges them into one).
pub const XCLBIN_FILE: &str = "whisper_gemm.xclbin";

/// The `log` target, routed to the element's debug category.
const LOG_TARGET: &str = "whisperencnpu";

/// Rows per parallel task when quantizing and dequantizing on the host.
const DEQUANT_ROWS: usize = 32;

/// The emulated shim library built with this plugin (build.rs).
pub fn emulator_shim_path() -> PathBuf {
    PathBuf::from(env!("WHISPERENCNPU_XDNA_EMU_SHIM"))
}

/// `$XDG_DATA_HOME/whisperencnpu/xdna` (or `~/.local/share/...`).
pub fn default_kernels_dir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/share"));
    data.join("whisperencnpu/xdna")
}

/// Name of the kernel for a padded (K, N) in the xclbin.
pub fn kernel_name(k_pad: usize, n_pad: usize) -> String {
    format!("GEMM_K{k_pad}_N{n_pad}")
}

/// File name of the instruction sequence for a padded (K, N).
pub fn insts_file(k_pad: usize, n_pad: usize) -> String {
    format!("gemm_k{k_pad}_n{n_pad}.insts.bin")
}

/// The NPU to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XdnaDevice {
    /// The device behind an accel node, through the XRT shim.
    Node(PathBuf),
    /// The CPU emulation of the device (tests).
    Emulated,
}

/// Where the engine finds the device, the shim and the kernels.
#[derive(Clone, Debug)]
pub struct XdnaConfig {
    pub device: XdnaDevice,
    pub shim: PathBuf,
    pub kernels: PathBuf,
}

impl XdnaConfig {
    /// From `WHISPERENCNPU_XDNA_{DEVICE,KERNELS,SHIM}` and the defaults.
    pub fn from_env() -> XdnaConfig {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let device = match var(ENV_DEVICE) {
            Some(v) if v == EMULATED => XdnaDevice::Emulated,
            Some(v) => XdnaDevice::Node(PathBuf::from(v)),
            None => XdnaDevice::Node(PathBuf::from(DEFAULT_DEVICE)),
        };
        let kernels = var(ENV_KERNELS)
            .map(PathBuf::from)
            .unwrap_or_else(default_kernels_dir);
        let shim = var(ENV_SHIM)
            .map(PathBuf::from)
            .unwrap_or_else(|| match device {
                XdnaDevice::Emulated => emulator_shim_path(),
                XdnaDevice::Node(_) => kernels.join(XRT_SHIM_FILE),
            });
        XdnaConfig {
            device,
            shim,
            kernels,
        }
    }

    /// The CPU emulation through the shim at `shim`.
    pub fn emulated(shim: PathBuf) -> XdnaConfig {
        XdnaConfig {
            device: XdnaDevice::Emulated,
            shim,
            kernels: PathBuf::new(),
        }
    }
}

/// What the engine did so far.
#[derive(Clone, Debug, Default)]
pub struct XdnaStats {
    /// Kernel runs on the device (or its emulation).
    pub kernel_runs: u64,
    /// Layers or calls that fell back to the CPU, with the reason.
    pub fallbacks: Vec<String>,
}

/// The XDNA2 engine (int8).
pub struct XdnaEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for XdnaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdnaEngine")
            .field("config", &self.inner.config)
            .field("shim", &self.inner.shim_kind)
            .finish()
    }
}

struct Inner {
    config: XdnaConfig,
    shim_kind: ShimKind,
    state: Mutex<State>,
    kernel_runs: AtomicU64,
    fallbacks: Mutex<Vec<String>>,
}

/// Everything that touches the device, used by one thread at a time.
struct State {
    device: shim::Device,
    slots: HashMap<(usize, usize), Slot>,
}

/// One kernel with the A and C buffers every layer of its shape shares, and host scratch.
struct Slot {
    kernel: Kernel,
    a: Buffer,
    c: Buffer,
    q: Vec<i8>,
    scales: Vec<f32>,
    acc: Vec<i32>,
}

impl XdnaEngine {
    /// Opens the engine as `config` says, or explains what is missing.
    pub fn open(config: &XdnaConfig) -> Result<XdnaEngine, EngineError> {
        let unusable = |reason: String| EngineError::XdnaShimUnusable {
            path: config.shim.clone(),
            reason,
        };
        // The shim first when it is there: a device shim that cannot load here (XRT built for a
        // newer system, or absent) is the more useful thing to hear about, even without a device.
        let shim = if config.shim.is_file() {
            let shim = Shim::load(&config.shim).map_err(|e| {
                log::debug!(target: LOG_TARGET, "XDNA2 shim {}: {e}", config.shim.display());
                unusable(e.to_string())
            })?;
            log::debug!(
                target: LOG_TARGET,
                "XDNA2 shim {} loaded ({})",
                config.shim.display(),
                shim.kind().nick()
            );
            Some(shim)
        } else {
            None
        };
        if let XdnaDevice::Node(node) = &config.device {
            if !node.exists() {
                return Err(EngineError::XdnaDeviceMissing {
                    device: node.clone(),
                });
            }
        }
        let Some(shim) = shim else {
            return Err(EngineError::XdnaShimMissing {
                path: config.shim.clone(),
            });
        };
        // The device needs the kernel binaries: the xclbin and at least one instruction file.
        let mut first_kernel = None;
        if let XdnaDevice::Node(_) = config.device {
            let shapes = installed_shapes(&config.kernels);
            let Some(&(k, n)) = shapes.first() else {
                return Err(EngineError::XdnaKernelsMissing {
                    dir: config.kernels.clone(),
                    file: "gemm_k*_n*.insts.bin".to_owned(),
                });
            };
            let xclbin = xclbin_for(&config.kernels, k, n);
            if !xclbin.is_file() {
                return Err(EngineError::XdnaKernelsMissing {
                    dir: config.kernels.clone(),
                    file: XCLBIN_FILE.to_owned(),
                });
            }
            first_kernel = Some((k, n));
        }

        match (&config.device, shim.kind()) {
            (XdnaDevice::Node(_), ShimKind::Xrt) | (XdnaDevice::Emulated, ShimKind::Emulator) => {}
            (XdnaDevice::Node(_), ShimKind::Emulator) => {
                return Err(unusable(format!(
                    "it is the CPU emulator, not the device shim (set {ENV_DEVICE}={EMULATED} to \
                     run the emulation, or {ENV_SHIM} to {XRT_SHIM_FILE})"
                )))
            }
            (XdnaDevice::Emulated, ShimKind::Xrt) => {
                return Err(unusable(format!(
                    "{ENV_DEVICE}={EMULATED} needs the emulator shim, this is the XRT one"
                )))
            }
        }

        let node = match &config.device {
            XdnaDevice::Node(node) => Some(node.to_string_lossy().into_owned()),
            XdnaDevice::Emulated => None,
        };
        let device = shim
            .open(node.as_deref())
            .map_err(|e| EngineError::XdnaDevice(e.to_string()))?;
        let inner = Inner {
            config: config.clone(),
            shim_kind: shim.kind(),
            state: Mutex::new(State {
                device,
                slots: HashMap::new(),
            }),
            kernel_runs: AtomicU64::new(0),
            fallbacks: Mutex::new(Vec::new()),
        };
        // Loading one kernel proves the xclbin registers and gets a hardware context.
        if let Some((k, n)) = first_kernel {
            let mut state = inner.lock();
            inner
                .slot(&mut state, k, n)
                .map_err(EngineError::XdnaDevice)?;
        }
        Ok(XdnaEngine {
            inner: Arc::new(inner),
        })
    }

    /// For `backend=auto`: the device as the environment describes it, never the emulation.
    /// Without a device node nothing is loaded (XRT's start-up is not free).
    pub fn open_auto() -> Result<XdnaEngine, EngineError> {
        let config = XdnaConfig::from_env();
        match &config.device {
            XdnaDevice::Emulated => Err(EngineError::XdnaDevice(format!(
                "backend=auto does not use the emulation ({ENV_DEVICE}={EMULATED}); ask for \
                 backend=xdna"
            ))),
            XdnaDevice::Node(node) if !node.exists() => Err(EngineError::XdnaDeviceMissing {
                device: node.clone(),
            }),
            XdnaDevice::Node(_) => XdnaEngine::open(&config),
        }
    }

    pub fn config(&self) -> &XdnaConfig {
        &self.inner.config
    }

    /// Whether this runs on the CPU emulation of the device.
    pub fn is_emulated(&self) -> bool {
        self.inner.shim_kind == ShimKind::Emulator
    }

    pub fn stats(&self) -> XdnaStats {
        XdnaStats {
            kernel_runs: self.inner.kernel_runs.load(Ordering::Relaxed),
            fallbacks: self
                .inner
                .fallbacks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The (padded K, N) shapes whose instruction files are in `dir`, sorted.
fn installed_shapes(dir: &Path) -> Vec<(usize, usize)> {
    let mut shapes: Vec<(usize, usize)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix("gemm_k")?.strip_suffix(".insts.bin")?;
            let (k, n) = rest.split_once("_n")?;
            Some((k.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    shapes.sort_unstable();
    shapes
}

/// The shape's own xclbin if built separately, else the merged one.
fn xclbin_for(dir: &Path, k_pad: usize, n_pad: usize) -> PathBuf {
    let own = dir.join(format!("gemm_k{k_pad}_n{n_pad}.xclbin"));
    if own.is_file() {
        own
    } else {
        dir.join(XCLBIN_FILE)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fallback(&self, reason: String) {
        self.fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reason);
    }

    /// The slot of a padded (K, N), loading its kernel and buffers the first time.
    fn slot<'s>(
        &self,
        state: &'s mut State,
        k_pad: usize,
        n_pad: usize,
    ) -> Result<&'s mut Slot, String> {
        use std::collections::hash_map::Entry;
        let device = &state.device;
        match state.slots.entry((k_pad, n_pad)) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let shape = GemmShape {
                    m: layout::M_RUN,
                    k: k_pad,
                    n: n_pad,
                };
                let name = kernel_name(k_pad, n_pad);
                let kernel = match &self.config.device {
                    XdnaDevice::Emulated => device.load_kernel(None, &name, None, shape),
                    XdnaDevice::Node(_) => {
                        let insts = self.config.kernels.join(insts_file(k_pad, n_pad));
                        if !insts.is_file() {
                            return Err(format!(
                                "no kernel for K={k_pad}, N={n_pad}: {} is missing (build it \
                                 with make -C kernels SHAPES=\"... {k_pad}x{n_pad}\")",
                                insts.display()
                            ));
                        }
                        let xclbin = xclbin_for(&self.config.kernels, k_pad, n_pad);
                        device.load_kernel(Some(&xclbin), &name, Some(&insts), shape)
                    }
                }
                .map_err(|e| e.to_string())?;
                let a = kernel
                    .alloc(Role::A, shape.m * shape.k)
                    .map_err(|e| e.to_string())?;
                let c = kernel
                    .alloc(Role::C, shape.m * shape.n * std::mem::size_of::<i32>())
                    .map_err(|e| e.to_string())?;
                Ok(e.insert(Slot {
                    kernel,
                    a,
                    c,
                    q: Vec::new(),
                    scales: Vec::new(),
                    acc: Vec::new(),
                }))
            }
        }
    }

    /// Puts a quantized weight on the device in the kernel's B layout.
    fn upload(&self, w: &QuantizedWeight) -> Result<((usize, usize), Buffer), String> {
        let (k_pad, n_pad) = (layout::padded_k(w.n_in), layout::padded_n(w.n_out));
        let mut state = self.lock();
        let slot = self.slot(&mut state, k_pad, n_pad)?;
        let mut b = slot
            .kernel
            .alloc(Role::B, k_pad * n_pad)
            .map_err(|e| e.to_string())?;
        layout::pack_b(&w.data, w.n_out, w.n_in, k_pad, n_pad, b.as_i8_mut());
        b.sync_to_device().map_err(|e| e.to_string())?;
        Ok(((k_pad, n_pad), b))
    }
}

impl Engine for XdnaEngine {
    fn backend(&self) -> BackendKind {
        BackendKind::Xdna
    }

    fn precision(&self) -> Precision {
        Precision::Int8
    }

    fn prepare(&self, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Box<dyn Linear> {
        let weight = quant::quantize_weight(weight, bias);
        match self.inner.upload(&weight) {
            Ok((key, b)) => Box::new(XdnaLinear {
                inner: self.inner.clone(),
                key,
                weight,
                b: Mutex::new(Some(b)),
            }),
            Err(reason) => {
                self.inner.fallback(format!(
                    "{}x{} layer on the CPU: {reason}",
                    weight.n_out, weight.n_in
                ));
                Box::new(HostInt8Linear { weight })
            }
        }
    }
}

/// A linear layer whose weight lives on the device.
struct XdnaLinear {
    inner: Arc<Inner>,
    key: (usize, usize),
    weight: QuantizedWeight,
    /// The weight in the kernel's B layout. Only touched with the device state locked (first
    /// the state, then this); `Option` so that `drop` can free it under that lock.
    b: Mutex<Option<Buffer>>,
}

impl Drop for XdnaLinear {
    fn drop(&mut self) {
        let _state = self.inner.lock();
        self.b.get_mut().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl XdnaLinear {
    /// One kernel run: rows `start..start + rows` of the quantized input (`slot.q`) through the
    /// device; the int32 product is then in `slot.c` (row stride `n_pad`).
    fn run_chunk(&self, slot: &mut Slot, start: usize, rows: usize) -> Result<(), String> {
        let k = self.weight.n_in;
        let k_pad = self.key.0;
        layout::pack_a(
            &slot.q[start * k..(start + rows) * k],
            rows,
            k,
            k_pad,
            slot.a.as_i8_mut(),
        );
        let b = self.b.lock().unwrap_or_else(|e| e.into_inner());
        let b = b.as_ref().expect("weight buffer until drop");
        slot.a.sync_to_device().map_err(|e| e.to_string())?;
        slot.kernel
            .run(&slot.a, b, &slot.c)
            .map_err(|e| e.to_string())?;
        self.inner.kernel_runs.fetch_add(1, Ordering::Relaxed);
        slot.c.sync_from_device().map_err(|e| e.to_string())
    }

    /// `y = acc / (x_scale * w_scale) + bias` with [`quant::dequantize`], rows in parallel.
    fn dequantize(&self, acc: &[i32], scales: &[f32], mut y: ArrayViewMut2<f32>) {
        let n_out = self.weight.n_out;
        acc.par_chunks(DEQUANT_ROWS * n_out)
            .zip(scales.par_chunks(DEQUANT_ROWS))
            .zip(
                y.axis_chunks_iter_mut(Axis(0), DEQUANT_ROWS)
                    .into_par_iter(),
            )
            .for_each(|((acc, scales), y)| quant::dequantize(acc, scales, &self.weight, y));
    }
}

impl Linear for XdnaLinear {
    fn n_in(&self) -> usize {
        self.weight.n_in
    }

    fn n_out(&self) -> usize {
        self.weight.n_out
    }

    fn forward(&self, x: ArrayView2<f32>, mut y: ArrayViewMut2<f32>) {
        let (rows, k) = x.dim();
        let n_out = self.weight.n_out;
        assert_eq!(k, self.weight.n_in, "input width");
        assert_eq!(y.dim(), (rows, n_out), "output shape");
        let mut state = self.inner.lock();
        let slot = state
            .slots
            .get_mut(&self.key)
            .expect("the slot is made before any layer of its shape");
        slot.q.resize(rows * k, 0);
        slot.scales.resize(rows, 0.0);
        // quant::quantize_rows, rows in parallel (each row is quantized on its own).
        slot.q[..rows * k]
            .par_chunks_mut(DEQUANT_ROWS * k)
            .zip(slot.scales[..rows].par_chunks_mut(DEQUANT_ROWS))
            .zip(x.axis_chunks_iter(Axis(0), DEQUANT_ROWS).into_par_iter())
            .for_each(|((q, scales), x)| quant::quantize_rows(x, q, scales));

        let n_pad = self.key.1;
        for start in (0..rows).step_by(layout::M_RUN) {
            let n = layout::M_RUN.min(rows - start);
            let result = self.run_chunk(slot, start, n);
            let scales = &slot.scales[start..start + n];
            let y = y.slice_mut(s![start..start + n, ..]);
            match result {
                // Unpadded N: dequantize straight from the C buffer.
                Ok(()) if n_pad == n_out => {
                    self.dequantize(&slot.c.as_i32()[..n * n_out], scales, y)
                }
                Ok(()) => {
                    slot.acc.resize(n * n_out, 0);
                    layout::unpack_c(slot.c.as_i32(), n, n_out, n_pad, &mut slot.acc);
                    self.dequantize(&slot.acc, scales, y);
                }
                Err(reason) => {
                    self.inner.fallback(format!(
                        "{n_out}x{k} product of {n} rows on the CPU: {reason}"
                    ));
                    slot.acc.resize(n * n_out, 0);
                    quant::gemm_i8_reference(
                        &slot.q[start * k..(start + n) * k],
                        &self.weight.data,
                        n,
                        k,
                        n_out,
                        &mut slot.acc,
                    );
                    self.dequantize(&slot.acc, scales, y);
                }
            }
        }
    }
}

/// The same int8 product on the CPU, for layers the device could not take.
struct HostInt8Linear {
    weight: QuantizedWeight,
}

impl Linear for HostInt8Linear {
    fn n_in(&self) -> usize {
        self.weight.n_in
    }

    fn n_out(&self) -> usize {
        self.weight.n_out
    }

    fn forward(&self, x: ArrayView2<f32>, y: ArrayViewMut2<f32>) {
        let (rows, k) = x.dim();
        let n_out = self.weight.n_out;
        assert_eq!(k, self.weight.n_in, "input width");
        assert_eq!(y.dim(), (rows, n_out), "output shape");
        let mut q = vec![0i8; rows * k];
        let mut scales = vec![0f32; rows];
        quant::quantize_rows(x, &mut q, &mut scales);
        let mut acc = vec![0i32; rows * n_out];
        quant::gemm_i8_reference(&q, &self.weight.data, rows, k, n_out, &mut acc);
        quant::dequantize(&acc, &scales, &self.weight, y);
    }
}

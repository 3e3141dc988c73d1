//! The XDNA2 NPU engine: int8 GEMMs offloaded through the shim library (`kernels/host/`).
//!
//! The numerics are [`quant`](super::quant)'s, shared with the CPU int8 engine: weights quantized
//! once per output channel, activations per row, an exact int8 x int8 -> int32 product (on the
//! device), and the same dequantization. Since the product is exact, the output equals the CPU
//! int8 engine's bit for bit.
//!
//! What the engine does with the device:
//! - at open: loads the one array configuration (`whisper_gemm.xclbin`, kernel [`GEMM_KERNEL`])
//!   that serves every shape: the compute tiles take a launch's K and N tile counts as runtime
//!   parameters, so switching shape never reconfigures the array;
//! - at [`prepare`](Engine::prepare): quantizes the weight, packs it into the tiled B layout
//!   ([`layout::pack_b`]) in a device buffer and syncs it: weights stay resident;
//! - per shape (padded K, N) it keeps one A and one C buffer, reused by every layer of that shape
//!   and every window, and per padded M the shape's instruction sequence (loaded on first use);
//! - at [`forward`](Linear::forward): quantizes the rows, packs them into A ([`layout::pack_a`]),
//!   launches up to [`layout::M_MAX`] rows at a time (a window's every product is one launch,
//!   conv1's 1024 im2col rows included), and dequantizes C.
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
//! A failure after opening (a missing instruction sequence for one shape, a device error) cannot be returned
//! through [`Engine::prepare`] or [`Linear::forward`]; the layer then computes the same int8
//! product on the CPU (bit-identical, slower) and the reason is kept in [`XdnaEngine::stats`].
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ndarray::{s, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::quant::{self, QuantizedWeight};
use super::{BackendKind, DeviceCounters, Engine, EngineError, Linear, Precision};

pub mod layout;
pub mod load_error;
pub mod shim;

use shim::{Buffer, Config, Counters, GemmShape, Role, Sequence, Shim, ShimKind};

pub const ENV_DEVICE: &str = "WHISPERENCNPU_XDNA_DEVICE";
pub const ENV_KERNELS: &str = "WHISPERENCNPU_XDNA_KERNELS";
pub const ENV_SHIM: &str = "WHISPERENCNPU_XDNA_SHIM";
pub const DEFAULT_DEVICE: &str = "/dev/accel/accel0";
/// The value of `WHISPERENCNPU_XDNA_DEVICE` that selects the CPU emulation.
pub const EMULATED: &str = "emulated";
/// File name of the XRT shim in the kernels directory.
pub const XRT_SHIM_FILE: &str = "libxdna_shim_xrt.so";
/// The xclbin holding the array configuration (`make -C kernels`).
pub const XCLBIN_FILE: &str = "whisper_gemm.xclbin";
/// The kernel's name in it (`kernels/Makefile`, `--xclbin-kernel-name`).
pub const GEMM_KERNEL: &str = "GEMM";

/// The `log` target, routed to the element's debug category.
const LOG_TARGET: &str = "whisperencnpu";

/// Fallback reasons kept in [`XdnaStats::fallbacks`].
const MAX_FALLBACKS: usize = 64;

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

/// File name of the instruction sequence of a padded shape.
pub fn insts_file(shape: GemmShape) -> String {
    format!("gemm_m{}_k{}_n{}.insts.bin", shape.m, shape.k, shape.n)
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

/// What the engine did so far (since it was opened; per window: the difference of two).
#[derive(Clone, Debug, Default)]
pub struct XdnaStats {
    /// Launches on the device (or its emulation), as the shim counted them.
    pub launches: u64,
    /// Launches that needed another array configuration than the array held (0 with the one
    /// configuration this engine loads).
    pub reconfigurations: u64,
    /// Array configurations loaded (1: at open).
    pub configurations_loaded: u64,
    /// Instruction sequences loaded (one per padded shape used).
    pub sequences_loaded: u64,
    /// Layers or calls that fell back to the CPU, with the reason (the first 64).
    pub fallbacks: Vec<String>,
}

impl XdnaStats {
    /// Launches and reconfigurations from `before` to `self` (e.g. one window).
    pub fn since(&self, before: &XdnaStats) -> (u64, u64) {
        (
            self.launches.saturating_sub(before.launches),
            self.reconfigurations
                .saturating_sub(before.reconfigurations),
        )
    }
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
    sequences_loaded: AtomicU64,
    fallbacks: Mutex<Vec<String>>,
}

/// Everything that touches the device, used by one thread at a time.
struct State {
    device: shim::Device,
    config: Config,
    slots: HashMap<(usize, usize), Slot>,
}

/// The A and C buffers every layer of a padded (K, N) shares, its instruction sequences by padded
/// M, and host scratch.
struct Slot {
    sequences: HashMap<usize, Sequence>,
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
        if let XdnaDevice::Node(_) = config.device {
            if installed_shapes(&config.kernels).is_empty() {
                return Err(EngineError::XdnaKernelsMissing {
                    dir: config.kernels.clone(),
                    file: "gemm_m*_k*_n*.insts.bin".to_owned(),
                });
            }
            if !config.kernels.join(XCLBIN_FILE).is_file() {
                return Err(EngineError::XdnaKernelsMissing {
                    dir: config.kernels.clone(),
                    file: XCLBIN_FILE.to_owned(),
                });
            }
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
        // The one array configuration: the xclbin registers and gets a hardware context here,
        // once; every shape after it is a runtime parameter.
        let xclbin = config.kernels.join(XCLBIN_FILE);
        let array_config = match config.device {
            XdnaDevice::Emulated => device.load_config(None, GEMM_KERNEL),
            XdnaDevice::Node(_) => device.load_config(Some(&xclbin), GEMM_KERNEL),
        }
        .map_err(|e| EngineError::XdnaDevice(e.to_string()))?;
        let inner = Inner {
            config: config.clone(),
            shim_kind: shim.kind(),
            state: Mutex::new(State {
                device,
                config: array_config,
                slots: HashMap::new(),
            }),
            sequences_loaded: AtomicU64::new(0),
            fallbacks: Mutex::new(Vec::new()),
        };
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
        let counters = self.inner.counters();
        XdnaStats {
            launches: counters.launches,
            reconfigurations: counters.reconfigurations,
            configurations_loaded: counters.configurations_loaded,
            sequences_loaded: self.inner.sequences_loaded.load(Ordering::Relaxed),
            fallbacks: self
                .inner
                .fallbacks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The padded shapes whose instruction files are in `dir` (`gemm_m<m>_k<k>_n<n>.insts.bin`).
pub fn installed_shapes(dir: &Path) -> Vec<GemmShape> {
    let mut shapes: Vec<GemmShape> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| parse_insts_file(&e.file_name().into_string().ok()?))
        .collect();
    shapes.sort_unstable_by_key(|s| (s.m, s.k, s.n));
    shapes
}

/// The shape an instruction file's name says (the inverse of [`insts_file`]).
pub fn parse_insts_file(name: &str) -> Option<GemmShape> {
    let rest = name.strip_prefix("gemm_m")?.strip_suffix(".insts.bin")?;
    let (m, rest) = rest.split_once("_k")?;
    let (k, n) = rest.split_once("_n")?;
    Some(GemmShape {
        m: m.parse().ok()?,
        k: k.parse().ok()?,
        n: n.parse().ok()?,
    })
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records why something ran on the CPU. A failing device fails every window: the first
    /// [`MAX_FALLBACKS`] reasons are kept (they repeat), the rest only logged.
    fn fallback(&self, reason: String) {
        log::debug!(target: LOG_TARGET, "XDNA2 fallback: {reason}");
        let mut fallbacks = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        if fallbacks.len() < MAX_FALLBACKS {
            fallbacks.push(reason);
        }
    }

    /// The shim's counters (zeros if it cannot say).
    fn counters(&self) -> Counters {
        self.lock().device.counters().unwrap_or_else(|e| {
            log::debug!(target: LOG_TARGET, "XDNA2 counters: {e}");
            Counters::default()
        })
    }

    /// The slot of a padded (K, N), allocating its buffers the first time.
    fn slot<'s>(
        &self,
        state: &'s mut State,
        k_pad: usize,
        n_pad: usize,
    ) -> Result<&'s mut Slot, String> {
        use std::collections::hash_map::Entry;
        let config = &state.config;
        match state.slots.entry((k_pad, n_pad)) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                // Buffers for the tallest launch; shorter ones use their beginning.
                let a = config
                    .alloc(Role::A, layout::M_MAX * k_pad)
                    .map_err(|e| e.to_string())?;
                let c = config
                    .alloc(Role::C, layout::M_MAX * n_pad * std::mem::size_of::<i32>())
                    .map_err(|e| e.to_string())?;
                Ok(e.insert(Slot {
                    sequences: HashMap::new(),
                    a,
                    c,
                    q: Vec::new(),
                    scales: Vec::new(),
                    acc: Vec::new(),
                }))
            }
        }
    }

    /// Loads the instruction sequence of a padded shape (the emulator runs by its parameters).
    fn load_sequence(&self, config: &Config, shape: GemmShape) -> Result<Sequence, String> {
        let params = layout::gemm_params(shape);
        let sequence = match &self.config.device {
            XdnaDevice::Emulated => config.load_sequence(None, params),
            XdnaDevice::Node(_) => {
                let insts = self.config.kernels.join(insts_file(shape));
                if !insts.is_file() {
                    return Err(format!(
                        "no instruction sequence for M={}, K={}, N={}: {} is missing (build it \
                         with make -C kernels SHAPES=\"... {}x{}x{}\")",
                        shape.m,
                        shape.k,
                        shape.n,
                        insts.display(),
                        shape.m,
                        shape.k,
                        shape.n
                    ));
                }
                config.load_sequence(Some(&insts), params)
            }
        }
        .map_err(|e| e.to_string())?;
        self.sequences_loaded.fetch_add(1, Ordering::Relaxed);
        log::debug!(target: LOG_TARGET, "XDNA2 sequence loaded for {shape:?} ({params:?})");
        Ok(sequence)
    }

    /// Puts a quantized weight on the device in the tiled B layout.
    fn upload(&self, w: &QuantizedWeight) -> Result<((usize, usize), Buffer), String> {
        let (k_pad, n_pad) = (layout::padded_k(w.n_in), layout::padded_n(w.n_out));
        let mut state = self.lock();
        self.slot(&mut state, k_pad, n_pad)?;
        let mut b = state
            .config
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

    fn device_counters(&self) -> Option<DeviceCounters> {
        let counters = self.inner.counters();
        Some(DeviceCounters {
            launches: counters.launches,
            reconfigurations: counters.reconfigurations,
        })
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
    /// The weight in the tiled B layout. Only touched with the device state locked (first
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
    /// One launch: rows `start..start + rows` (at most [`layout::M_MAX`]) of the quantized input
    /// (`slot.q`) through the device; the int32 product is then in `slot.c` (row stride `n_pad`).
    fn launch(&self, state: &mut State, start: usize, rows: usize) -> Result<(), String> {
        let k = self.weight.n_in;
        let (k_pad, n_pad) = self.key;
        let shape = GemmShape {
            m: layout::padded_m(rows),
            k: k_pad,
            n: n_pad,
        };
        let State { config, slots, .. } = state;
        let slot = slots
            .get_mut(&self.key)
            .ok_or("the slot is made before any layer of its shape")?;
        let sequence = match slot.sequences.entry(shape.m) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.inner.load_sequence(config, shape)?)
            }
        };
        layout::pack_a(
            &slot.q[start * k..(start + rows) * k],
            rows,
            k,
            shape.m,
            k_pad,
            slot.a.as_i8_mut(),
        );
        let b = self.b.lock().unwrap_or_else(|e| e.into_inner());
        let b = b.as_ref().ok_or("weight buffer freed")?;
        slot.a.sync_to_device().map_err(|e| e.to_string())?;
        log::trace!(target: LOG_TARGET, "XDNA2 launch {}x{}x{}", shape.m, shape.k, shape.n);
        sequence
            .run(&slot.a, b, &slot.c)
            .map_err(|e| e.to_string())?;
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
        let Some(slot) = state.slots.get_mut(&self.key) else {
            // Cannot happen (the slot is made with the weight's upload); computed on the CPU.
            self.inner
                .fallback(format!("{n_out}x{k} product on the CPU: no device slot"));
            HostInt8Linear {
                weight: self.weight.clone(),
            }
            .forward(x, y);
            return;
        };
        slot.q.resize(rows * k, 0);
        slot.scales.resize(rows, 0.0);
        // quant::quantize_rows, rows in parallel (each row is quantized on its own).
        slot.q[..rows * k]
            .par_chunks_mut(DEQUANT_ROWS * k)
            .zip(slot.scales[..rows].par_chunks_mut(DEQUANT_ROWS))
            .zip(x.axis_chunks_iter(Axis(0), DEQUANT_ROWS).into_par_iter())
            .for_each(|((q, scales), x)| quant::quantize_rows(x, q, scales));

        let n_pad = self.key.1;
        for start in (0..rows).step_by(layout::M_MAX) {
            let n = layout::M_MAX.min(rows - start);
            let result = self.launch(&mut state, start, n);
            let slot = state
                .slots
                .get_mut(&self.key)
                .expect("the slot is still there");
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

//! The XDNA2 shim library (`kernels/host/xdna_shim.h`), loaded at run time.
//!
//! bindgen turns the header into a function table (`XdnaShimLibrary`, every symbol required) and
//! the tiling constants; this module loads the library with libloading, checks its ABI version
//! and kind, and wraps the handles it returns in owning types. The C side owns configurations,
//! sequences and buffers through their device, so every handle here keeps the device alive
//! (`Arc<DeviceInner>`).
//!
//! Threading: the ABI allows one thread at a time per device. The handles are `Send` but not
//! `Sync`; the engine keeps them behind one mutex.
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use super::load_error;

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/xdna_shim.rs"));
}

pub use ffi::{
    XDNA_ARRAY_COLS, XDNA_ARRAY_ROWS, XDNA_GEMM_M_MAX, XDNA_MMUL_R, XDNA_MMUL_S, XDNA_MMUL_T,
    XDNA_SHIM_ABI_VERSION, XDNA_TILE_K, XDNA_TILE_M, XDNA_TILE_N,
};

/// Which implementation of the ABI a library is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShimKind {
    /// The device, through XRT (`xdna_shim_xrt.cpp`).
    Xrt,
    /// The CPU emulation (`xdna_shim_emu.c`).
    Emulator,
}

impl ShimKind {
    pub fn nick(&self) -> &'static str {
        match self {
            ShimKind::Xrt => "xrt",
            ShimKind::Emulator => "emulator",
        }
    }
}

/// Why the shim or a call into it failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot load {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    /// The library is there but a dependency (XRT, or what XRT was built against) is missing
    /// or too new for this system: [`load_error::explain`]'s words, then the loader's.
    #[error("{explanation} (the loader said: {reason})")]
    Incompatible { explanation: String, reason: String },
    #[error("{} speaks shim ABI version {found}, this plugin needs {expected}; rebuild it (make -C kernels install)", path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{} calls itself '{kind}', neither 'xrt' nor 'emulator'", path.display())]
    UnknownKind { path: PathBuf, kind: String },
    #[error("{call} failed: {message}")]
    Call { call: &'static str, message: String },
}

/// A loaded shim library.
pub struct Shim {
    lib: ffi::XdnaShimLibrary,
    path: PathBuf,
    kind: ShimKind,
}

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Shim {
    /// Loads the library at `path` and checks that it implements this ABI version.
    pub fn load(path: &Path) -> Result<Arc<Shim>, ShimError> {
        // SAFETY: loading runs the library's initialisers; the shim libraries have none beyond
        // the C/C++ runtime's (and XRT's, for the device shim). Every symbol is resolved here
        // with the signature bindgen read from the same header the library was built from; the
        // ABI version check below catches a library built from another version of it.
        let lib = unsafe { ffi::XdnaShimLibrary::new(path) }.map_err(|e| {
            let reason = e.to_string();
            match load_error::explain(&reason, load_error::glibc_version().as_deref()) {
                Some(explanation) => ShimError::Incompatible {
                    explanation,
                    reason,
                },
                None => ShimError::Load {
                    path: path.to_path_buf(),
                    reason,
                },
            }
        })?;
        // SAFETY: both take no arguments; the kind is a static NUL-terminated string.
        let (found, kind) = unsafe {
            (
                lib.xdna_shim_abi_version(),
                cstr_to_string(lib.xdna_shim_kind()),
            )
        };
        if found != XDNA_SHIM_ABI_VERSION {
            return Err(ShimError::Version {
                path: path.to_path_buf(),
                found,
                expected: XDNA_SHIM_ABI_VERSION,
            });
        }
        let kind = match kind.as_str() {
            "xrt" => ShimKind::Xrt,
            "emulator" => ShimKind::Emulator,
            _ => {
                return Err(ShimError::UnknownKind {
                    path: path.to_path_buf(),
                    kind,
                })
            }
        };
        Ok(Arc::new(Shim {
            lib,
            path: path.to_path_buf(),
            kind,
        }))
    }

    pub fn kind(&self) -> ShimKind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, call: &'static str) -> ShimError {
        // SAFETY: no arguments; returns a NUL-terminated string valid until the next call on
        // this thread, copied at once.
        let message = unsafe { cstr_to_string(self.lib.xdna_last_error()) };
        ShimError::Call { call, message }
    }

    /// Opens the device (`None`: the shim's default).
    pub fn open(self: &Arc<Self>, device: Option<&str>) -> Result<Device, ShimError> {
        let name = device.map(|d| CString::new(d).unwrap_or_default());
        // SAFETY: the name is NUL-terminated (or NULL) and outlives the call.
        let raw = unsafe {
            self.lib
                .xdna_open(name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()))
        };
        let raw = NonNull::new(raw).ok_or_else(|| self.error("xdna_open"))?;
        Ok(Device(Arc::new(DeviceInner {
            shim: self.clone(),
            raw,
        })))
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn cstr_to_string(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the contract above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

struct DeviceInner {
    shim: Arc<Shim>,
    raw: NonNull<ffi::xdna_device>,
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // SAFETY: the device came from xdna_open and nothing made from it is alive any more
        // (configurations, sequences and buffers hold this `Arc`).
        unsafe { self.shim.lib.xdna_close(self.raw.as_ptr()) }
    }
}

// SAFETY: the ABI allows a device to be used from any thread, one at a time; `DeviceInner` is
// only reached through `Device`, `Config`, `Sequence` and `Buffer`, which are not `Sync` and
// which the engine keeps behind a mutex. Closing it (on the last drop) happens on one thread.
unsafe impl Send for DeviceInner {}
unsafe impl Sync for DeviceInner {}

/// An open device.
pub struct Device(Arc<DeviceInner>);

/// Shape of one launch's GEMM (padded sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// A launch's runtime parameters (`xdna_gemm_params`): array-row blocks of M, K tiles,
/// array-column blocks of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmParams {
    pub m_blocks: u32,
    pub k_tiles: u32,
    pub n_blocks: u32,
}

/// What the device did since it was opened (`xdna_counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub launches: u64,
    /// Launches that needed another array configuration than the one the array held.
    pub reconfigurations: u64,
    pub configurations_loaded: u64,
}

impl Device {
    pub fn shim(&self) -> &Arc<Shim> {
        &self.0.shim
    }

    /// Loads the array configuration (see `xdna_load_config`; the emulator accepts `None`).
    pub fn load_config(&self, xclbin: Option<&Path>, kernel: &str) -> Result<Config, ShimError> {
        let xclbin = c_path(xclbin);
        let name = CString::new(kernel).unwrap_or_default();
        // SAFETY: the device is open; the strings are NUL-terminated (or NULL) and outlive the
        // call.
        let raw = unsafe {
            self.0
                .shim
                .lib
                .xdna_load_config(self.0.raw.as_ptr(), c_ptr(&xclbin), name.as_ptr())
        };
        let raw = NonNull::new(raw).ok_or_else(|| self.0.shim.error("xdna_load_config"))?;
        Ok(Config {
            dev: self.0.clone(),
            raw,
        })
    }

    /// The device's counters.
    pub fn counters(&self) -> Result<Counters, ShimError> {
        let mut out = ffi::xdna_counters {
            launches: 0,
            reconfigurations: 0,
            configurations_loaded: 0,
        };
        // SAFETY: the device is open and `out` is a valid place for the result.
        let rc = unsafe {
            self.0
                .shim
                .lib
                .xdna_counters_get(self.0.raw.as_ptr(), &mut out)
        };
        if rc != 0 {
            return Err(self.0.shim.error("xdna_counters_get"));
        }
        Ok(Counters {
            launches: out.launches,
            reconfigurations: out.reconfigurations,
            configurations_loaded: out.configurations_loaded,
        })
    }
}

fn c_path(p: Option<&Path>) -> Option<CString> {
    p.map(|p| CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default())
}

fn c_ptr(s: &Option<CString>) -> *const std::os::raw::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// The array configuration (freed with its device).
pub struct Config {
    dev: Arc<DeviceInner>,
    raw: NonNull<ffi::xdna_config>,
}

// SAFETY: see `DeviceInner`: used from one thread at a time.
unsafe impl Send for Config {}

/// The kernel argument a buffer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    A,
    B,
    C,
}

impl Config {
    /// Loads the instruction sequence of one shape (see `xdna_load_sequence`; the emulator runs
    /// by `params` and accepts `None` for the file).
    pub fn load_sequence(
        &self,
        insts: Option<&Path>,
        params: GemmParams,
    ) -> Result<Sequence, ShimError> {
        let insts = c_path(insts);
        let c_params = ffi::xdna_gemm_params {
            m_blocks: params.m_blocks,
            k_tiles: params.k_tiles,
            n_blocks: params.n_blocks,
        };
        let shim = &self.dev.shim;
        // SAFETY: the configuration is alive; the path is NUL-terminated (or NULL) and the
        // parameters live across the call.
        let raw = unsafe {
            shim.lib
                .xdna_load_sequence(self.raw.as_ptr(), c_ptr(&insts), &c_params)
        };
        let raw = NonNull::new(raw).ok_or_else(|| shim.error("xdna_load_sequence"))?;
        Ok(Sequence {
            dev: self.dev.clone(),
            raw,
            params,
        })
    }

    /// A device buffer of `bytes` for argument `role` (contents unspecified).
    pub fn alloc(&self, role: Role, bytes: usize) -> Result<Buffer, ShimError> {
        let role_c = match role {
            Role::A => ffi::xdna_buffer_role::XDNA_BUFFER_A,
            Role::B => ffi::xdna_buffer_role::XDNA_BUFFER_B,
            Role::C => ffi::xdna_buffer_role::XDNA_BUFFER_C,
        };
        let shim = &self.dev.shim;
        // SAFETY: the configuration is alive (its device is, through `self.dev`).
        let raw = unsafe { shim.lib.xdna_alloc(self.raw.as_ptr(), role_c, bytes) };
        let raw = NonNull::new(raw).ok_or_else(|| shim.error("xdna_alloc"))?;
        // SAFETY: the buffer was just allocated.
        let host = unsafe { shim.lib.xdna_map(raw.as_ptr()) };
        let Some(host) = NonNull::new(host.cast::<u8>()) else {
            let err = shim.error("xdna_map");
            // SAFETY: allocated above, not used after this.
            unsafe { shim.lib.xdna_free(raw.as_ptr()) };
            return Err(err);
        };
        Ok(Buffer {
            dev: self.dev.clone(),
            raw,
            host,
            bytes,
            role,
        })
    }
}

/// One shape's instruction sequence (freed with its device).
pub struct Sequence {
    dev: Arc<DeviceInner>,
    raw: NonNull<ffi::xdna_sequence>,
    params: GemmParams,
}

// SAFETY: see `DeviceInner`: used from one thread at a time.
unsafe impl Send for Sequence {}

impl Sequence {
    pub fn params(&self) -> GemmParams {
        self.params
    }

    /// Launches the sequence once on (a, b) into c and waits for it.
    pub fn run(&self, a: &Buffer, b: &Buffer, c: &Buffer) -> Result<(), ShimError> {
        if (a.role, b.role, c.role) != (Role::A, Role::B, Role::C) {
            return Err(ShimError::Call {
                call: "xdna_run",
                message: "buffers passed in the wrong argument slots".to_owned(),
            });
        }
        let shim = &self.dev.shim;
        // SAFETY: sequence and buffers are alive and belong to the same device (the shim checks
        // sizes and ownership and reports a mismatch as an error).
        let rc = unsafe {
            shim.lib.xdna_run(
                self.raw.as_ptr(),
                a.raw.as_ptr(),
                b.raw.as_ptr(),
                c.raw.as_ptr(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(shim.error("xdna_run"))
        }
    }
}

/// A device buffer with its host mapping.
pub struct Buffer {
    dev: Arc<DeviceInner>,
    raw: NonNull<ffi::xdna_buffer>,
    host: NonNull<u8>,
    bytes: usize,
    role: Role,
}

// SAFETY: see `DeviceInner`: used from one thread at a time.
unsafe impl Send for Buffer {}

impl Buffer {
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The host mapping as bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: xdna_map returned a mapping of `bytes` bytes valid for the buffer's lifetime;
        // `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.host.as_ptr(), self.bytes) }
    }

    /// The host mapping as int8 (A and B buffers).
    pub fn as_i8_mut(&mut self) -> &mut [i8] {
        // SAFETY: as `bytes_mut`; i8 has the layout of u8.
        unsafe { std::slice::from_raw_parts_mut(self.host.as_ptr().cast::<i8>(), self.bytes) }
    }

    /// The host mapping as int32 (C buffers); the mapping is page-aligned in both shims.
    pub fn as_i32(&self) -> &[i32] {
        assert_eq!(
            self.host.as_ptr().align_offset(std::mem::align_of::<i32>()),
            0,
            "int32 buffer mapping is not aligned"
        );
        // SAFETY: aligned (checked), `bytes / 4` whole elements inside the mapping, and no
        // mutable view can exist while `&self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.host.as_ptr().cast::<i32>(), self.bytes / 4) }
    }

    pub fn sync_to_device(&self) -> Result<(), ShimError> {
        self.sync(
            ffi::xdna_sync_direction::XDNA_SYNC_TO_DEVICE,
            "xdna_sync(to device)",
        )
    }

    pub fn sync_from_device(&self) -> Result<(), ShimError> {
        self.sync(
            ffi::xdna_sync_direction::XDNA_SYNC_FROM_DEVICE,
            "xdna_sync(from device)",
        )
    }

    fn sync(&self, dir: ffi::xdna_sync_direction, call: &'static str) -> Result<(), ShimError> {
        // SAFETY: the buffer is alive.
        let rc = unsafe { self.dev.shim.lib.xdna_sync(self.raw.as_ptr(), dir) };
        if rc == 0 {
            Ok(())
        } else {
            Err(self.dev.shim.error(call))
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated by xdna_alloc, freed once; the device is still open (`self.dev`).
        unsafe { self.dev.shim.lib.xdna_free(self.raw.as_ptr()) }
    }
}

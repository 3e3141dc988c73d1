//! Build script: plugin version info, the Rust binding of the XDNA2 shim ABI, and the emulated shim
//! library the tests run the XDNA2 backend on.
//!
//! - `kernels/host/xdna_shim.h` -> `$OUT_DIR/xdna_shim.rs` (bindgen): the function table that
//!   `src/npu/xdna/shim.rs` loads at run time with libloading, and the tiling constants.
//! - `kernels/host/xdna_shim_emu.c` -> `$OUT_DIR/libxdna_shim_emu.so`, whose path reaches the crate
//!   (tests included) as `env!("WHISPERENCNPU_XDNA_EMU_SHIM")`.
//! - Where an XRT with hardware contexts is installed (`$XILINX_XRT`, or /opt/xilinx/xrt, or
//!   /usr), `kernels/host/xdna_shim_xrt.cpp` -> `$OUT_DIR/libxdna_shim_xrt.so` as well, so that
//!   a build on such a machine compiles the device shim too (`make -C kernels install` is what
//!   installs it next to the kernel binaries).
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    gst_plugin_version_helper::info();

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let host = Path::new("kernels/host");
    for file in [
        "kernels/gemm_config.h",
        "kernels/host/xdna_shim.h",
        "kernels/host/xdna_shim_emu.c",
        "kernels/host/xdna_shim_xrt.cpp",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=XILINX_XRT");

    bind_shim(&host.join("xdna_shim.h"), &out.join("xdna_shim.rs"));

    let emu = out.join("libxdna_shim_emu.so");
    shared_library(
        &[host.join("xdna_shim_emu.c")],
        &["-std=c11", "-O3", "-pthread"],
        &[],
        &emu,
    );
    println!(
        "cargo:rustc-env=WHISPERENCNPU_XDNA_EMU_SHIM={}",
        emu.display()
    );

    if let Some((include, libdir)) = find_xrt() {
        let lib = out.join("libxdna_shim_xrt.so");
        let include = format!("-I{}", include.display());
        let libdir = format!("-L{}", libdir.display());
        shared_library(
            &[host.join("xdna_shim_xrt.cpp")],
            &["-std=c++17", "-O2", &include],
            &[&libdir, "-lxrt_coreutil"],
            &lib,
        );
        println!(
            "cargo:rustc-env=WHISPERENCNPU_XDNA_XRT_SHIM={}",
            lib.display()
        );
    }
}

/// bindgen: the ABI's functions as a dynamically loaded table (`XdnaShimLibrary`, every symbol
/// required) plus its types and `#define` constants.
fn bind_shim(header: &Path, out: &Path) {
    bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_function("xdna_.*")
        .allowlist_type("xdna_.*")
        .allowlist_var("XDNA_.*")
        .rustified_enum("xdna_.*")
        .dynamic_library_name("XdnaShimLibrary")
        .dynamic_link_require_all(true)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen could not read {} ({e}); libclang is needed (scripts/install-deps)",
                header.display()
            )
        })
        .write_to_file(out)
        .expect("write the shim bindings");
}

/// Compiles and links `sources` into a shared library with the C/C++ compiler the cc crate
/// picks (CC/CXX and the target's flags are honoured).
fn shared_library(sources: &[PathBuf], flags: &[&str], libs: &[&str], out: &Path) {
    let cpp = sources
        .iter()
        .any(|s| s.extension().is_some_and(|e| e == "cpp"));
    let compiler = cc::Build::new()
        .cpp(cpp)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.args(["-shared", "-fPIC", "-Wall"])
        .args(flags)
        .args(sources)
        .arg("-o")
        .arg(out)
        .args(libs);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed ({status})");
}

/// An XRT whose headers have hardware contexts (xrt/xrt_hw_context.h): older XRTs (Debian 12
/// ships 2.13) cannot drive the XDNA NPUs and are ignored.
/// Returns its include and library directories.
fn find_xrt() -> Option<(PathBuf, PathBuf)> {
    let candidates = env::var_os("XILINX_XRT")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/opt/xilinx/xrt", "/usr"].map(PathBuf::from));
    for root in candidates {
        let include = root.join("include");
        if !include.join("xrt/xrt_hw_context.h").is_file() {
            continue;
        }
        let lib = ["lib", "lib64", "lib/x86_64-linux-gnu"]
            .iter()
            .map(|l| root.join(l))
            .find(|l| l.join("libxrt_coreutil.so").exists());
        if let Some(lib) = lib {
            return Some((include, lib));
        }
    }
    None
}

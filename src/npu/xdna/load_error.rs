//! Why the device shim could not be loaded, in words a user can act on.
//!
//! The XRT shim links XRT's libraries, and those are often built for a newer system than the one
//! they end up on: Debian sid's XRT 2.25 (the one `make test` compiles the shim against) needs
//! glibc 2.38 and the libstdc++ of GCC 13 or newer, Debian 12 has glibc 2.36 and GCC 12's. The
//! dynamic loader then refuses the library with one terse line naming the first missing symbol
//! version; this module turns that line into "XRT cannot load on this system: ..." with the
//! library, what it needs and what this system has.

/// The dynamic loader's words for a missing symbol version (glibc's `dl-version.c`):
/// ``<lib>: version `<VERSION>' not found (required by <dependent>)``.
const VERSION_NOT_FOUND: &str = "version `";
const VERSION_NOT_FOUND_END: &str = "' not found (required by ";
/// ... and for a missing library: `<lib>: cannot open shared object file: ...`.
const CANNOT_OPEN: &str = ": cannot open shared object file";

/// An explanation of a failed `dlopen` of the shim, or `None` if the message is not one of the
/// loader's dependency failures (then the raw message says enough).
pub fn explain(dlopen_message: &str, glibc: Option<&str>) -> Option<String> {
    let system = match glibc {
        Some(v) => format!("this system has glibc {v}"),
        None => "this system's C library is not glibc".to_owned(),
    };
    if let Some(at) = dlopen_message.find(VERSION_NOT_FOUND) {
        let rest = &dlopen_message[at + VERSION_NOT_FOUND.len()..];
        let end = rest.find(VERSION_NOT_FOUND_END)?;
        let version = &rest[..end];
        let dependent = rest[end + VERSION_NOT_FOUND_END.len()..].trim_end_matches(')');
        // "<provider>: version `..." : the library that lacks the version.
        let provider = dlopen_message[..at]
            .trim_end_matches([':', ' '])
            .rsplit(": ")
            .next()
            .unwrap_or("");
        let what = if version.starts_with("GLIBCXX_") || version.starts_with("CXXABI_") {
            "a newer C++ runtime (libstdc++) than this system's"
        } else if version.starts_with("GLIBC_") {
            "a newer C library (glibc) than this system's"
        } else {
            "a newer library than this system's"
        };
        return Some(format!(
            "XRT cannot load on this system: {dependent} needs {version} of {provider}, i.e. \
             {what} ({system}); it was built for a newer distribution: use an XRT built for this \
             one (kernels/README.md), or run on a newer system"
        ));
    }
    if let Some(at) = dlopen_message.find(CANNOT_OPEN) {
        let missing = dlopen_message[..at].rsplit(": ").next().unwrap_or("");
        // The shim itself missing is said elsewhere; a missing dependency is XRT's absence.
        if missing.starts_with("libxrt") {
            return Some(format!(
                "XRT cannot load on this system: {missing} is not installed or not on the \
                 library path (install XRT with its NPU plugin, kernels/README.md)"
            ));
        }
    }
    None
}

/// The running glibc's version (`gnu_get_libc_version`), if the C library is glibc.
pub fn glibc_version() -> Option<String> {
    // SAFETY: looks up a symbol in the already loaded C library; `gnu_get_libc_version` takes no
    // arguments and returns a static NUL-terminated string.
    unsafe {
        let this = libloading::os::unix::Library::this();
        let f = this
            .get::<unsafe extern "C" fn() -> *const std::os::raw::c_char>(b"gnu_get_libc_version\0")
            .ok()?;
        let p = f();
        if p.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What dlopen said on Debian 12 for the shim linked against Debian sid's XRT 2.25.
    const DEBIAN12_SID_XRT: &str = "/work/target/xrt/build/libxdna_shim_xrt.so: \
        /lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by \
        /work/target/xrt/root/usr/lib/x86_64-linux-gnu/libxrt_coreutil.so.2)";

    #[test]
    fn a_missing_symbol_version_names_library_version_and_system() {
        let text = explain(DEBIAN12_SID_XRT, Some("2.36")).unwrap();
        assert!(
            text.starts_with("XRT cannot load on this system: "),
            "{text}"
        );
        assert!(
            text.contains("/usr/lib/x86_64-linux-gnu/libxrt_coreutil.so.2 needs GLIBCXX_3.4.32 of /lib/x86_64-linux-gnu/libstdc++.so.6"),
            "{text}"
        );
        assert!(
            text.contains("C++ runtime") && text.contains("glibc 2.36"),
            "{text}"
        );

        let glibc = "x.so: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found \
                     (required by /u/libxrt_coreutil.so.2)";
        let text = explain(glibc, None).unwrap();
        assert!(
            text.contains("needs GLIBC_2.38 of /lib/x86_64-linux-gnu/libc.so.6"),
            "{text}"
        );
        assert!(
            text.contains("C library (glibc)") && text.contains("not glibc"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_xrt_is_named_and_other_failures_are_left_alone() {
        let text = explain(
            "/k/libxdna_shim_xrt.so: libxrt_coreutil.so.2: cannot open shared object file: No \
             such file or directory",
            Some("2.36"),
        )
        .unwrap();
        assert!(
            text.contains("libxrt_coreutil.so.2 is not installed"),
            "{text}"
        );
        assert_eq!(explain("/k/x.so: invalid ELF header", Some("2.36")), None);
        assert_eq!(
            explain(
                "/k/x.so: cannot open shared object file: No such file",
                None
            ),
            None
        );
        assert_eq!(explain("version `broken", None), None);
    }

    #[test]
    fn the_running_glibc_is_found() {
        // The build and test machines are glibc systems.
        let v = glibc_version().expect("glibc");
        assert!(v.starts_with("2."), "{v}");
    }
}

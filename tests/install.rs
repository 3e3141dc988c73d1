//! Issue 10, item 2: `make install`, `make install-user` and `make uninstall` put the plugin where
//! GStreamer looks for plugins and take it away again, tried against temporary directories:
//! `GST_PLUGIN_SYSTEM_PATH` stands for the system plugin directory, `XDG_DATA_HOME` for the user's,
//! and a registry of its own keeps the user's registry untouched. Uses the release build of the
//! plugin (`make test` builds it first); nothing is built here (`make -o release`).

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN_FILE: &str = "libgstwhisperencnpu.so";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "whisperencnpu-install-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `make -o release TARGET VAR=VALUE...` in the project root; panics with its output on failure.
fn make(target: &str, vars: &[(&str, &Path)]) {
    let mut cmd = Command::new("make");
    cmd.current_dir(root())
        .args(["-s", "-o", "release", target]);
    for (var, value) in vars {
        cmd.arg(format!("{var}={}", value.display()));
    }
    let out = cmd.output().expect("run make");
    assert!(
        out.status.success(),
        "make {target} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `gst-inspect-1.0 whisperencnpu` as a user would run it (no GST_PLUGIN_PATH), with the system
/// plugin path and user data directory given; its output when it found the element.
fn inspect(system_path: Option<&Path>, data_home: &Path, registry: &Path) -> Option<String> {
    let mut cmd = Command::new("gst-inspect-1.0");
    cmd.arg("whisperencnpu")
        .env_remove("GST_PLUGIN_PATH")
        .env_remove("GST_PLUGIN_PATH_1_0")
        .env("XDG_DATA_HOME", data_home)
        .env("GST_REGISTRY", registry);
    match system_path {
        Some(p) => cmd.env("GST_PLUGIN_SYSTEM_PATH", p),
        None => cmd.env_remove("GST_PLUGIN_SYSTEM_PATH"),
    };
    let out = cmd.output().expect("run gst-inspect-1.0");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn built_plugin() {
    let plugin = root().join("target/release").join(PLUGIN_FILE);
    assert!(
        plugin.is_file(),
        "{} is missing: cargo build --release --locked first",
        plugin.display()
    );
}

#[test]
fn make_install_into_the_system_plugin_directory() {
    built_plugin();
    let tmp = temp_dir("system");
    let plugins = tmp.join("plugins");
    let data = tmp.join("data");
    let registry = tmp.join("registry.bin");

    make(
        "install",
        &[("PLUGINDIR", &plugins), ("XDG_DATA_HOME", &data)],
    );
    assert!(
        plugins.join(PLUGIN_FILE).is_file(),
        "make install: not in PLUGINDIR"
    );
    let out = inspect(Some(&plugins), &data, &registry)
        .expect("make install: gst-inspect-1.0 does not find whisperencnpu");
    assert!(
        out.contains(&plugins.join(PLUGIN_FILE).display().to_string()),
        "{out}"
    );

    make(
        "uninstall",
        &[("PLUGINDIR", &plugins), ("XDG_DATA_HOME", &data)],
    );
    assert!(
        !plugins.join(PLUGIN_FILE).exists(),
        "make uninstall left the plugin"
    );
    assert!(
        inspect(Some(&plugins), &data, &registry).is_none(),
        "make uninstall: gst-inspect-1.0 still finds whisperencnpu"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn make_install_user_into_the_users_plugin_directory() {
    built_plugin();
    let tmp = temp_dir("user");
    let data = tmp.join("data");
    let empty = tmp.join("no-system-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let registry = tmp.join("registry.bin");
    let installed = data.join("gstreamer-1.0/plugins").join(PLUGIN_FILE);

    make(
        "install-user",
        &[("XDG_DATA_HOME", &data), ("PLUGINDIR", &empty)],
    );
    assert!(
        installed.is_file(),
        "make install-user: not in {}",
        installed.display()
    );
    // GStreamer's default search (GST_PLUGIN_SYSTEM_PATH unset) includes the user's directory.
    let out = inspect(None, &data, &registry)
        .expect("make install-user: gst-inspect-1.0 does not find whisperencnpu");
    assert!(out.contains(&installed.display().to_string()), "{out}");

    make(
        "uninstall",
        &[("XDG_DATA_HOME", &data), ("PLUGINDIR", &empty)],
    );
    assert!(!installed.exists(), "make uninstall left the user's plugin");
    let _ = std::fs::remove_dir_all(&tmp);
}

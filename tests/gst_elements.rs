//! Issue 10, item 1 (fresh machines): every GStreamer element the examples, tests and scripts use
//! is installed, and `scripts/install-deps` installs the Debian package it comes in. A missing
//! element fails here with the package to install, not later as "no element textoverlay" in the
//! middle of a pipeline test.

mod common;

use std::path::{Path, PathBuf};

/// Every element used outside `src/`, with the Debian 12 package that holds it
/// (`dpkg -S` of the plugin file `gst-inspect-1.0 ELEMENT` names).
const ELEMENTS: &[(&str, &str)] = &[
    ("appsink", "gstreamer1.0-plugins-base"),
    ("appsrc", "gstreamer1.0-plugins-base"),
    ("audioconvert", "gstreamer1.0-plugins-base"),
    ("audioresample", "gstreamer1.0-plugins-base"),
    ("audiotestsrc", "gstreamer1.0-plugins-base"),
    ("decodebin", "gstreamer1.0-plugins-base"),
    ("videoconvert", "gstreamer1.0-plugins-base"),
    ("videotestsrc", "gstreamer1.0-plugins-base"),
    ("textoverlay", "gstreamer1.0-x"),
    ("wavparse", "gstreamer1.0-plugins-good"),
    ("autovideosink", "gstreamer1.0-plugins-good"),
    ("pulsesrc", "gstreamer1.0-plugins-good"),
    ("capsfilter", "libgstreamer1.0-0"),
    ("fakesink", "libgstreamer1.0-0"),
    ("fakesrc", "libgstreamer1.0-0"),
    ("filesink", "libgstreamer1.0-0"),
    ("filesrc", "libgstreamer1.0-0"),
    ("queue", "libgstreamer1.0-0"),
    ("tee", "libgstreamer1.0-0"),
    ("whisperencnpu", "(this plugin: cargo build --release)"),
];

/// Words that stand next to a ` ! ` in the sources without being elements (shell's `if !`, a
/// Python `%s ! ...`, an `echo` with a `!` in its text).
const NOT_ELEMENTS: &[&str] = &["if", "echo", "s"];

/// Where pipelines are written.
const SCANNED: &[&str] = &["examples", "tests", "scripts", "benches"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The element names in one line: `ElementFactory::make("name")` (Rust and Python), and the
/// words around ` ! ` in pipeline descriptions (caps, properties and variables are skipped).
fn element_names(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    for marker in ["ElementFactory::make(\"", "ElementFactory.make(\""] {
        for (at, _) in line.match_indices(marker) {
            let rest = &line[at + marker.len()..];
            names.push(rest.chars().take_while(|c| *c != '"').collect());
        }
    }
    if !line.contains(" ! ") {
        return names;
    }
    let word = |w: &str| -> Option<String> {
        (!w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        .then(|| w.to_string())
    };
    let mut segments = line.split(" ! ");
    // Before the first link: the last word that is not a property (`filesrc location=...`).
    if let Some(first) = segments.next() {
        if let Some(last) = first.split_whitespace().rfind(|w| !w.contains('=')) {
            let tail: String = last
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            names.extend(word(&tail));
        }
    }
    // After a link: the first word, unless it is caps (`audio/x-raw,...`) or a variable.
    for segment in segments {
        if let Some(first) = segment.split_whitespace().next() {
            let head = first.trim_end_matches(['"', '\'', '\\']);
            names.extend(word(head));
        }
    }
    names
}

#[test]
fn every_element_used_is_installed() {
    common::init_gst();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    for dir in SCANNED {
        files(&root.join(dir), &mut sources);
    }
    let this_file = root.join(file!());

    let mut unlisted = Vec::new();
    for path in sources.iter().filter(|p| **p != this_file) {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for name in element_names(line) {
                let known = ELEMENTS.iter().any(|(e, _)| *e == name);
                if !known && !NOT_ELEMENTS.contains(&name.as_str()) {
                    unlisted.push(format!("{}:{}: {name}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "elements used but not in this test's table (add each with its Debian package, and the \
         package to scripts/install-deps):\n{}",
        unlisted.join("\n")
    );

    let missing: Vec<String> = ELEMENTS
        .iter()
        .filter(|(name, _)| gst::ElementFactory::find(name).is_none())
        .map(|(name, package)| format!("{name}: apt-get install {package}"))
        .collect();
    assert!(
        missing.is_empty(),
        "GStreamer elements the examples and tests use are not installed (scripts/install-deps \
         installs them):\n{}",
        missing.join("\n")
    );

    let install_deps = std::fs::read_to_string(root.join("scripts/install-deps")).unwrap();
    let not_installed: Vec<&str> = ELEMENTS
        .iter()
        .map(|(_, package)| *package)
        .filter(|p| !p.starts_with('('))
        .filter(|p| !install_deps.split_whitespace().any(|w| w == *p))
        .collect();
    assert!(
        not_installed.is_empty(),
        "scripts/install-deps does not install {not_installed:?}"
    );
}

/// The scanner itself, on lines like those of the sources.
#[test]
fn element_names_are_found_in_pipeline_descriptions() {
    let cases: &[(&str, &[&str])] = &[
        (
            "gst-launch-1.0 -m filesrc location=\"$in\" ! decodebin ! audioconvert ! audioresample ! \\",
            &["filesrc", "decodebin", "audioconvert", "audioresample"],
        ),
        (
            "    ! audio/x-raw,format=F32LE,rate=16000 ! whisperencnpu model=x ! fakesink",
            &["whisperencnpu", "fakesink"],
        ),
        (
            "source = 'filesrc location=\"%s\" ! decodebin' % args.file",
            &["filesrc", "decodebin"],
        ),
        (
            "let sink = gst::ElementFactory::make(\"appsink\").build();",
            &["appsink"],
        ),
        ("if !stream.partial.is_empty() {", &[]),
        ("\"%s ! video/x-raw,width=1280 ! textoverlay name=overlay \"", &["s", "textoverlay"]),
    ];
    for (line, expected) in cases {
        assert_eq!(element_names(line), *expected, "{line}");
    }
}

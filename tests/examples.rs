//! The example pipelines of examples/pipelines run, as the README shows them.
//! They use the release build of the plugin (`make test` builds it first).

mod common;

use std::process::Command;

use common::{model_dir, shared_file, words, JFK_WORDS};

fn example(name: &str) -> Command {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pipelines/");
    Command::new(format!("{path}{name}"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_application_prints_the_segments() {
    let jfk = shared_file("audio/jfk.wav");
    let out = run(example("captions.py")
        .arg(&jfk)
        .args(["--model", model_dir("base").to_str().unwrap()]));
    println!("{out}");
    assert!(out.lines().all(|l| l.starts_with("[00:00:")), "{out}");
    let text: Vec<_> = out
        .lines()
        .map(|l| l.split("] ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(words(&text.join(" ")), JFK_WORDS);
}

#[test]
fn file_to_text_and_srt() {
    let jfk = shared_file("audio/jfk.wav");
    let out = run(example("file-to-text.sh").arg(&jfk));
    assert_eq!(words(&out), JFK_WORDS);

    let srt = std::env::temp_dir().join(format!("whisperencnpu-{}.srt", std::process::id()));
    run(example("file-to-srt.sh").arg(&jfk).arg(&srt));
    let text = std::fs::read_to_string(&srt).unwrap();
    let _ = std::fs::remove_file(&srt);
    let blocks: Vec<_> = text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert!(!blocks.is_empty());
    for (i, block) in blocks.iter().enumerate() {
        let lines: Vec<_> = block.lines().collect();
        assert_eq!(lines[0], (i + 1).to_string());
        assert!(lines[1].contains(" --> "), "{block}");
    }
}

#[test]
fn live_captions_run_without_a_microphone() {
    let jfk = shared_file("audio/jfk.wav");
    run(example("live-captions.sh")
        .env(
            "SOURCE",
            format!("filesrc location={} ! decodebin", jfk.display()),
        )
        .env("SINK", "fakesink sync=false")
        .env("VIDEO", "videotestsrc is-live=true num-buffers=50")
        .arg(format!("model={}", model_dir("tiny.en").display())));
}

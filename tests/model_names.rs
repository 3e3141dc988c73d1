//! Models given by name, looked up offline: `openai/whisper-tiny.en` in a Hugging Face cache that
//! this test fills (HF_HOME points at it, laid out as huggingface_hub lays it out: snapshot files
//! are links into blobs/), `ggml-tiny.en.bin` in a whisper.cpp folder (WHISPER_CPP_MODELS),
//! `tiny.en` and `Systran/faster-whisper-tiny.en` in our folder; the element transcribes jfk.wav
//! with `model=openai/whisper-tiny.en`; an unknown name lists every place looked at.
mod common;
mod convert;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gstwhisperencnpu::model::{default_models_root, Format, ModelError, WhisperModel};

use common::{init_gst, pause_error, run_text_harness, words, JFK_WORDS};
use convert::{GgmlType, StDtype};

/// The HF cache and whisper.cpp folder, filled once per test binary; the environment points at
/// them before any test reads it.
fn caches() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let tiny = common::model_dir("tiny.en");
        // huggingface_hub's layout: blobs/<hash>, snapshots/<rev>/<file> -> ../../blobs/<hash>,
        // refs/main holding <rev>.
        let repo = root.path().join("hf/hub/models--openai--whisper-tiny.en");
        let staged = root.path().join("staged");
        convert::write_hf(&tiny, &staged, StDtype::F16, 1);
        let rev = "0123456789abcdef0123456789abcdef01234567";
        let snap = repo.join("snapshots").join(rev);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), rev).unwrap();
        for (i, f) in std::fs::read_dir(&staged).unwrap().enumerate() {
            let f = f.unwrap().path();
            let blob = format!("blob{i:04}");
            std::fs::rename(&f, repo.join("blobs").join(&blob)).unwrap();
            std::os::unix::fs::symlink(
                Path::new("../../blobs").join(&blob),
                snap.join(f.file_name().unwrap()),
            )
            .unwrap();
        }

        let ct2 = WhisperModel::load(&tiny).unwrap();
        let tok = ct2.tokenizer().unwrap();
        let tokens: Vec<Vec<u8>> = (0..tok.eot())
            .map(|i| tok.token_bytes(i).to_vec())
            .collect();
        std::fs::create_dir_all(root.path().join("ggml")).unwrap();
        convert::write_ggml(
            &tiny,
            &root.path().join("ggml/ggml-tiny.en.bin"),
            GgmlType::F16,
            &tokens,
            &gstwhisperencnpu::mel::mel_filterbank(80, 16_000, 400),
        );

        // SAFETY (edition 2021: set_var is safe, but racy): done inside the OnceLock, before any
        // test of this binary reads the environment.
        std::env::set_var("HF_HOME", root.path().join("hf"));
        std::env::remove_var("HF_HUB_CACHE");
        std::env::set_var("WHISPER_CPP_MODELS", root.path().join("ggml"));
        root
    })
    .path()
}

fn load(name: &str) -> WhisperModel {
    caches();
    WhisperModel::load(Path::new(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn names_find_each_tool_s_models() {
    let root = caches();
    let hf = load("openai/whisper-tiny.en");
    assert_eq!(hf.format(), Format::HfSafetensors);
    assert!(
        hf.dir().starts_with(root.join("hf/hub")),
        "{}",
        hf.dir().display()
    );
    let ggml = load("ggml-tiny.en.bin");
    assert_eq!(ggml.format(), Format::Ggml);
    for name in ["tiny.en", "Systran/faster-whisper-tiny.en"] {
        let m = load(name);
        assert_eq!(m.format(), Format::Ct2, "{name}");
        assert_eq!(m.dir(), default_models_root().join("tiny.en"), "{name}");
    }
    assert_eq!(load("base").dir(), default_models_root().join("base"));
    for m in [&hf, &ggml] {
        assert_eq!(m.dims(), load("tiny.en").dims());
    }
}

#[test]
fn an_unknown_name_lists_where_it_was_looked_for() {
    let root = caches();
    let e = WhisperModel::load(Path::new("large-v3-turbo")).unwrap_err();
    let msg = e.to_string();
    println!("{msg}");
    assert!(matches!(e, ModelError::NotFound { .. }), "{e:?}");
    let places: Vec<PathBuf> = vec![
        default_models_root().join("large-v3-turbo"),
        root.join("hf/hub/models--openai--whisper-large-v3-turbo"),
        root.join("hf/hub/models--Systran--faster-whisper-large-v3-turbo"),
        root.join("ggml/ggml-large-v3-turbo.bin"),
    ];
    for p in places {
        assert!(
            msg.contains(&*p.to_string_lossy()),
            "{} not in {msg}",
            p.display()
        );
    }
    assert!(msg.contains("scripts/fetch-models"), "{msg}");

    // On the bus too, failing the state change.
    caches();
    init_gst();
    let el = gst::ElementFactory::make("whisperencnpu")
        .property("model", "openai/whisper-large-v3-turbo")
        .build()
        .unwrap();
    let text = pause_error(&el);
    println!("{text}");
    assert!(
        text.contains("models--openai--whisper-large-v3-turbo") && text.contains("fetch-models"),
        "{text}"
    );
}

#[test]
fn the_element_transcribes_with_a_hugging_face_name() {
    caches();
    init_gst();
    let el = gst::ElementFactory::make("whisperencnpu")
        .property("model", "openai/whisper-tiny.en")
        .property_from_str("mode", "transcription")
        .property_from_str("latency-mode", "full")
        .property("language", "en")
        .build()
        .unwrap();
    let jfk = common::wav_f32("audio/jfk.wav");
    let out = run_text_harness(&el, &jfk, 16_000, None);
    let all: Vec<_> = out.texts.iter().map(|(_, _, t)| t.as_str()).collect();
    println!("{all:?}");
    assert_eq!(words(&all.join(" ")), JFK_WORDS);
}

/// Not a check: fills the Hugging Face cache `$WHISPERENCNPU_HF_HOME_OUT` with `openai/whisper-base`
/// and `openai/whisper-tiny.en` converted from the fetched models, to try the element by hand:
/// `WHISPERENCNPU_HF_HOME_OUT=/tmp/hf cargo test --release --test model_names -- --ignored`, then
/// `HF_HOME=/tmp/hf gst-launch-1.0 ... ! whisperencnpu model=openai/whisper-base ! ...`.
#[test]
#[ignore]
fn fill_a_hugging_face_cache() {
    let Some(out) = std::env::var_os("WHISPERENCNPU_HF_HOME_OUT") else {
        panic!("set WHISPERENCNPU_HF_HOME_OUT to the HF_HOME to fill");
    };
    for name in ["base", "tiny.en"] {
        let repo = PathBuf::from(&out).join(format!("hub/models--openai--whisper-{name}"));
        let rev = "0000000000000000000000000000000000000000";
        convert::write_hf(
            &common::model_dir(name),
            &repo.join("snapshots").join(rev),
            StDtype::F16,
            1,
        );
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), rev).unwrap();
        println!("{}", repo.display());
    }
}

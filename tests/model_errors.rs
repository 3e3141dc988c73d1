//! `WhisperModel::load` on broken installations: the right error, a readable message, no panic.
//!
//! The truncated-model case copies part of the real tiny.en model.bin (scripts/fetch-models).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gstwhisperencnpu::model::{default_models_root, ModelError, WhisperModel};

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "whisperencnpu-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(dir: &Path) -> ModelError {
    match WhisperModel::load(dir) {
        Ok(m) => panic!("{} loaded: {:?}", dir.display(), m.dims()),
        Err(e) => {
            println!("{}: {e}", dir.display());
            e
        }
    }
}

fn real_tiny_en() -> Vec<u8> {
    let path = default_models_root().join("tiny.en").join("model.bin");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-models (or set WHISPERENCNPU_MODELS)",
        path.display()
    );
    std::fs::read(&path).unwrap()
}

#[test]
fn missing_directory() {
    let tmp = TempDir::new("missing");
    let dir = tmp.path().join("no-such-model");
    let e = load_err(&dir);
    assert!(matches!(e, ModelError::DirNotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("no-such-model") && msg.contains("fetch-models"),
        "{msg}"
    );
}

#[test]
fn directory_without_model_bin() {
    let tmp = TempDir::new("empty");
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let e = load_err(tmp.path());
    match &e {
        ModelError::FileNotFound { path } => assert!(path.ends_with("model.bin")),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("model.bin"), "{e}");
}

#[test]
fn truncated_model() {
    let full = real_tiny_en();
    // Cut in the header, in a variable's name, in the middle of a large weight, just before the
    // aliases and one byte short of the end.
    for len in [
        3usize,
        10,
        40,
        1000,
        full.len() / 2,
        full.len() - 60,
        full.len() - 1,
    ] {
        let tmp = TempDir::new("truncated");
        std::fs::write(tmp.path().join("model.bin"), &full[..len]).unwrap();
        let e = load_err(tmp.path());
        if len < 4 {
            assert!(matches!(e, ModelError::NotCt2 { .. }), "{len}: {e:?}");
            continue;
        }
        match &e {
            ModelError::Truncated {
                offset,
                needed,
                file_len,
                what,
                path,
            } => {
                assert_eq!(*file_len, len as u64);
                assert!(offset + needed > *file_len, "{what}");
                assert!(path.ends_with("model.bin"));
            }
            other => panic!("length {len}: {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("truncated") && msg.contains("model.bin") && msg.contains("offset"),
            "{msg}"
        );
    }
}

#[test]
fn garbage_bytes() {
    let tmp = TempDir::new("garbage");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    std::fs::write(tmp.path().join("model.bin"), &garbage).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, ModelError::NotCt2 { .. }), "{e:?}");
    assert!(e.to_string().contains("not a CTranslate2 model"), "{e}");

    // Text where a model should be (e.g. an HTML error page saved by a failed download).
    std::fs::write(
        tmp.path().join("model.bin"),
        "<!DOCTYPE html><html>404</html>",
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, ModelError::NotCt2 { .. }), "{e:?}");
}

#[test]
fn corrupted_bytes_never_panic() {
    // Overwrite the header region of the real model at many places: every outcome is either a
    // successful load or an error, never a panic.
    let full = real_tiny_en();
    let head = &full[..4096];
    for pos in (0..head.len()).step_by(7) {
        let mut bytes = head.to_vec();
        bytes[pos] ^= 0xa5;
        let tmp = TempDir::new("corrupt");
        std::fs::write(tmp.path().join("model.bin"), &bytes).unwrap();
        assert!(WhisperModel::load(tmp.path()).is_err());
    }
}

#[test]
fn not_a_whisper_model() {
    // A valid CTranslate2 header with another spec.
    let mut bytes = 6u32.to_le_bytes().to_vec();
    let spec = b"TransformerSpec\0";
    bytes.extend_from_slice(&(spec.len() as u16).to_le_bytes());
    bytes.extend_from_slice(spec);
    bytes.extend_from_slice(&1u32.to_le_bytes()); // revision
    bytes.extend_from_slice(&0u32.to_le_bytes()); // variables
    bytes.extend_from_slice(&0u32.to_le_bytes()); // aliases
    let tmp = TempDir::new("spec");
    std::fs::write(tmp.path().join("model.bin"), &bytes).unwrap();
    let e = load_err(tmp.path());
    assert!(
        matches!(e, ModelError::NotWhisper { ref spec, .. } if spec == "TransformerSpec"),
        "{e:?}"
    );
}

#[test]
fn real_model_loads_with_its_dimensions() {
    let root = default_models_root();
    for (name, d, layers, heads, vocab) in
        [("tiny.en", 384, 4, 6, 51864), ("base", 512, 6, 8, 51865)]
    {
        let m = WhisperModel::load(&root.join(name)).unwrap();
        let dims = m.dims();
        assert_eq!(dims.d_model, d);
        assert_eq!(dims.n_mels, 80);
        assert_eq!(dims.n_encoder_layers, layers);
        assert_eq!(dims.n_decoder_layers, layers);
        assert_eq!(dims.n_heads, heads);
        assert_eq!(dims.n_decoder_heads, heads);
        assert_eq!(dims.n_vocab, vocab);
        assert_eq!(dims.n_audio_ctx, 1500);
        assert_eq!(dims.n_text_ctx, 448);
        assert_eq!(dims.is_multilingual(), name == "base");
        assert!(!m.config().suppress_ids.is_empty());
        assert!(m.weights().contains("decoder/projection/weight"));
    }
}

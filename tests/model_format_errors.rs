//! Broken Hugging Face and ggml models: truncated, foreign, mismatched or byte-fuzzed files give
//! an error naming the file and the fault, never a panic (as tests/model_errors.rs checks for
//! CTranslate2's model.bin). Uses the synthetic two-layer model (tests/convert/synthetic.rs), so
//! nothing needs to be installed.
mod common;
mod convert;

use std::path::{Path, PathBuf};

use gstwhisperencnpu::model::formats::ggml::GgmlFile;
use gstwhisperencnpu::model::{ModelError, WhisperModel};

use convert::synthetic;
use convert::{GgmlType, StDtype};

fn load_err(path: &Path) -> ModelError {
    match WhisperModel::load(path) {
        Ok(m) => panic!("{} loaded: {:?}", path.display(), m.dims()),
        Err(e) => e,
    }
}

/// The synthetic model as CTranslate2 (`ct2/`), Transformers (`hf/`) and ggml f16 (`ggml.bin`).
struct Models {
    tmp: tempfile::TempDir,
}

impl Models {
    fn new() -> Models {
        let tmp = tempfile::tempdir().unwrap();
        let ct2 = tmp.path().join("ct2");
        synthetic::write_ct2(&ct2, 80);
        convert::write_hf(&ct2, &tmp.path().join("hf"), StDtype::F32, 1);
        convert::write_ggml(
            &ct2,
            &tmp.path().join("ggml.bin"),
            GgmlType::F16,
            &synthetic::text_tokens(),
            &gstwhisperencnpu::mel::mel_filterbank(80, 16_000, 400),
        );
        Models { tmp }
    }

    fn hf(&self) -> PathBuf {
        self.tmp.path().join("hf")
    }

    fn ggml(&self) -> PathBuf {
        self.tmp.path().join("ggml.bin")
    }

    /// A fresh copy of the Transformers model, to break.
    fn hf_copy(&self, tag: &str) -> PathBuf {
        let dir = self.tmp.path().join(format!("hf-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(self.hf()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        dir
    }
}

#[test]
fn the_synthetic_model_loads_in_every_format() {
    let m = Models::new();
    let ct2 = WhisperModel::load(&m.tmp.path().join("ct2")).unwrap();
    for path in [m.hf(), m.ggml()] {
        let other = WhisperModel::load(&path).unwrap();
        assert_eq!(other.dims(), ct2.dims(), "{}", path.display());
        assert_eq!(other.dims().n_encoder_layers, 2);
    }
}

#[test]
fn truncated_safetensors() {
    let m = Models::new();
    let full = std::fs::read(m.hf().join("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let dir = m.hf_copy("cut");
    let file = dir.join("model.safetensors");
    for len in [
        0,
        5,
        8,
        9,
        header_end / 2,
        header_end,
        header_end + 10,
        full.len() / 2,
        full.len() - 1,
    ] {
        std::fs::write(&file, &full[..len]).unwrap();
        let e = load_err(&dir);
        let msg = e.to_string();
        println!("{len}: {msg}");
        assert!(matches!(e, ModelError::Format { .. }), "{len}: {e:?}");
        assert!(msg.contains("model.safetensors"), "{msg}");
    }
}

#[test]
fn fuzzed_safetensors_headers_never_panic() {
    let m = Models::new();
    let full = std::fs::read(m.hf().join("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let dir = m.hf_copy("fuzz");
    let file = dir.join("model.safetensors");
    let mut errors = 0;
    for pos in (0..header_end).step_by(5) {
        for v in [0x00u8, 0xff, b'9', b'"'] {
            let mut b = full.clone();
            b[pos] = v;
            std::fs::write(&file, &b).unwrap();
            if WhisperModel::load(&dir).is_err() {
                errors += 1;
            }
        }
    }
    println!(
        "{errors} of {} fuzzed headers refused",
        header_end.div_ceil(5) * 4
    );
    assert!(errors > 0);
}

#[test]
fn foreign_and_mismatched_transformers_models() {
    let m = Models::new();

    // Another architecture's config and weights.
    let dir = m.hf_copy("bert");
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "bert", "hidden_size": 64}"#,
    )
    .unwrap();
    let bert = convert::safetensors_bytes(
        &[&convert::Tensor {
            name: "bert.embeddings.word_embeddings.weight".into(),
            shape: vec![4, 2],
            values: vec![0.0; 8],
        }],
        StDtype::F32,
    );
    std::fs::write(dir.join("model.safetensors"), bert).unwrap();
    let e = load_err(&dir);
    println!("{e}");
    assert!(
        matches!(e, ModelError::MissingVariable { ref name, ref path } if name == "model.encoder.conv1.weight" && path.ends_with("model.safetensors")),
        "{e:?}"
    );

    // config.json of another size than the weights.
    for (key, value) in [
        ("d_model", 999),
        ("encoder_layers", 5),
        ("num_mel_bins", 128),
    ] {
        let dir = m.hf_copy(key);
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        config[key] = value.into();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let e = load_err(&dir);
        let msg = e.to_string();
        println!("{msg}");
        assert!(matches!(e, ModelError::Mismatch { .. }), "{e:?}");
        assert!(msg.contains("config.json") && msg.contains(key), "{msg}");
    }

    // No attention heads in config.json: they are not in the weights' shapes.
    let dir = m.hf_copy("heads");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    config
        .as_object_mut()
        .unwrap()
        .remove("encoder_attention_heads");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(e.to_string().contains("encoder_attention_heads"), "{e}");

    // An older Transformers checkpoint: a pickle, refused with what to use instead.
    let dir = m.hf_copy("pickle");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
    let e = load_err(&dir);
    println!("{e}");
    assert!(
        matches!(e, ModelError::UnknownFormat { ref path, .. } if path.ends_with("pytorch_model.bin")),
        "{e:?}"
    );
    assert!(e.to_string().contains("safetensors"), "{e}");

    // No config.json at all.
    let dir = m.hf_copy("noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, ModelError::FileNotFound { ref path } if path.ends_with("config.json")),
        "{e:?}"
    );

    // A shard index naming a missing shard, and one climbing out of the folder.
    for (shard, check) in [
        (
            "model-00002-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ),
        ("../model.safetensors", "not a plain file name"),
    ] {
        let dir = m.hf_copy(&format!("index{}", shard.len()));
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let index = serde_json::json!({"weight_map": {"model.encoder.conv1.weight": shard}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let e = load_err(&dir);
        println!("{e}");
        assert!(e.to_string().contains(check), "{e}");
    }
}

/// A broken tokenizer is reported as the tokenizer's fault, naming its file and what is wrong
/// with it, whatever the format of the weights (it used to say "corrupt CTranslate2 model").
#[test]
fn broken_tokenizers_name_the_file_and_the_fault() {
    let m = Models::new();
    let good = synthetic::tokenizer_json();
    let without_eot = {
        let mut t = good.clone();
        t["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|a| a["content"] != "<|endoftext|>");
        t
    };
    // One language token fewer: every special token after it moves down one id, as in a
    // tokenizer of another model.
    let foreign = {
        let mut t = good.clone();
        let added = t["added_tokens"].as_array_mut().unwrap();
        let first = added[0]["id"].as_u64().unwrap();
        added.retain(|a| a["content"] != "<|de|>");
        for (i, a) in added.iter_mut().enumerate() {
            a["id"] = (first + i as u64).into();
        }
        t
    };
    let no_vocab = serde_json::json!({"added_tokens": good["added_tokens"].clone()});
    for (tag, tokenizer, fault) in [
        (
            "eot",
            &without_eot,
            "special token <|endoftext|> is missing",
        ),
        ("foreign", &foreign, "another model"),
        ("vocab", &no_vocab, "no model.vocab object"),
    ] {
        let ct2 = m.tmp.path().join(format!("ct2-{tag}"));
        synthetic::write_ct2(&ct2, 80);
        let hf = m.hf_copy(tag);
        for dir in [ct2, hf] {
            std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
            let model = WhisperModel::load(&dir).unwrap();
            let e = model.tokenizer().unwrap_err();
            let msg = e.to_string();
            println!("{msg}");
            assert!(matches!(e, ModelError::Tokenizer { .. }), "{e:?}");
            assert!(
                msg.contains(&dir.join("tokenizer.json").display().to_string()),
                "the message does not name the file: {msg}"
            );
            assert!(msg.contains(fault), "{fault:?} not in {msg}");
            assert!(
                !msg.contains("CTranslate2") && !msg.contains("corrupt"),
                "the tokenizer is not the weights: {msg}"
            );
        }
    }

    // A slow tokenizer's vocab.json that is no token table.
    let dir = m.hf_copy("slow");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("vocab.json"), "[1, 2, 3]").unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").unwrap();
    let e = WhisperModel::load(&dir).unwrap().tokenizer().unwrap_err();
    println!("{e}");
    assert!(matches!(e, ModelError::Tokenizer { ref path, .. } if path.ends_with("vocab.json")));
}

#[test]
fn truncated_ggml_files() {
    let m = Models::new();
    let full = std::fs::read(m.ggml()).unwrap();
    // Every cut in the hyper-parameters, filterbank count and vocabulary start, then a few.
    let mut lens: Vec<usize> = (0..200).collect();
    lens.extend([
        4 + 44 + 8 + 80 * 201 * 4 + 2,
        full.len() / 3,
        full.len() / 2,
        full.len() - 1,
    ]);
    for len in lens {
        match GgmlFile::from_bytes(full[..len].to_vec(), Path::new("cut.bin")) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("cut.bin"), "{msg}");
                if len >= 4 {
                    assert!(msg.contains("truncated"), "{len}: {msg}");
                }
            }
            Ok(_) => panic!("{len} bytes parsed"),
        }
    }
    // Through the loader, with the file named.
    let cut = m.tmp.path().join("ggml-cut.bin");
    std::fs::write(&cut, &full[..full.len() - 100]).unwrap();
    let msg = load_err(&cut).to_string();
    println!("{msg}");
    assert!(
        msg.contains("ggml-cut.bin") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn fuzzed_ggml_files_never_panic() {
    let m = Models::new();
    let full = std::fs::read(m.ggml()).unwrap();
    let file = m.tmp.path().join("ggml-fuzz.bin");
    // The header (hyper-parameters, filterbank size), the vocabulary's start, and bytes all over
    // the tensors (their headers included), through the whole loader.
    let vocab_start = 4 + 44 + 8 + 80 * 201 * 4;
    let positions = (0..64)
        .chain(vocab_start..vocab_start + 64)
        .chain((vocab_start..full.len()).step_by(997));
    let mut refused = 0;
    let mut tried = 0;
    for pos in positions {
        for v in [0x00u8, 0xff, 0x7f, 0x80] {
            let mut b = full.clone();
            b[pos] = v;
            std::fs::write(&file, &b).unwrap();
            tried += 1;
            if WhisperModel::load(&file).is_err() {
                refused += 1;
            }
        }
    }
    println!("{refused} of {tried} fuzzed ggml files refused");
    assert!(refused > 0);
}

#[test]
fn foreign_and_mismatched_ggml_files() {
    let m = Models::new();
    let full = std::fs::read(m.ggml()).unwrap();
    let path = m.tmp.path().join("ggml-broken.bin");
    let hparam = |b: &mut Vec<u8>, i: usize, v: i32| {
        b[4 + 4 * i..8 + 4 * i].copy_from_slice(&v.to_le_bytes());
    };

    // n_audio_layer (hyper-parameter 4) says 3, the weights have 2.
    let mut b = full.clone();
    hparam(&mut b, 4, 3);
    std::fs::write(&path, &b).unwrap();
    let e = load_err(&path);
    println!("{e}");
    assert!(matches!(e, ModelError::Mismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("n_audio_layer is 3"), "{e}");

    // n_text_state differs from n_audio_state.
    let mut b = full.clone();
    hparam(&mut b, 6, 32);
    std::fs::write(&path, &b).unwrap();
    let e = load_err(&path);
    assert!(e.to_string().contains("n_text_state"), "{e}");

    // A quantized file of an old quantization version (ftype q8_0 + 1000 x 1).
    let q8 = m.tmp.path().join("ggml-q8.bin");
    convert::write_ggml(
        &m.tmp.path().join("ct2"),
        &q8,
        GgmlType::Q8_0,
        &synthetic::text_tokens(),
        &gstwhisperencnpu::mel::mel_filterbank(80, 16_000, 400),
    );
    WhisperModel::load(&q8).unwrap();
    let mut b = std::fs::read(&q8).unwrap();
    hparam(&mut b, 10, 1007);
    std::fs::write(&path, &b).unwrap();
    let e = load_err(&path);
    println!("{e}");
    assert!(e.to_string().contains("quantization version 1"), "{e}");

    // GGUF, and bytes that are no model at all, given as files.
    let mut gguf = b"GGUF".to_vec();
    gguf.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    let file = m.tmp.path().join("model.gguf");
    std::fs::write(&file, &gguf).unwrap();
    let e = load_err(&file);
    assert!(matches!(e, ModelError::UnknownFormat { .. }), "{e:?}");
    assert!(e.to_string().contains("GGUF") && e.to_string().contains("model.gguf"));
    let file = m.tmp.path().join("picture.png");
    std::fs::write(&file, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    let e = load_err(&file);
    println!("{e}");
    assert!(matches!(e, ModelError::UnknownFormat { .. }), "{e:?}");
    assert!(e.to_string().contains("picture.png"));
}

#[test]
fn broken_models_are_error_messages_on_the_bus() {
    let m = Models::new();
    let full = std::fs::read(m.ggml()).unwrap();
    let cut = m.tmp.path().join("ggml-cut-short.bin");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let mismatched = m.hf_copy("bus");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mismatched.join("config.json")).unwrap()).unwrap();
    config["encoder_layers"] = 7.into();
    std::fs::write(mismatched.join("config.json"), config.to_string()).unwrap();
    common::init_gst();
    for (model, expect) in [
        (cut.clone(), ["ggml-cut-short.bin", "truncated"]),
        (mismatched.clone(), ["config.json", "encoder_layers is 7"]),
    ] {
        let el = gst::ElementFactory::make("whisperencnpu")
            .property("model", model.to_str().unwrap())
            .build()
            .unwrap();
        let text = common::pause_error(&el);
        println!("{text}");
        for e in expect {
            assert!(text.contains(e), "{e:?} not in {text}");
        }
    }
}

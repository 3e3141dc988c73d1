//! The other model formats, written by the tests from the fetched CTranslate2 tiny.en
//! (tests/convert): Hugging Face safetensors (single file in float16, sharded in float32) and
//! whisper.cpp ggml (f16, q8_0) load to the same internal model, give the CTranslate2 encoder
//! output (to 1e-6 relative where the weights are the same, within the int8 bound for q8_0) and
//! transcribe jfk.wav word for word the same.
//!
//! Needs the models installed by scripts/fetch-models and ../shared; fails (never skips) without.
mod common;
mod convert;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gstwhisperencnpu::model::formats::{ggml_vocab, whisper_defaults};
use gstwhisperencnpu::model::tokenizer::Tokenizer;
use gstwhisperencnpu::model::{Encoder, Format, WhisperModel};
use gstwhisperencnpu::npu::{BackendChoice, CpuF32Engine, Precision};
use gstwhisperencnpu::transcribe::{TranscribeOptions, Transcriber};
use gstwhisperencnpu::window::EncoderOptions;
use ndarray::Array2;

use convert::{GgmlType, StDtype};

/// Encoder output of the same weights through another format: relative L2 error at most this.
const SAME_WEIGHTS_REL: f64 = 1e-6;
/// CTranslate2's own int8 encoder differs from its float32 one by 0.058 (tiny.en, jfk;
/// ../shared/golden/README.md): the bound a q8_0 model must stay within.
const INT8_REL_BOUND: f64 = 0.058;

fn tiny_en() -> PathBuf {
    common::model_dir("tiny.en")
}

fn load(path: &Path) -> (WhisperModel, f64) {
    let t = Instant::now();
    let m = WhisperModel::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m, t.elapsed().as_secs_f64() * 1e3)
}

fn encode(model: &WhisperModel) -> Array2<f32> {
    let mel = common::read_npy_2d("golden/mel_jfk.npy");
    let mut enc = Encoder::new(model, Arc::new(CpuF32Engine::new()), 0).unwrap();
    enc.forward(mel.view())
}

/// Relative L2 error and largest element difference relative to the reference's largest value.
fn errors(ours: &Array2<f32>, reference: &Array2<f32>) -> (f64, f64) {
    let l2 = common::relative_l2(ours.as_slice().unwrap(), reference.as_slice().unwrap());
    let max_ref = reference.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let max_diff = ours
        .iter()
        .zip(reference.iter())
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    (l2, max_diff / max_ref)
}

fn transcribe(model: &WhisperModel) -> String {
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision: Precision::F32,
        threads: 0,
    };
    let mut t = Transcriber::new(model, &enc, TranscribeOptions::default()).unwrap();
    let audio = common::wav_f32("audio/jfk.wav");
    let mut text = String::new();
    t.push_audio(&audio);
    while let Some(w) = t.next_window() {
        for s in w.segments {
            text.push_str(&s.text);
        }
    }
    for w in t.finish() {
        for s in w.segments {
            text.push_str(&s.text);
        }
    }
    common::words(&text)
}

/// Every tensor the CTranslate2 model has (floats) has the same values in `other`.
fn same_tensors(ct2: &WhisperModel, other: &WhisperModel) {
    let mut names: Vec<&str> = ct2.weights().names().collect();
    names.sort();
    let mut compared = 0;
    for name in names {
        let t = ct2.weights().info(name).unwrap();
        if !t.is_float() {
            continue;
        }
        let a = ct2.weights().to_f32_vec(name).unwrap();
        let b = other
            .weights()
            .to_f32_vec(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(a == b, "{name} differs");
        compared += 1;
    }
    assert!(compared > 50, "only {compared} tensors compared");
}

/// The text tokens of a model's tokenizer (ids below `<|endoftext|>`), as a ggml file keeps them.
fn text_tokens(model: &WhisperModel) -> Vec<Vec<u8>> {
    let tok = model.tokenizer().unwrap();
    (0..tok.eot())
        .map(|id| tok.token_bytes(id).to_vec())
        .collect()
}

#[test]
fn safetensors_single_float16_is_the_same_model() {
    let (ct2, ct2_ms) = load(&tiny_en());
    let tmp = tempfile::tempdir().unwrap();
    convert::write_hf(&tiny_en(), tmp.path(), StDtype::F16, 1);
    let (hf, ms) = load(tmp.path());
    println!("load: CTranslate2 {ct2_ms:.1} ms, safetensors {ms:.1} ms");
    assert_eq!(hf.format(), Format::HfSafetensors);
    assert_eq!(hf.dims(), ct2.dims());
    assert_eq!(hf.config(), ct2.config());
    same_tensors(&ct2, &hf);
    let (l2, max) = errors(&encode(&hf), &encode(&ct2));
    println!("safetensors f16 encoder vs CTranslate2: relative L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= SAME_WEIGHTS_REL && max <= SAME_WEIGHTS_REL);
    // The safetensors file itself also loads (its folder gives the JSON files).
    let (m, _) = load(&tmp.path().join("model.safetensors"));
    assert_eq!(m.dims(), ct2.dims());

    // Without generation_config.json (many fine-tunes): OpenAI's defaults for the shapes and the
    // tokenizer, which are what the CTranslate2 config says.
    std::fs::remove_file(tmp.path().join("generation_config.json")).unwrap();
    let (bare, _) = load(tmp.path());
    assert_eq!(bare.config().suppress_ids, ct2.config().suppress_ids);
    assert_eq!(
        bare.config().suppress_ids_begin,
        ct2.config().suppress_ids_begin
    );
    assert_eq!(bare.config().alignment_heads, ct2.config().alignment_heads);

    // Saved with the slow tokenizer (vocab.json, merges.txt, added_tokens.json; no
    // tokenizer.json): the same tokenizer.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("tokenizer.json")).unwrap()).unwrap();
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        tmp.path().join("vocab.json"),
        json["model"]["vocab"].to_string(),
    )
    .unwrap();
    let merges: Vec<&str> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    std::fs::write(
        tmp.path().join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
    let added: serde_json::Map<String, serde_json::Value> = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["content"].as_str().unwrap().to_string(), t["id"].clone()))
        .collect();
    std::fs::write(
        tmp.path().join("added_tokens.json"),
        serde_json::Value::Object(added).to_string(),
    )
    .unwrap();
    let (slow, _) = load(tmp.path());
    let (a, b) = (ct2.tokenizer().unwrap(), slow.tokenizer().unwrap());
    same_vocabulary(&a, &b);
    let text = " And so my fellow Americans, ask not what your country can do for you";
    assert_eq!(a.encode(text), b.encode(text));
}

#[test]
fn safetensors_sharded_float32_transcribes_jfk() {
    let (ct2, _) = load(&tiny_en());
    let tmp = tempfile::tempdir().unwrap();
    convert::write_hf(&tiny_en(), tmp.path(), StDtype::F32, 3);
    assert!(!tmp.path().join("model.safetensors").exists());
    let (hf, ms) = load(tmp.path());
    println!("sharded safetensors load: {ms:.1} ms");
    same_tensors(&ct2, &hf);
    let (l2, max) = errors(&encode(&hf), &encode(&ct2));
    println!(
        "safetensors f32 (3 shards) encoder vs CTranslate2: relative L2 {l2:.3e}, max {max:.3e}"
    );
    assert!(l2 <= SAME_WEIGHTS_REL && max <= SAME_WEIGHTS_REL);
    let (a, b) = (transcribe(&ct2), transcribe(&hf));
    println!("CTranslate2: {a}\nsafetensors: {b}");
    assert_eq!(a, common::JFK_WORDS);
    assert_eq!(b, a);
    // The index given as a file loads the same model.
    let (m, _) = load(&tmp.path().join("model.safetensors.index.json"));
    assert_eq!(m.dims(), ct2.dims());
}

#[test]
fn ggml_f16_is_the_same_model_and_transcribes_jfk() {
    let (ct2, _) = load(&tiny_en());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ggml-tiny.en.bin");
    let filters = gstwhisperencnpu::mel::mel_filterbank(80, 16_000, 400);
    convert::write_ggml(
        &tiny_en(),
        &path,
        GgmlType::F16,
        &text_tokens(&ct2),
        &filters,
    );
    let (g, ms) = load(&path);
    println!(
        "ggml f16 load: {ms:.1} ms ({} MB)",
        std::fs::metadata(&path).unwrap().len() >> 20
    );
    assert_eq!(g.format(), Format::Ggml);
    assert_eq!(g.dims(), ct2.dims());
    assert_eq!(g.mel_filters(), Some(&filters));
    // The weights were float16 in CTranslate2 too: the same values.
    same_tensors(&ct2, &g);
    let (l2, max) = errors(&encode(&g), &encode(&ct2));
    println!("ggml f16 encoder vs CTranslate2: relative L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= SAME_WEIGHTS_REL && max <= SAME_WEIGHTS_REL);

    // OpenAI's defaults for the shapes and vocabulary are what the CTranslate2 config says.
    assert_eq!(g.config().suppress_ids, ct2.config().suppress_ids);
    assert_eq!(
        g.config().suppress_ids_begin,
        ct2.config().suppress_ids_begin
    );
    assert_eq!(g.config().alignment_heads, ct2.config().alignment_heads);

    // The tokenizer rebuilt from the file's vocabulary is tokenizer.json's.
    let (a, b) = (ct2.tokenizer().unwrap(), g.tokenizer().unwrap());
    assert_eq!(a.special(), b.special());
    for text in [
        " And so my fellow Americans, ask not what your country can do for you",
        " l'été dernier, 12345 naïve coöperation — ça va? 東京",
    ] {
        assert_eq!(a.encode(text), b.encode(text), "{text}");
    }
    same_vocabulary(&a, &b);

    let (ta, tb) = (transcribe(&ct2), transcribe(&g));
    println!("ggml f16: {tb}");
    assert_eq!(tb, ta);
}

#[test]
fn ggml_q8_0_within_the_int8_bound() {
    let (ct2, _) = load(&tiny_en());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ggml-tiny.en-q8_0.bin");
    let filters = gstwhisperencnpu::mel::mel_filterbank(80, 16_000, 400);
    convert::write_ggml(
        &tiny_en(),
        &path,
        GgmlType::Q8_0,
        &text_tokens(&ct2),
        &filters,
    );
    let (g, ms) = load(&path);
    println!(
        "ggml q8_0 load: {ms:.1} ms ({} MB)",
        std::fs::metadata(&path).unwrap().len() >> 20
    );
    assert_eq!(g.dims(), ct2.dims());
    // Every value within its block's q8_0 bound (blocks are 32 values along a row, as stored).
    let mut quantized = 0;
    let mut worst = 0f64;
    for name in ct2.weights().names() {
        if !ct2.weights().info(name).unwrap().is_float() {
            continue;
        }
        let t = g.weights().info(name).unwrap();
        let a = ct2.weights().to_f32_vec(name).unwrap();
        let b = g.weights().to_f32_vec(name).unwrap();
        if t.stored_type() != gstwhisperencnpu::model::StoredType::Q8_0 {
            assert!(a == b, "{name} ({}) differs", t.stored_type());
            continue;
        }
        quantized += 1;
        for (ba, bb) in a.chunks(32).zip(b.chunks(32)) {
            let bound = convert::q8_0_bound(ba);
            for (x, y) in ba.iter().zip(bb) {
                let e = (x - y).abs();
                assert!(e <= bound, "{name}: {x} became {y}, bound {bound}");
                worst = worst.max((e / bound) as f64);
            }
        }
    }
    println!("{quantized} q8_0 tensors; worst error {worst:.3} of the bound");
    assert!(quantized >= 8 * 4, "only {quantized} quantized tensors");
    let (l2, max) = errors(&encode(&g), &encode(&ct2));
    println!("ggml q8_0 encoder vs CTranslate2: relative L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= INT8_REL_BOUND, "{l2}");
    let text = transcribe(&g);
    println!("ggml q8_0: {text}");
    assert_eq!(text, common::JFK_WORDS);
}

#[test]
fn ggml_vocabulary_of_the_multilingual_base() {
    // The whole vocabulary of base (multilingual: languages, <|endoftext|> at 50257) rebuilt
    // from its text tokens as a ggml file stores them matches tokenizer.json.
    let (base, _) = load(&common::model_dir("base"));
    let a = base.tokenizer().unwrap();
    let b = ggml_vocab::tokenizer(&text_tokens(&base), base.dims().n_vocab).unwrap();
    assert_eq!(a.special(), b.special());
    assert_eq!(a.languages(), b.languages());
    assert!(b.is_multilingual() && b.languages().len() == 99);
    for text in [" Ich bin ein Berliner.", " 我们 ask what you can do"] {
        assert_eq!(a.encode(text), b.encode(text), "{text}");
    }
    same_vocabulary(&a, &b);
    let defaults = whisper_defaults::config(base.dims(), &b);
    assert_eq!(defaults.suppress_ids, base.config().suppress_ids);
    assert_eq!(
        defaults.suppress_ids_begin,
        base.config().suppress_ids_begin
    );
    assert_eq!(defaults.alignment_heads, base.config().alignment_heads);
    // Its language tokens are the ones CTranslate2's config.json lists.
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::model_dir("base").join("config.json")).unwrap(),
    )
    .unwrap();
    let lang_ids: Vec<u64> = config["lang_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let languages: Vec<u64> = b.languages().iter().map(|&(_, id)| u64::from(id)).collect();
    assert_eq!(languages, lang_ids);
}

/// The same text tokens, special tokens and language tokens (Hebrew may be `iw` or `he`).
fn same_vocabulary(a: &Tokenizer, b: &Tokenizer) {
    assert_eq!(a.n_vocab(), b.n_vocab());
    for id in 0..a.eot() {
        assert_eq!(a.token_bytes(id), b.token_bytes(id), "token {id}");
    }
    assert_eq!(a.special(), b.special());
    let langs = |t: &Tokenizer| -> Vec<(String, u32)> {
        let sot = t.sot();
        (sot + 1..t.special().translate.unwrap_or(sot + 1))
            .map(|id| {
                let code = t.language_code(id).unwrap_or("?");
                (if code == "iw" { "he" } else { code }.to_string(), id)
            })
            .collect()
    };
    assert_eq!(langs(a), langs(b));
    assert_eq!(langs(a).len(), 99);
}

#[test]
fn base_as_safetensors_and_ggml_q8_0() {
    let base_dir = common::model_dir("base");
    let (ct2, _) = load(&base_dir);
    let reference = encode(&ct2);
    let tmp = tempfile::tempdir().unwrap();

    convert::write_hf(&base_dir, &tmp.path().join("hf"), StDtype::F16, 1);
    let (hf, ms) = load(&tmp.path().join("hf"));
    assert_eq!(hf.dims(), ct2.dims());
    assert_eq!(hf.config(), ct2.config());
    let (l2, max) = errors(&encode(&hf), &reference);
    println!("base safetensors f16 ({ms:.1} ms): relative L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= SAME_WEIGHTS_REL && max <= SAME_WEIGHTS_REL);

    let path = tmp.path().join("ggml-base-q8_0.bin");
    let filters = gstwhisperencnpu::mel::mel_filterbank(80, 16_000, 400);
    convert::write_ggml(
        &base_dir,
        &path,
        GgmlType::Q8_0,
        &text_tokens(&ct2),
        &filters,
    );
    let (g, ms) = load(&path);
    assert_eq!(g.dims(), ct2.dims());
    assert_eq!(g.config().suppress_ids, ct2.config().suppress_ids);
    assert_eq!(g.config().alignment_heads, ct2.config().alignment_heads);
    let (l2, max) = errors(&encode(&g), &reference);
    println!("base ggml q8_0 ({ms:.1} ms): relative L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= INT8_REL_BOUND, "{l2}");

    let want = transcribe(&ct2);
    assert_eq!(want, common::JFK_WORDS);
    for (name, m) in [("safetensors f16", &hf), ("ggml q8_0", &g)] {
        let got = transcribe(m);
        println!("base {name}: {got}");
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn ctranslate2_int8_weights_load() {
    // Models converted with --quantization int8 (faster-whisper's int8 downloads) used to be
    // refused; their rows are now dequantized on use.
    let (ct2, _) = load(&tiny_en());
    let tmp = tempfile::tempdir().unwrap();
    convert::write_ct2_int8(&tiny_en(), tmp.path());
    let (q, ms) = load(tmp.path());
    println!(
        "CTranslate2 int8 load: {ms:.1} ms ({} MB)",
        std::fs::metadata(tmp.path().join("model.bin"))
            .unwrap()
            .len()
            >> 20
    );
    assert_eq!(q.dims(), ct2.dims());
    let mut quantized = 0;
    for name in ct2.weights().names() {
        let t = q.weights().info(name).unwrap();
        if t.stored_type() != gstwhisperencnpu::model::StoredType::I8 || !t.is_float() {
            continue;
        }
        quantized += 1;
        let a = ct2.weights().to_f32_vec(name).unwrap();
        let b = q.weights().to_f32_vec(name).unwrap();
        let cols = t.shape[1];
        for (ra, rb) in a.chunks(cols).zip(b.chunks(cols)) {
            // Half a step of 127 / max |w|, and float32 rounding of the division.
            let amax = ra.iter().fold(0f32, |m, &x| m.max(x.abs()));
            let bound = amax / 127.0 * 0.5 * (1.0 + 1e-5) + 1e-12;
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() <= bound, "{name}: {x} became {y}");
            }
        }
    }
    assert!(quantized > 30, "{quantized}");
    let (l2, max) = errors(&encode(&q), &encode(&ct2));
    println!("CTranslate2 int8 weights, encoder vs float16: relative L2 {l2:.3e}, max {max:.3e}");
    assert!(l2 <= INT8_REL_BOUND, "{l2}");
    let text = transcribe(&q);
    println!("CTranslate2 int8: {text}");
    assert_eq!(text, common::JFK_WORDS);
}

#[test]
fn ggml_q5_and_q4_quantizations() {
    // ggml's reference quantizers (tests/convert) written by the test, dequantized here: every
    // value within its block's bound.
    let (ct2, _) = load(&tiny_en());
    let reference = encode(&ct2);
    let tmp = tempfile::tempdir().unwrap();
    let filters = gstwhisperencnpu::mel::mel_filterbank(80, 16_000, 400);
    for (ty, tag) in [
        (GgmlType::Q5_0, "q5_0"),
        (GgmlType::Q5_1, "q5_1"),
        (GgmlType::Q4_0, "q4_0"),
        (GgmlType::Q4_1, "q4_1"),
    ] {
        let path = tmp.path().join(format!("ggml-tiny.en-{tag}.bin"));
        convert::write_ggml(&tiny_en(), &path, ty, &text_tokens(&ct2), &filters);
        let (g, ms) = load(&path);
        let mut quantized = 0;
        let mut worst = 0f64;
        for name in ct2.weights().names() {
            if !ct2.weights().info(name).unwrap().is_float() {
                continue;
            }
            let t = g.weights().info(name).unwrap();
            if t.stored_type().name() != tag {
                continue;
            }
            quantized += 1;
            let a = ct2.weights().to_f32_vec(name).unwrap();
            let b = g.weights().to_f32_vec(name).unwrap();
            for (ba, bb) in a.chunks(32).zip(b.chunks(32)) {
                let bound = convert::q4_5_bound(ty, ba);
                for (x, y) in ba.iter().zip(bb) {
                    assert!(
                        (x - y).abs() <= bound,
                        "{tag} {name}: {x} became {y} (bound {bound})"
                    );
                    worst = worst.max(((x - y).abs() / bound) as f64);
                }
            }
        }
        assert!(quantized >= 32, "{tag}: {quantized}");
        let (l2, _) = errors(&encode(&g), &reference);
        let text = transcribe(&g);
        println!(
            "ggml {tag} ({ms:.0} ms, {} MB): worst {worst:.2} of the bound, encoder relative L2 \
             {l2:.3e}: {text}",
            std::fs::metadata(&path).unwrap().len() >> 20
        );
        // The words depend on how much the model suffers from 4 or 5 bits (tiny.en: about 1e-1
        // relative error at the encoder's output): reported, not checked; the first sentence
        // survives all of them.
        assert!(
            text.starts_with("and so my fellow americans ask not what your country can do"),
            "{tag}: {text}"
        );
    }
}

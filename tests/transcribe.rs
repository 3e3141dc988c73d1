//! Transcription with the real models (base, tiny.en): jfk.wav word for word, silence and noise give
//! nothing, the long-form clip gives every sentence once, in order, with plausible timestamps.
mod common;

use gstwhisperencnpu::model::WhisperModel;
use gstwhisperencnpu::npu::{BackendChoice, Precision};
use gstwhisperencnpu::transcribe::text::{normalize_english, read_wav, word_errors};
use gstwhisperencnpu::transcribe::{Segment, TranscribeOptions, Transcriber};
use gstwhisperencnpu::window::EncoderOptions;

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what \
                   you can do for your country.";

fn transcriber(model: &str, options: TranscribeOptions) -> Transcriber {
    transcriber_at(model, options, Precision::F32)
}

fn transcriber_at(model: &str, options: TranscribeOptions, precision: Precision) -> Transcriber {
    let model = WhisperModel::load(&common::model_dir(model)).unwrap();
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision,
        threads: 0,
    };
    Transcriber::new(&model, &enc, options).unwrap()
}

fn english() -> TranscribeOptions {
    TranscribeOptions {
        language: Some("en".into()),
        ..TranscribeOptions::default()
    }
}

fn wav(rel: &str) -> Vec<f32> {
    let bytes = std::fs::read(common::shared_file(rel)).unwrap();
    let (audio, rate) = read_wav(&bytes).unwrap();
    assert_eq!(rate, 16_000);
    audio
}

/// Pushes the audio in 0.3 s pieces as a stream brings it, decoding windows as they fill up, then
/// finishes the stream.
fn run(t: &mut Transcriber, audio: &[f32]) -> Vec<Segment> {
    let mut segments = Vec::new();
    for chunk in audio.chunks(4800) {
        t.push_audio(chunk);
        while let Some(w) = t.next_window() {
            segments.extend(w.segments);
        }
    }
    for w in t.finish() {
        segments.extend(w.segments);
    }
    segments
}

fn text(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| s.text.trim())
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_timestamps(segments: &[Segment], duration: f64) {
    let mut prev_end = 0.0;
    for s in segments {
        assert!(
            s.start >= prev_end - 1e-9 && s.end >= s.start && s.end <= duration + 1e-9,
            "segment [{:.2}, {:.2}] after {prev_end:.2} in {duration:.2} s: {segments:#?}",
            s.start,
            s.end
        );
        assert_eq!(s.start_sample as f64 / 16000.0, s.start);
        prev_end = s.end;
    }
}

fn check_jfk(model: &str, options: TranscribeOptions) {
    check_jfk_at(model, options, Precision::F32)
}

fn check_jfk_at(model: &str, options: TranscribeOptions, precision: Precision) {
    let mut t = transcriber_at(model, options, precision);
    let audio = wav("audio/jfk.wav");
    let segments = run(&mut t, &audio);
    let got = text(&segments);
    eprintln!("{model}: {got:?}");
    assert_eq!(
        normalize_english(&got),
        normalize_english(JFK),
        "{model}: {got:?}"
    );
    check_timestamps(&segments, audio.len() as f64 / 16000.0);
    assert!(segments
        .iter()
        .all(|s| s.avg_logprob > -1.0 && !s.text.trim().is_empty()));
}

#[test]
fn jfk_base() {
    check_jfk("base", english());
}

#[test]
fn jfk_tiny_en() {
    check_jfk("tiny.en", TranscribeOptions::default());
}

/// Issue 3: the int8 encoder leaves jfk's transcript unchanged.
#[test]
fn jfk_int8_encoder() {
    check_jfk_at("base", english(), Precision::Int8);
    check_jfk_at("tiny.en", TranscribeOptions::default(), Precision::Int8);
}

#[test]
fn jfk_base_beam_search() {
    check_jfk(
        "base",
        TranscribeOptions {
            beam_size: 5,
            ..english()
        },
    );
}

#[test]
fn jfk_base_detects_english() {
    let mut t = transcriber("base", TranscribeOptions::default());
    let segments = run(&mut t, &wav("audio/jfk.wav"));
    assert_eq!(t.language(), Some("en"));
    assert!(segments.iter().all(|s| s.language.as_deref() == Some("en")));
    assert_eq!(normalize_english(&text(&segments)), normalize_english(JFK));
}

#[test]
fn jfk_without_prompt_and_reused_after_reset() {
    let mut t = transcriber(
        "tiny.en",
        TranscribeOptions {
            use_prompt: false,
            ..TranscribeOptions::default()
        },
    );
    let audio = wav("audio/jfk.wav");
    let first = text(&run(&mut t, &audio));
    // A second stream starting at sample 160000 (10 s): same words, shifted timestamps.
    t.reset(160_000);
    let segments = run(&mut t, &audio);
    assert_eq!(text(&segments), first);
    assert!(segments[0].start >= 10.0);
    assert_eq!(normalize_english(&first), normalize_english(JFK));
}

#[test]
fn silence_gives_nothing() {
    for model in ["base", "tiny.en"] {
        let mut t = transcriber(model, TranscribeOptions::default());
        let segments = run(&mut t, &vec![0.0; 30 * 16000]);
        assert!(segments.is_empty(), "{model}: {segments:#?}");
    }
}

#[test]
fn white_noise_gives_nothing() {
    let noise = common::white_noise(30);
    for model in ["base", "tiny.en"] {
        let mut t = transcriber(model, english());
        let segments = run(&mut t, &noise);
        assert!(segments.is_empty(), "{model}: {segments:#?}");
    }
}

#[test]
fn long_form_every_sentence_once_in_order() {
    let manifest = std::fs::read_to_string(common::shared_file("audio/eval/manifest.tsv")).unwrap();
    let reference = manifest
        .lines()
        .find_map(|l| l.strip_prefix("long-form-mixed.wav\t"))
        .expect("long-form clip in the manifest");
    let audio = wav("audio/eval/long-form-mixed.wav");
    let duration = audio.len() as f64 / 16000.0;
    let mut t = transcriber("base", english());
    let segments = run(&mut t, &audio);
    for s in &segments {
        eprintln!("[{:6.2} {:6.2}] {}", s.start, s.end, s.text.trim());
    }
    check_timestamps(&segments, duration);

    let r = normalize_english(reference);
    let h = normalize_english(&text(&segments));
    let wer = word_errors(&r, &h) as f64 / r.len() as f64;
    assert!(wer < 0.2, "WER {wer:.3}");
    // Nothing said twice: no 4 words in a row appear more often than in the reference.
    let count = |words: &[String], gram: &[String]| words.windows(4).filter(|w| *w == gram).count();
    for gram in h.windows(4) {
        assert!(
            count(&h, gram) <= count(&r, gram).max(1),
            "{gram:?} repeated: {}",
            h.join(" ")
        );
    }
    // Every sentence in order: its words are found, mostly, after those of the previous one.
    let mut from = 0;
    for sentence in reference.split_inclusive(['.', '?', '!']) {
        let words = normalize_english(sentence);
        if words.is_empty() {
            continue;
        }
        // The best-matching stretch of the hypothesis after `from`, about as long as the sentence.
        let n = words.len();
        let best = (from..h.len().max(from + 1))
            .flat_map(|i| (n.saturating_sub(2)..=n + 2).map(move |len| (i, len)))
            .map(|(i, len)| {
                let stretch = &h[i.min(h.len())..(i + len).min(h.len())];
                (word_errors(&words, stretch), i)
            })
            .min()
            .expect("a stretch");
        // Most of its words are there (the model mishears some of the synthetic voices).
        assert!(
            best.0 * 5 <= n * 3,
            "sentence {sentence:?} not found after word {from}: {}",
            h.join(" ")
        );
        from = best.1 + n / 2;
    }
}

#[test]
fn tokenizers_of_both_vocabularies() {
    use gstwhisperencnpu::model::tokenizer::Tokenizer;
    // " And so my" is 400 370 452 in the multilingual vocabulary, 843 523 616 in GPT-2's.
    for (model, eot, ts0, langs, and_so_my) in [
        ("base", 50257, 50364, 99, [400, 370, 452]),
        ("tiny.en", 50256, 50363, 0, [843, 523, 616]),
    ] {
        let dir = common::model_dir(model);
        let m = WhisperModel::load(&dir).unwrap();
        let t = Tokenizer::load(&dir.join("tokenizer.json"), m.dims().n_vocab).unwrap();
        assert_eq!(t.eot(), eot, "{model}");
        assert_eq!(t.sot(), eot + 1, "{model}");
        assert_eq!(t.timestamp_begin(), ts0, "{model}");
        assert_eq!(t.languages().len(), langs, "{model}");
        assert_eq!(t.is_multilingual(), langs > 0);
        assert_eq!(t.timestamp_seconds(ts0 + 512), Some(10.24));
        let ids =
            t.encode(" And so my fellow Americans, ask not what your country can do for you.");
        assert_eq!(ids[..3], and_so_my, "{model}: {ids:?}");
        assert_eq!(
            t.decode(&ids),
            " And so my fellow Americans, ask not what your country can do for you."
        );
        // Non-ASCII text survives the byte-level round trip, and half a character is lossy.
        let ids = t.encode(" Grüße, ça va? 日本語");
        assert_eq!(t.decode(&ids), " Grüße, ça va? 日本語");
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| t.token_bytes(i).to_vec())
            .collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), " Grüße, ça va? 日本語");
    }
}

#[test]
fn decoder_cache_batch_and_full_sequence_agree() {
    use gstwhisperencnpu::model::decoder::Decoder;
    use gstwhisperencnpu::model::tokenizer::Tokenizer;
    use gstwhisperencnpu::npu::CpuF32Engine;
    let dir = common::model_dir("tiny.en");
    let model = WhisperModel::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir.join("tokenizer.json"), model.dims().n_vocab).unwrap();
    let dec = Decoder::new(&model, std::sync::Arc::new(CpuF32Engine::new()), 0).unwrap();
    let enc = common::read_npy_2d("golden/enc_tiny.en_jfk.npy");
    let cross = dec.cross_kv(enc.view());
    let mut tokens = vec![tok.sot(), tok.timestamp_begin()];
    tokens.extend(tok.encode(" And so my"));

    // The whole sequence at once.
    let mut full = dec.new_cache();
    let h = dec.forward(&mut full, &cross, &tokens, tokens.len());
    let logits_full = dec.logits(h.view());
    // After <|startoftranscript|><|0.00|> the model says " And" (the reference transcript).
    let row = logits_full.row(1);
    let best = (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap();
    assert_eq!(tok.decode(&[best as u32]), " And");

    // Token by token through the cache, then as a batch of three copies.
    let mut inc = dec.new_cache();
    dec.forward(&mut inc, &cross, &tokens[..2], 2);
    let mut batch = inc.clone();
    for (i, &t) in tokens.iter().enumerate().skip(2) {
        let h = dec.forward(&mut inc, &cross, &[t], 1);
        let l = dec.logits(h.view());
        let diff = (&l.row(0) - &logits_full.row(i))
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(diff < 2e-3, "token {i}: max logit difference {diff}");
    }
    batch.repeat(3);
    batch.reorder(&[2, 0, 1]);
    let h = dec.forward(&mut batch, &cross, &[tokens[2]; 3], 1);
    let l = dec.logits(h.view());
    for b in 0..3 {
        let diff = (&l.row(b) - &logits_full.row(2))
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(diff < 2e-3, "batch row {b}: max logit difference {diff}");
    }
}

/// Word alignment runs the decoder only up to the layer of the last head it reads: the scores
/// are bit for bit those of a pass through every layer (asked for with a head the model does not
/// have, which makes it run them all).
#[test]
fn alignment_scores_need_no_later_layer() {
    use gstwhisperencnpu::model::decoder::Decoder;
    use gstwhisperencnpu::model::tokenizer::Tokenizer;
    use gstwhisperencnpu::npu::CpuF32Engine;
    let dir = common::model_dir("tiny.en");
    let model = WhisperModel::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir.join("tokenizer.json"), model.dims().n_vocab).unwrap();
    let dec = Decoder::new(&model, std::sync::Arc::new(CpuF32Engine::new()), 0).unwrap();
    let layers = model.dims().n_decoder_layers;
    let cross = dec.cross_kv(common::read_npy_2d("golden/enc_tiny.en_jfk.npy").view());
    let mut tokens = vec![tok.sot(), tok.special().no_timestamps];
    tokens.extend(tok.encode(" And so my fellow Americans"));
    tokens.push(tok.eot());
    for (name, heads) in [
        (
            "the model's alignment heads",
            model.config().alignment_heads.clone(),
        ),
        ("heads of the second layer", vec![(1, 0), (1, 3)]),
        ("one head of the first layer", vec![(0, 2)]),
    ] {
        let mut all_layers = heads.clone();
        all_layers.push((layers, 0));
        let short = dec.cross_attention_scores(&cross, &tokens, &heads);
        let full = dec.cross_attention_scores(&cross, &tokens, &all_layers);
        assert!(
            full[heads.len()].is_empty(),
            "{name}: a head the model lacks has scores"
        );
        for (i, (a, b)) in short.iter().zip(&full).enumerate() {
            assert_eq!(
                a.dim(),
                (tokens.len(), cross.positions()),
                "{name}: head {i}"
            );
            assert!(a == b, "{name}: head {i} ({:?}) differs", heads[i]);
        }
    }
}

#[test]
fn transcriber_can_move_to_a_streaming_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Transcriber>();
    assert_send::<gstwhisperencnpu::transcribe::WindowResult>();
}

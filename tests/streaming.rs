//! The streaming (low-latency) transcriber with the real base model: jfk.wav pushed in 20 ms
//! pieces gives the sentence once, word times in order and inside the speech; 30 s of silence and
//! of noise give no text, committed or interim; the noise after a sentence gets no invented word;
//! checking the last step's words as a draft changes nothing of what is said.
mod common;

use gstwhisperencnpu::model::WhisperModel;
use gstwhisperencnpu::npu::{BackendChoice, Precision};
use gstwhisperencnpu::transcribe::streaming::{StepResult, StreamOptions, StreamingTranscriber};
use gstwhisperencnpu::transcribe::text::{normalize_english, read_wav};
use gstwhisperencnpu::transcribe::{TranscribeOptions, Transcriber};
use gstwhisperencnpu::window::EncoderOptions;

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what \
                   you can do for your country.";
/// 20 ms at 16 kHz: what a live source brings at a time.
const PIECE: usize = 320;

fn streaming(model: &str) -> StreamingTranscriber {
    streaming_with(model, StreamOptions::default())
}

fn streaming_with(model: &str, stream: StreamOptions) -> StreamingTranscriber {
    let model = WhisperModel::load(&common::model_dir(model)).unwrap();
    let enc = EncoderOptions {
        backend: BackendChoice::Cpu,
        precision: Precision::F32,
        threads: 0,
    };
    let options = TranscribeOptions {
        language: Some("en".into()),
        ..TranscribeOptions::default()
    };
    let core = Transcriber::new(&model, &enc, options).unwrap();
    StreamingTranscriber::new(core, stream)
}

/// Pushes `audio` in 20 ms pieces, steps whenever a step is due, then finishes the stream.
fn run(st: &mut StreamingTranscriber, audio: &[f32]) -> Vec<StepResult> {
    run_lagging(st, audio, 0)
}

/// As [`run`], with `lag` samples arriving while each step computes (a loaded machine's timing:
/// steps then see the live edge later, as in `examples/stream_delay --processing`).
fn run_lagging(st: &mut StreamingTranscriber, audio: &[f32], lag: usize) -> Vec<StepResult> {
    let mut steps = Vec::new();
    let mut at = 0;
    while at < audio.len() {
        let end = (at + PIECE).min(audio.len());
        st.push_audio(&audio[at..end]);
        at = end;
        if st.wants_step() {
            steps.push(st.step());
            let end = (at + lag).min(audio.len());
            st.push_audio(&audio[at..end]);
            at = end;
        }
    }
    steps.push(st.finish());
    steps
}

fn wav(rel: &str) -> Vec<f32> {
    let (audio, rate) = read_wav(&std::fs::read(common::shared_file(rel)).unwrap()).unwrap();
    assert_eq!(rate, 16_000);
    audio
}

/// First and last sample of the 20 ms frames louder than -40 dBFS.
fn speech_span(audio: &[f32]) -> (u64, u64) {
    let loud: Vec<usize> = audio
        .chunks(PIECE)
        .enumerate()
        .filter(|(_, c)| {
            let ms = c.iter().map(|&x| x * x).sum::<f32>() / c.len() as f32;
            10.0 * ms.max(1e-12).log10() > -40.0
        })
        .map(|(i, _)| i)
        .collect();
    let (a, b) = (loud[0], loud[loud.len() - 1]);
    ((a * PIECE) as u64, ((b + 1) * PIECE) as u64)
}

#[test]
fn jfk_once_with_word_times_in_the_speech() {
    let mut st = streaming("base");
    let audio = wav("audio/jfk.wav");
    let steps = run(&mut st, &audio);
    let words: Vec<_> = steps.iter().flat_map(|s| s.committed.clone()).collect();
    let text: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    let text = text.join(" ");
    assert_eq!(
        normalize_english(&text),
        normalize_english(JFK),
        "committed words: {text:?}"
    );
    // The closed segments say the same, once.
    let segments: Vec<String> = steps
        .iter()
        .flat_map(|s| s.closed.iter().map(|c| c.text.clone()))
        .collect();
    assert_eq!(
        normalize_english(&segments.join(" ")),
        normalize_english(JFK),
        "segments: {segments:?}"
    );
    let (first, last) = speech_span(&audio);
    // The aligned times may reach a little past the loud frames (soft onsets, trailing sounds).
    let slack = 8000;
    let mut prev_end = 0;
    for w in &words {
        assert!(
            w.start_sample >= prev_end && w.end_sample >= w.start_sample,
            "word {:?} at {}-{} after {prev_end}",
            w.text,
            w.start_sample,
            w.end_sample
        );
        assert!(
            w.start_sample + slack >= first && w.end_sample <= last + slack,
            "word {:?} at {}-{} outside the speech {first}-{last}",
            w.text,
            w.start_sample,
            w.end_sample
        );
        prev_end = w.end_sample;
    }
    // Nothing is left uncommitted at the end, and a step's partial never repeats committed text.
    assert!(
        steps.last().unwrap().partial.is_none(),
        "partial after finish"
    );
    for s in &steps {
        assert!(s.settled <= s.live_edge, "settled past the live edge");
    }
}

#[test]
fn silence_and_noise_give_no_text() {
    let mut st = streaming("base");
    let noise = common::white_noise(30);
    for (name, audio) in [("silence", vec![0.0f32; 30 * 16000]), ("noise", noise)] {
        st.reset(0);
        let steps = run(&mut st, &audio);
        for (i, s) in steps.iter().enumerate() {
            assert!(
                s.committed.is_empty() && s.closed.is_empty() && s.partial.is_none(),
                "{name}: step {i} gave text: {s:?}"
            );
        }
        assert_eq!(
            steps.last().unwrap().settled,
            audio.len() as u64,
            "{name}: all of it settled at the end"
        );
    }
}

/// `eval/long-form-mixed.wav` opens with jfk.wav, whose last word is followed by a second of
/// crowd noise, then "Rice is often served in round bowls." (espeak). With the forced prefix the
/// decoder rightly says nothing over the noise; decoded again from a window of the noise alone it
/// invented "Great." and "Right.", and both were committed. The words after the sentence must be
/// the next sentence's.
#[test]
fn the_noise_after_a_sentence_gets_no_invented_words() {
    let mut st = streaming("base");
    let audio = wav("audio/eval/long-form-mixed.wav");
    let lag = 16_000 * 3 / 10;
    let steps = run_lagging(&mut st, &audio[..16 * 16_000], lag);
    let text: Vec<String> = steps
        .iter()
        .flat_map(|s| s.committed.iter().map(|w| w.text.clone()))
        .collect();
    let words = normalize_english(&text.join(" "));
    let jfk = normalize_english(JFK);
    assert!(
        words.starts_with(&jfk),
        "committed words do not start with the sentence: {words:?}"
    );
    let next = words.get(jfk.len()).map_or("", String::as_str);
    assert!(
        next.starts_with("ri"),
        "the word after the sentence is {next:?}, not the next sentence's \"Rice\": {words:?}"
    );
}

/// The draft (the last step's uncommitted words, checked in the pass that reads the prefix) only
/// saves token-by-token passes: every step commits the same words at the same times, with the
/// same interim text, as decoding token by token. Over jfk's sentence, the noise after it and the
/// next sentences (the first 30 s of long-form-mixed, 0.3 s arriving during each step).
#[test]
fn a_draft_changes_no_token() {
    let audio = wav("audio/eval/long-form-mixed.wav");
    let audio = &audio[..30 * 16_000];
    let lag = 16_000 * 3 / 10;
    let with = run_lagging(&mut streaming("base"), audio, lag);
    let without = run_lagging(
        &mut streaming_with(
            "base",
            StreamOptions {
                draft: false,
                ..StreamOptions::default()
            },
        ),
        audio,
        lag,
    );
    assert_eq!(with.len(), without.len(), "steps");
    let committed: usize = with.iter().map(|s| s.committed.len()).sum();
    assert!(committed > 40, "only {committed} words committed");
    for (i, (a, b)) in with.iter().zip(&without).enumerate() {
        let at = a.live_edge as f64 / 16_000.0;
        assert_eq!(
            a.committed, b.committed,
            "step {i} (live edge {at:.2} s): committed words"
        );
        assert_eq!(
            a.partial, b.partial,
            "step {i} (live edge {at:.2} s): interim text"
        );
    }
}

//! Two minutes of speech with pauses through the element in transcription mode, in each latency
//! mode: every sentence once, in order, and the text where the speech is.

mod common;

use gst_check::Harness;

use common::{f32_buffer, init_gst, model_dir, shared_file, wav_f32, word_errors, words};

const RATE: usize = 16_000;

/// Where each clip's speech starts in the concatenation (first 10 ms frame above -40 dBFS).
fn onset(clip: &[f32]) -> usize {
    clip.chunks(160)
        .position(|f| f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32 > 1e-4)
        .unwrap_or(0)
        * 160
}

/// Where each clip's speech ends (after the last 10 ms frame above -40 dBFS).
fn offset(clip: &[f32]) -> usize {
    clip.chunks(160)
        .rposition(|f| f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32 > 1e-4)
        .map_or(clip.len(), |i| (i + 1) * 160)
}

/// Two minutes: jfk and the five espeak clips with 9 s pauses, through the element (base).
/// Returns the clips' (speech onset, end) in seconds, where their speech ends, the reference text
/// and the segments.
/// Run once per latency mode for both tests (half a minute of decoding each).
#[allow(clippy::type_complexity)]
fn transcribe_two_minutes(
    latency_mode: &str,
) -> &'static (Vec<(f64, f64)>, Vec<f64>, String, Vec<(f64, f64, String)>) {
    type Run = (Vec<(f64, f64)>, Vec<f64>, String, Vec<(f64, f64, String)>);
    static FULL: std::sync::OnceLock<Run> = std::sync::OnceLock::new();
    static LOW: std::sync::OnceLock<Run> = std::sync::OnceLock::new();
    match latency_mode {
        "full" => FULL.get_or_init(|| run_two_minutes("full")),
        "low" => LOW.get_or_init(|| run_two_minutes("low")),
        other => panic!("no latency mode {other}"),
    }
}

/// The modes every test here runs in.
const LATENCY_MODES: [&str; 2] = ["full", "low"];

#[allow(clippy::type_complexity)]
fn run_two_minutes(
    latency_mode: &str,
) -> (Vec<(f64, f64)>, Vec<f64>, String, Vec<(f64, f64, String)>) {
    init_gst();
    let manifest = std::fs::read_to_string(shared_file("audio/eval/manifest.tsv")).unwrap();
    let clips: Vec<(String, String)> = manifest
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .filter(|(f, _)| !f.contains("noisy") && !f.contains("long-form"))
        .map(|(f, r)| (format!("audio/eval/{f}"), r.to_string()))
        .collect();
    assert_eq!(clips.len(), 6, "jfk and the five espeak clips");

    // Clips with pauses long enough to reach two minutes; the pauses are silence.
    let pause = 9 * RATE;
    let mut audio = Vec::new();
    let mut spans = Vec::new(); // (speech onset, clip end) in seconds
    let mut speech_ends = Vec::new();
    let mut reference = String::new();
    for (file, text) in &clips {
        let clip = wav_f32(file);
        let start = audio.len();
        spans.push((
            (start + onset(&clip)) as f64 / RATE as f64,
            (start + clip.len()) as f64 / RATE as f64,
        ));
        speech_ends.push((start + offset(&clip)) as f64 / RATE as f64);
        audio.extend_from_slice(&clip);
        audio.resize(audio.len() + pause, 0.0);
        reference.push_str(text);
        reference.push(' ');
    }
    assert!(audio.len() >= 120 * RATE, "{} s", audio.len() / RATE);

    let el = gst::ElementFactory::make("whisperencnpu")
        .property("model", model_dir("base").to_str().unwrap())
        .property_from_str("mode", "transcription")
        .property_from_str("latency-mode", latency_mode)
        .property("language", "en")
        .build()
        .unwrap();
    let mut h = Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps_str("audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved");
    h.play();
    for (i, chunk) in audio.chunks(RATE).enumerate() {
        h.push(f32_buffer(chunk, gst::ClockTime::from_seconds(i as u64)))
            .unwrap();
    }
    h.push_event(gst::event::Eos::new());
    let mut segments = Vec::new();
    while let Ok(Some(b)) = h.pull_until_eos() {
        let text = String::from_utf8(b.map_readable().unwrap().to_vec()).unwrap();
        let start = b.pts().unwrap().nseconds() as f64 / 1e9;
        let end = start + b.duration().unwrap().nseconds() as f64 / 1e9;
        println!("{latency_mode}: [{start:7.2} - {end:7.2}] {text}");
        segments.push((start, end, text));
    }

    (spans, speech_ends, reference, segments)
}

#[test]
fn two_minutes_of_speech_every_sentence_once_in_order() {
    for mode in LATENCY_MODES {
        every_sentence_once_in_order(mode);
    }
}

fn every_sentence_once_in_order(mode: &str) {
    let (spans, _, reference, segments) = transcribe_two_minutes(mode);
    // Every sentence once, in order: the words of the whole, aligned, with few errors and no
    // repeated stretch (a repetition would add words).
    let hyp_text = words(
        &segments
            .iter()
            .map(|s| s.2.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let ref_text = words(reference);
    let hyp: Vec<&str> = hyp_text.split(' ').collect();
    let refw: Vec<&str> = ref_text.split(' ').collect();
    let wer = word_errors(&refw, &hyp) as f64 / refw.len() as f64;
    println!(
        "{mode}: WER {wer:.3} ({} reference words, {} said)",
        refw.len(),
        hyp.len()
    );
    // espeak's voices are hard for base: faster-whisper's WER on these clips alone is 0 to 0.21
    // (../shared/audio/README.md), and here nothing gives context across the 9 s pauses.
    assert!(wer <= 0.25, "{mode}: WER {wer}");
    assert!(
        hyp.len() <= refw.len() + refw.len() / 20,
        "{mode}: too many words: something said twice"
    );

    // No text in the pauses.
    for (start, end, text) in segments {
        let inside = spans
            .iter()
            .any(|&(s, e)| *start >= s - 0.5 && *end <= e + 0.5);
        assert!(
            inside,
            "{mode}: text [{start:.2}, {end:.2}] {text:?} is not where speech is"
        );
    }
}

/// Issue 5 asks for segment times within 0.5 s of the words. Whisper's timestamp tokens ran up
/// to ~0.7 s late after a pause here; segment times now come from the words (cross-attention
/// alignment), and a window that ends in the first words after a pause is not skipped past them.
/// Checked where the truth is known: each clip's first segment starts with its speech, its last
/// one ends with it.
#[test]
fn two_minutes_of_speech_segments_start_and_end_with_the_speech() {
    for mode in LATENCY_MODES {
        text_starts_and_ends_with_the_speech(mode);
    }
}

fn text_starts_and_ends_with_the_speech(mode: &str) {
    let (spans, speech_ends, _, segments) = transcribe_two_minutes(mode);
    for (&(speech, clip_end), &speech_end) in spans.iter().zip(speech_ends) {
        let clip: Vec<&(f64, f64, String)> = segments
            .iter()
            .filter(|(s, _, _)| *s >= speech - 0.5 && *s < clip_end)
            .collect();
        let (first, last) = (clip.first(), clip.last());
        let (Some(first), Some(last)) = (first, last) else {
            panic!("{mode}: no text for the clip at {speech:.2} s");
        };
        assert!(
            (first.0 - speech).abs() <= 0.5,
            "{mode}: clip speech at {speech:.2} s, its first text at {:.2} s",
            first.0
        );
        assert!(
            (last.1 - speech_end).abs() <= 0.5,
            "{mode}: clip speech ends at {speech_end:.2} s, its last text at {:.2} s",
            last.1
        );
    }
}

//! The element in transcription mode, driven as users and transcriberbin drive it: whole windows
//! (`latency-mode=full`; the harness answers the latency query as a live source, so `auto` would
//! pick the low-latency mode, tested in element_low_latency.rs).

mod common;

use gst::prelude::*;
use gst_check::Harness;

use common::{
    f32_buffer, init_gst as init, jfk_samples, model_dir, pause_error, run_text_harness,
    white_noise, words, TextOutput, JFK_WORDS,
};

const F32_CAPS: &str = "audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved";

fn transcriber(model: &str) -> gst::Element {
    init();
    gst::ElementFactory::make("whisperencnpu")
        .property("model", model_dir(model).to_str().unwrap())
        .property_from_str("mode", "transcription")
        .property_from_str("latency-mode", "full")
        .property("language", "en")
        .build()
        .unwrap()
}

fn run(model: &str, audio: &[f32]) -> TextOutput {
    run_element(&transcriber(model), audio)
}

/// `audio` in 1 s buffers, then EOS.
fn run_element(el: &gst::Element, audio: &[f32]) -> TextOutput {
    run_text_harness(el, audio, 16_000, None)
}

#[test]
fn jfk_is_transcribed_once_with_timestamps() {
    let jfk: Vec<f32> = jfk_samples().iter().map(|&s| s as f32 / 32768.0).collect();
    let out = run("tiny.en", &jfk);
    let caps = out.caps.expect("caps");
    assert_eq!(caps.structure(0).unwrap().name(), "text/x-raw");
    let all: Vec<_> = out.texts.iter().map(|(_, _, t)| t.as_str()).collect();
    println!("{all:?}");
    assert_eq!(words(&all.join(" ")), JFK_WORDS);
    // In order, inside the 11 s of audio, one final-transcript event and one message per segment.
    let mut last_end = gst::ClockTime::ZERO;
    for (pts, duration, _) in &out.texts {
        assert!(*pts >= last_end, "segments overlap");
        last_end = *pts + *duration;
    }
    assert!(
        last_end <= gst::ClockTime::from_mseconds(11_100),
        "{last_end}"
    );
    assert_eq!(out.finals, out.texts.len());
    assert_eq!(out.segments.len(), out.texts.len());
    for (s, (pts, _, text)) in out.segments.iter().zip(&out.texts) {
        assert_eq!(s.get::<&str>("text").unwrap(), text);
        assert_eq!(s.get::<gst::ClockTime>("start").unwrap(), *pts);
        assert_eq!(s.get::<&str>("language").unwrap(), "en");
        assert!(s.get::<f64>("avg-logprob").unwrap() < 0.0);
    }
}

#[test]
fn silence_gives_no_text_but_gaps() {
    let out = run("tiny.en", &vec![0.0; 30 * 16_000]);
    assert!(out.texts.is_empty(), "{:?}", out.texts);
    // Downstream's time still moves: the gaps cover the stream.
    let covered: u64 = out.gaps.iter().map(|(_, d)| d.nseconds()).sum();
    assert!(covered >= 29_000_000_000, "gaps cover only {covered} ns");
}

#[test]
fn noise_gives_no_text() {
    let noise = white_noise(30);
    let out = run("tiny.en", &noise);
    assert!(out.texts.is_empty(), "{:?}", out.texts);
}

/// transcriberbin sets `latency` and `language-code`, links a live fakesrc, goes to PAUSED and
/// queries the latency before any data flows. `latency-mode` is left at `auto`: on a live source
/// that is the low-latency mode, and `latency` bounds a step's processing.
#[test]
fn latency_query_as_transcriberbin_asks_it() {
    let el = transcriber("tiny.en");
    el.set_property_from_str("latency-mode", "auto");
    el.set_property("latency", 4000u32);
    el.set_property("language-code", "en-US");
    assert_eq!(
        el.property::<Option<String>>("language").as_deref(),
        Some("en")
    );
    let src = gst::ElementFactory::make("fakesrc")
        .property("is-live", true)
        .build()
        .unwrap();
    let pipeline = gst::Pipeline::new();
    pipeline.add_many([&src, &el]).unwrap();
    src.link(&el).unwrap();
    el.set_state(gst::State::Paused).unwrap();
    src.set_state(gst::State::Paused).unwrap();
    let mut q = gst::query::Latency::new();
    assert!(el.static_pad("src").unwrap().query(&mut q));
    let (live, min, _) = q.result();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(live);
    // What the commit policy promises, with the processing time the property allows.
    let bound = gstwhisperencnpu::transcribe::streaming::StreamOptions::default()
        .delay_bound(std::time::Duration::from_millis(4_000));
    assert_eq!(min, gst::ClockTime::from_nseconds(bound.as_nanos() as u64));
}

/// Settings the model cannot honour fail the state change with a message saying which.
#[test]
fn unknown_language_and_impossible_task_are_error_messages() {
    let el = transcriber("base");
    el.set_property("language", "xx");
    let text = pause_error(&el);
    assert!(text.contains("\"xx\""), "{text}");

    let el = transcriber("tiny.en");
    el.set_property_from_str("task", "translate");
    let text = pause_error(&el);
    assert!(text.contains("cannot translate"), "{text}");
}

/// Every segment message carries its words, each inside the segment, in order, spelling the
/// segment's text; and a word is where the speech is: none lies inside one of jfk's pauses.
#[test]
fn segment_messages_carry_word_times_on_the_speech() {
    let jfk: Vec<f32> = jfk_samples().iter().map(|&s| s as f32 / 32768.0).collect();
    let out = run("base", &jfk);
    // jfk's pauses: 20 ms frames 30 dB below the loudest, in runs of 0.3 s or more.
    let frame_db: Vec<f32> = jfk
        .chunks(320)
        .map(|c| {
            10.0 * (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32)
                .max(1e-12)
                .log10()
        })
        .collect();
    let loudest = frame_db.iter().cloned().fold(f32::MIN, f32::max);
    let mut pauses = Vec::new(); // seconds
    let mut run_start = None;
    for (i, &db) in frame_db.iter().chain([f32::MAX].iter()).enumerate() {
        match (db < loudest - 30.0, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(a)) => {
                if i - a >= 15 {
                    pauses.push((a as f64 * 0.02, i as f64 * 0.02));
                }
                run_start = None;
            }
            _ => {}
        }
    }
    println!("pauses {pauses:?}");
    let inner: Vec<_> = pauses
        .iter()
        .filter(|&&(a, b)| a > 0.5 && b < jfk.len() as f64 / 16000.0 - 0.5)
        .collect();
    assert!(!inner.is_empty(), "jfk has pauses between its phrases");

    let mut all_words = Vec::new();
    for s in &out.segments {
        let start = s.get::<gst::ClockTime>("start").unwrap();
        let end = s.get::<gst::ClockTime>("end").unwrap();
        let list = s.get::<gst::Array>("words").expect("words");
        assert!(!list.is_empty(), "no words in {s}");
        let mut texts = Vec::new();
        let mut last = start;
        for w in list.iter() {
            let w = w.get::<gst::Structure>().unwrap();
            let (ws, we) = (
                w.get::<gst::ClockTime>("start").unwrap(),
                w.get::<gst::ClockTime>("end").unwrap(),
            );
            let text = w.get::<String>("text").unwrap();
            println!("{:6.2} {:6.2} {text}", ws.seconds_f64(), we.seconds_f64());
            assert!(
                ws >= last && we >= ws && we <= end,
                "{text} at {ws}-{we} in {start}-{end}"
            );
            last = ws;
            texts.push(text.clone());
            all_words.push((ws.seconds_f64(), we.seconds_f64(), text));
        }
        assert_eq!(
            words(&texts.join(" ")),
            words(s.get::<&str>("text").unwrap())
        );
    }
    assert_eq!(all_words.len(), 22, "{all_words:?}");
    // No word is inside a pause (with 0.1 s of slack for the 20 ms alignment steps).
    for (ws, we, text) in &all_words {
        for &&(a, b) in &inner {
            let overlap = we.min(b) - ws.max(a);
            assert!(
                overlap < (b - a) - 0.1 || (b - a) < 0.2,
                "{text:?} at {ws:.2}-{we:.2} s spans the pause {a:.2}-{b:.2} s"
            );
            assert!(
                !(*ws >= a + 0.1 && *we <= b - 0.1),
                "{text:?} at {ws:.2}-{we:.2} s lies in the pause {a:.2}-{b:.2} s"
            );
        }
    }
}

/// transcriberbin (and applications) cycle the transcriber's state: PAUSED for a latency query,
/// NULL, then PAUSED again when data comes. The model prepared in the first run is used again
/// (preparing takes about a second a live source would lose), reset: a second stream through the
/// same element gives exactly the text and times of the first. A changed setting is honoured.
#[test]
fn the_same_element_runs_again_after_null() {
    let jfk: Vec<f32> = jfk_samples().iter().map(|&s| s as f32 / 32768.0).collect();
    let el = transcriber("tiny.en");
    let first = run_element(&el, &jfk);
    assert_eq!(el.current_state(), gst::State::Null);

    // The latency-query cycle (the query itself is tested above).
    let pipeline = gst::Pipeline::new();
    pipeline.add(&el).unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    pipeline.remove(&el).unwrap();

    let second = run_element(&el, &jfk);
    assert!(!first.texts.is_empty());
    assert_eq!(first.texts, second.texts);
    assert_eq!(first.gaps, second.gaps);

    // Another mode: another processor and other caps.
    el.set_property_from_str("mode", "embeddings");
    let bus = gst::Bus::new();
    el.set_bus(Some(&bus));
    let mut h = Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps_str(F32_CAPS);
    h.play();
    h.push(f32_buffer(&jfk, gst::ClockTime::ZERO)).unwrap();
    h.push_event(gst::event::Eos::new());
    let b = h.pull().expect("an embeddings buffer");
    assert_eq!(b.size(), 384 * 512 * 4, "tiny.en: 512 positions x 384");
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    assert_eq!(caps.structure(0).unwrap().name(), "other/tensors");
    el.set_bus(None);
}

/// precision=int8 runs the decoder in int8 too; jfk still comes out word for word.
#[test]
fn int8_precision_transcribes_jfk() {
    let jfk: Vec<f32> = jfk_samples().iter().map(|&s| s as f32 / 32768.0).collect();
    for model in ["tiny.en", "base"] {
        let el = transcriber(model);
        el.set_property_from_str("precision", "int8");
        let out = run_element(&el, &jfk);
        let all: Vec<_> = out.texts.iter().map(|(_, _, t)| t.as_str()).collect();
        assert_eq!(words(&all.join(" ")), JFK_WORDS, "{model}: {all:?}");
    }
}

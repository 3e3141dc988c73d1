//! Many elements in one process (issue 12): elements with the same model share one prepared model
//! (the second one reaches PAUSED without preparing it again, as its debug log says), each stream
//! still gets exactly what it gets alone, and the model and its threads are freed with the last
//! element.
//!
//! One test function: the model registry is process-wide, so parallel tests of this binary would
//! see each other's models. Needs the models installed by scripts/fetch-models.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{init_gst, jfk_samples, run_text_harness, words, JFK_WORDS};
use gst::prelude::*;

/// The element's debug log lines since `start_log`.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn start_log() {
    gst::log::set_active(true);
    gst::log::set_threshold_for_name("whisperencnpu", gst::DebugLevel::Info);
    gst::log::remove_default_log_function();
    gst::log::add_log_function(|cat, _level, _file, _func, _line, _obj, msg| {
        if cat.name() == "whisperencnpu" {
            if let Some(text) = msg.get() {
                LOG.lock().unwrap().push(text.to_string());
            }
        }
    });
}

/// Log lines since the last call.
fn take_log() -> Vec<String> {
    std::mem::take(&mut *LOG.lock().unwrap())
}

fn element(mode: &str) -> gst::Element {
    gst::ElementFactory::make("whisperencnpu")
        .property_from_str("mode", mode)
        .property("threads", 2u32)
        .property_from_str("language", "en")
        .build()
        .expect("whisperencnpu")
}

/// Brings `el` to PAUSED (where the model is prepared) and back, returning the log of it and
/// how long the preparation took.
fn prepare(el: &gst::Element) -> (Vec<String>, std::time::Duration) {
    take_log();
    let started = Instant::now();
    el.set_state(gst::State::Paused).expect("reaches PAUSED");
    let took = started.elapsed();
    el.set_state(gst::State::Null).expect("back to NULL");
    (take_log(), took)
}

fn said(log: &[String], what: &str) -> bool {
    log.iter().any(|l| l.contains(what))
}

fn jfk_f32() -> Vec<f32> {
    jfk_samples().iter().map(|&s| s as f32 / 32768.0).collect()
}

/// Embeddings of `audio` through `el` in a Harness, as raw buffers.
fn embeddings(el: &gst::Element, audio: &[f32]) -> Vec<Vec<u8>> {
    let mut h = gst_check::Harness::with_element(el, Some("sink"), Some("src"));
    h.set_src_caps_str("audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved");
    h.play();
    h.push(common::f32_buffer(audio, gst::ClockTime::ZERO))
        .unwrap();
    h.push_event(gst::event::Eos::new());
    let mut out = Vec::new();
    while let Ok(Some(b)) = h.pull_until_eos() {
        out.push(b.map_readable().unwrap().to_vec());
    }
    out
}

#[test]
fn elements_share_one_prepared_model_and_each_stream_gets_its_own_result() {
    init_gst();
    start_log();
    let jfk = jfk_f32();

    // The first transcription element prepares the model; a second one shares it.
    let a = element("transcription");
    let (log, first_took) = prepare(&a);
    assert!(
        said(&log, "for this process"),
        "the first element prepares the model: {log:#?}"
    );
    let b = element("transcription");
    let (log, second_took) = prepare(&b);
    assert!(
        said(&log, "sharing the cpu f32 model") && !said(&log, "for this process"),
        "the second element shares the model, it does not prepare it: {log:#?}"
    );
    println!("prepared in {first_took:?}, shared in {second_took:?}");
    assert!(
        second_took < first_took / 2,
        "sharing ({second_took:?}) should cost far less than preparing ({first_took:?})"
    );

    // Alone, then both at once on the same audio: the same text buffers, bit for bit, in
    // `latency-mode=full` (in `low` the steps follow the processing time, so text may be cut
    // differently into buffers: there the words must be the same).
    for el in [&a, &b] {
        el.set_property_from_str("latency-mode", "full");
    }
    let alone = run_text_harness(&a, &jfk, 1600, None);
    let text = |out: &common::TextOutput| {
        words(
            &out.texts
                .iter()
                .map(|(_, _, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    assert_eq!(text(&alone), JFK_WORDS, "one element alone");
    let (a2, b2) = (a.clone(), b.clone());
    let (ja, jb) = (Arc::new(jfk.clone()), Arc::new(jfk.clone()));
    let ta = std::thread::spawn(move || run_text_harness(&a2, &ja, 1600, None));
    let tb = std::thread::spawn(move || run_text_harness(&b2, &jb, 1600, None));
    let (both_a, both_b) = (ta.join().unwrap(), tb.join().unwrap());
    for (name, out) in [("first", &both_a), ("second", &both_b)] {
        assert_eq!(
            out.texts, alone.texts,
            "{name} element beside the other: texts, PTS and durations as alone"
        );
    }

    for el in [&a, &b] {
        el.set_property_from_str("latency-mode", "low");
    }
    let (a2, b2) = (a.clone(), b.clone());
    let (ja, jb) = (Arc::new(jfk.clone()), Arc::new(jfk.clone()));
    let ta = std::thread::spawn(move || run_text_harness(&a2, &ja, 1600, None));
    let tb = std::thread::spawn(move || run_text_harness(&b2, &jb, 1600, None));
    for (name, out) in [
        ("first", ta.join().unwrap()),
        ("second", tb.join().unwrap()),
    ] {
        assert_eq!(text(&out), JFK_WORDS, "{name} element in latency-mode=low");
    }

    // An embeddings element shares the encoder of the transcription ones.
    let c = element("embeddings");
    let (log, _) = prepare(&c);
    assert!(
        said(&log, "sharing the cpu f32 model"),
        "an embeddings element shares the encoder: {log:#?}"
    );
    let two_windows: Vec<f32> = jfk.iter().chain(jfk.iter()).copied().collect();
    let alone = embeddings(&c, &two_windows);
    assert_eq!(alone.len(), 3, "22 s: three windows");
    let d = element("embeddings");
    let (c2, d2) = (c.clone(), d.clone());
    let (wc, wd) = (Arc::new(two_windows.clone()), Arc::new(two_windows));
    let tc = std::thread::spawn(move || embeddings(&c2, &wc));
    let td = std::thread::spawn(move || embeddings(&d2, &wd));
    for (name, out) in [
        ("first", tc.join().unwrap()),
        ("second", td.join().unwrap()),
    ] {
        assert_eq!(out.len(), alone.len(), "{name}: windows");
        for (i, (got, want)) in out.iter().zip(&alone).enumerate() {
            assert!(
                got == want,
                "{name} embeddings element, window {i}: not bit for bit as alone"
            );
        }
    }

    // Freed with the last element: no pool left running.
    drop((a, b, c, d));
    assert!(
        gstwhisperencnpu::shared::pool::live_pools().is_empty(),
        "the model's threads outlive its last element"
    );
}

//! The element in transcription mode with `latency-mode=low` (and `auto` on a live source): words
//! come out as they are committed, once each, with the latency the element promises.

mod common;

use std::str::FromStr;
use std::time::Duration;

use gst::prelude::*;

use common::{
    init_gst as init, jfk_samples, model_dir, run_text_harness, run_text_harness_at, white_noise,
    words, TextOutput, JFK_WORDS,
};
use gstwhisperencnpu::transcribe::streaming::StreamOptions;

const F32_CAPS: &str = "audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved";

fn transcriber(model: &str, latency_mode: &str) -> gst::Element {
    init();
    gst::ElementFactory::make("whisperencnpu")
        .property("model", model_dir(model).to_str().unwrap())
        .property_from_str("mode", "transcription")
        .property_from_str("latency-mode", latency_mode)
        .property("language", "en")
        .build()
        .unwrap()
}

/// Pushes `audio` in 20 ms buffers as a live source brings it (the harness answers the latency
/// query as a live source), then EOS.
fn run(el: &gst::Element, audio: &[f32]) -> TextOutput {
    run_text_harness(el, audio, 320, Some(gst::ClockTime::from_mseconds(20)))
}

fn jfk() -> Vec<f32> {
    jfk_samples().iter().map(|&s| s as f32 / 32768.0).collect()
}

/// jfk.wav, live: the sentence once, in several committed pieces, each with a PTS at or after the
/// end of the one before; segments close with a message and a final-transcript event each, and
/// their text is the committed text.
#[test]
fn jfk_live_is_committed_once_in_pieces() {
    for latency_mode in ["low", "auto"] {
        let out = run(&transcriber("base", latency_mode), &jfk());
        let texts: Vec<&str> = out.texts.iter().map(|(_, _, t)| t.as_str()).collect();
        println!("{latency_mode}: {texts:?}");
        assert_eq!(
            words(&texts.join(" ")),
            JFK_WORDS,
            "{latency_mode}: {texts:?}"
        );
        assert!(
            out.texts.len() >= 3,
            "{latency_mode}: words come out as they are committed, not in one piece: {texts:?}"
        );
        let mut last_end = gst::ClockTime::ZERO;
        for (i, (pts, duration, text)) in out.texts.iter().enumerate() {
            assert!(
                !text.trim().is_empty(),
                "{latency_mode}: buffer {i} is empty"
            );
            assert!(
                *pts >= last_end,
                "{latency_mode}: buffer {i} {text:?} overlaps the one before"
            );
            last_end = *pts + *duration;
        }
        assert!(
            last_end <= gst::ClockTime::from_mseconds(11_100),
            "{latency_mode}: {last_end}"
        );

        assert!(
            !out.segments.is_empty(),
            "{latency_mode}: no segment closed"
        );
        assert_eq!(
            out.finals,
            out.segments.len(),
            "{latency_mode}: one final-transcript per segment"
        );
        let segment_text: Vec<&str> = out
            .segments
            .iter()
            .map(|s| s.get::<&str>("text").unwrap())
            .collect();
        assert_eq!(
            words(&segment_text.join(" ")),
            JFK_WORDS,
            "{latency_mode}: {segment_text:?}"
        );
        assert!(
            !out.partials.is_empty(),
            "{latency_mode}: no partial hypothesis posted"
        );
        for p in &out.partials {
            let (start, end) = (
                p.get::<gst::ClockTime>("start").unwrap(),
                p.get::<gst::ClockTime>("end").unwrap(),
            );
            assert!(start <= end, "{latency_mode}: partial {p}");
            p.get::<&str>("text").unwrap();
        }
    }
}

/// Words that reach the element later than its latency allows (here the whole of jfk.wav, its
/// capture 100 s behind the clock) would be late at a synchronising sink, which shows a buffer at
/// its PTS plus the latency: every caption is stamped at the earliest time that is on time
/// instead, says how far it was moved in its step's timing message, and the text is unchanged.
/// On time (the clock at 0), nothing is moved.
#[test]
fn late_words_are_moved_to_be_on_time() {
    let upstream = gst::ClockTime::from_mseconds(20);
    let now = gst::ClockTime::from_seconds(100);
    let el = transcriber("base", "low");
    let out = run_text_harness_at(&el, &jfk(), 320, Some(upstream), Some(now));
    let texts: Vec<&str> = out.texts.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(words(&texts.join(" ")), JFK_WORDS, "{texts:?}");
    let latency = out.latency.expect("the latency answered");
    let earliest = now - latency;
    let moved: Vec<gst::ClockTime> = out
        .timings
        .iter()
        .filter_map(|t| t.get::<gst::ClockTime>("caption-moved").ok())
        .collect();
    // The first caption is moved; those after it follow it, so they are on time as they are.
    assert!(
        !moved.is_empty() && moved[0] > gst::ClockTime::from_seconds(80),
        "the first caption moved by about 100 s less the latency: {moved:?}"
    );
    for (i, (pts, _, text)) in out.texts.iter().enumerate() {
        // The clock stood still while the audio was pushed: each was stamped at now - latency.
        assert!(
            *pts >= earliest,
            "caption {i} {text:?} at {pts}, before {earliest} (latency {latency})"
        );
    }

    let on_time = run(&transcriber("base", "low"), &jfk());
    assert!(
        on_time
            .timings
            .iter()
            .all(|t| !t.has_field("caption-moved")),
        "nothing moved when on time"
    );
}

/// 30 s of silence live: no text, and GAP events keep downstream's time moving over it.
#[test]
fn silence_live_gives_no_text_but_gaps() {
    let out = run(&transcriber("tiny.en", "low"), &vec![0.0; 30 * 16_000]);
    assert!(out.texts.is_empty(), "{:?}", out.texts);
    let covered: u64 = out.gaps.iter().map(|(_, d)| d.nseconds()).sum();
    assert!(covered >= 29_000_000_000, "gaps cover only {covered} ns");
}

/// 30 s of white noise live: no text.
#[test]
fn noise_live_gives_no_text() {
    let noise = white_noise(30);
    let out = run(&transcriber("base", "low"), &noise);
    assert!(out.texts.is_empty(), "{:?}", out.texts);
}

/// The latency query in PAUSED, before any data, from a source that is not live (appsrc): `auto`
/// is the whole-window mode there, `low` stays low (tests/live_latency.rs has the live rows).
/// `latency` (the processing part) is set so the expectation does not depend on this machine.
#[test]
fn latency_query_behind_a_source_that_is_not_live() {
    let low = |processing_ms: u64| {
        let bound = StreamOptions::default().delay_bound(Duration::from_millis(processing_ms));
        gst::ClockTime::from_nseconds(bound.as_nanos() as u64)
    };
    // A window, a 0.1 s chunk and the processing time.
    let full = |processing_ms: u64| gst::ClockTime::from_mseconds(10_240 + 100 + processing_ms);
    struct Case {
        latency_mode: &'static str,
        processing_ms: u32,
        expected: gst::ClockTime,
    }
    let cases = [
        Case {
            latency_mode: "auto",
            processing_ms: 500,
            expected: full(500),
        },
        Case {
            latency_mode: "low",
            processing_ms: 400,
            expected: low(400),
        },
        Case {
            latency_mode: "full",
            processing_ms: 4000,
            expected: full(4000),
        },
    ];
    for c in cases {
        let el = transcriber("tiny.en", c.latency_mode);
        el.set_property("latency", c.processing_ms);
        // appsrc: nothing flows until pushed (a fakesrc that is not live would push buffers
        // without caps in PAUSED and race the query with an error).
        let src = gst::ElementFactory::make("appsrc")
            .property("is-live", false)
            .property_from_str("format", "time")
            .property("caps", gst::Caps::from_str(F32_CAPS).unwrap())
            .build()
            .unwrap();
        let pipeline = gst::Pipeline::new();
        pipeline.add_many([&src, &el]).unwrap();
        src.link(&el).unwrap();
        el.set_state(gst::State::Paused).unwrap();
        src.set_state(gst::State::Paused).unwrap();
        let mut q = gst::query::Latency::new();
        assert!(
            el.static_pad("src").unwrap().query(&mut q),
            "{}",
            c.latency_mode
        );
        let (live, min, _) = q.result();
        pipeline.set_state(gst::State::Null).unwrap();
        assert!(!live, "{}: answered live", c.latency_mode);
        assert_eq!(min, c.expected, "{}", c.latency_mode);
    }
}

/// A flush (a flushing seek) in the low-latency mode drops what was pending and starts again: the
/// speech pushed after it comes out once, at the new timestamps, and nothing of before the flush
/// follows it.
#[test]
fn flush_restarts_the_low_latency_stream() {
    let el = transcriber("base", "low");
    let audio = jfk();
    let mut h = gst_check::Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps_str("audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved");
    h.set_upstream_latency(gst::ClockTime::from_mseconds(20));
    h.play();
    let push = |h: &mut gst_check::Harness, samples: &[f32], from: gst::ClockTime| {
        for (i, piece) in samples.chunks(320).enumerate() {
            let pts = from + gst::ClockTime::from_mseconds(20 * i as u64);
            h.push(common::f32_buffer(piece, pts)).unwrap();
        }
    };
    // The first 5 s, then a flush, then the whole of jfk from 100 s.
    push(&mut h, &audio[..5 * 16_000], gst::ClockTime::ZERO);
    h.push_event(gst::event::FlushStart::new());
    h.push_event(gst::event::FlushStop::new(true));
    let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
    segment.set_start(gst::ClockTime::from_seconds(100));
    segment.set_time(gst::ClockTime::from_seconds(100));
    h.push_event(gst::event::Segment::new(&segment));
    let after = gst::ClockTime::from_seconds(100);
    push(&mut h, &audio, after);
    h.push_event(gst::event::Eos::new());

    let mut texts = Vec::new();
    loop {
        match h.pull_until_eos() {
            Ok(Some(b)) => {
                let text = String::from_utf8(b.map_readable().unwrap().to_vec()).unwrap();
                texts.push((b.pts().unwrap(), text));
            }
            Ok(None) => break,
            Err(e) => panic!("no EOS: {e}"),
        }
    }
    // Buffers the flush did not catch may come first; what follows the first buffer stamped
    // after the flush is the second stream only.
    let first_after = texts
        .iter()
        .position(|(pts, _)| *pts >= after)
        .expect("text after the flush");
    let rest: Vec<&str> = texts[first_after..]
        .iter()
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(
        words(&rest.join(" ")),
        JFK_WORDS,
        "after the flush: {texts:?}"
    );
    for (pts, text) in &texts[first_after..] {
        assert!(*pts >= after, "{text:?} at {pts}, before the restart");
    }
}

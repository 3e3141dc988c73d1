//! The live-latency contract: behind a live source, the element's source pad answers a LATENCY
//! query in PAUSED, before any data flows (as transcriberbin asks it), with upstream's latency plus
//! its own, and its own part is what the README documents. No timing is measured here: the delay
//! under real time is `scripts/caption-delay`'s job.

mod common;

use std::time::Duration;

use gst::prelude::*;
use gstwhisperencnpu::mel::{SAMPLE_RATE, WINDOW_SAMPLES};
use gstwhisperencnpu::transcribe::streaming::StreamOptions;

use common::{init_gst, model_dir};

/// One encoder window: 1024 mel frames of 160 samples at 16 kHz (10.24 s).
const WINDOW: gst::ClockTime =
    gst::ClockTime::from_nseconds(WINDOW_SAMPLES as u64 * 1_000_000_000 / SAMPLE_RATE as u64);
/// The audio handed to the transcriber at a time, which the README counts in transcription mode's
/// latency ("one window plus one 0.1 s chunk plus the processing bound").
const TRANSCRIPTION_CHUNK: gst::ClockTime = gst::ClockTime::from_mseconds(100);
/// The upstream latency the live source reports (a capture source's buffer time, made large so
/// that a forgotten upstream part cannot pass for rounding).
const UPSTREAM_MIN: gst::ClockTime = gst::ClockTime::from_mseconds(250);
const UPSTREAM_MAX: gst::ClockTime = gst::ClockTime::from_seconds(2);

/// What a row expects of the element's own latency.
#[derive(Clone, Copy, Debug)]
enum Own {
    Exactly(gst::ClockTime),
    /// Measured at load (the warm-up window): only its bounds are documented.
    Between(gst::ClockTime, gst::ClockTime),
    /// The same as the row of this name, in the same run.
    SameAs(&'static str),
}

struct Row {
    name: &'static str,
    props: &'static [(&'static str, &'static str)],
    own: Own,
}

/// The README's documented own latency, row by row.
fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "transcription, full, latency automatic",
            props: &[("mode", "transcription"), ("latency-mode", "full")],
            // A window and a chunk buffered; processing bounded by a window (the realtime limit).
            own: Own::Exactly(WINDOW + TRANSCRIPTION_CHUNK + WINDOW),
        },
        Row {
            name: "transcription, full, latency=3000",
            props: &[
                ("mode", "transcription"),
                ("latency-mode", "full"),
                ("latency", "3000"),
            ],
            own: Own::Exactly(WINDOW + TRANSCRIPTION_CHUNK + gst::ClockTime::from_seconds(3)),
        },
        Row {
            name: "embeddings, latency=3000",
            props: &[("mode", "embeddings"), ("latency", "3000")],
            own: Own::Exactly(WINDOW + gst::ClockTime::from_seconds(3)),
        },
        Row {
            name: "embeddings, latency automatic",
            props: &[("mode", "embeddings")],
            // A window plus twice the warm-up window's time, at most a window.
            own: Own::Between(WINDOW, WINDOW + WINDOW),
        },
        Row {
            name: "transcription, low, latency=400",
            props: &[
                ("mode", "transcription"),
                ("latency-mode", "low"),
                ("latency", "400"),
            ],
            // What the commit policy allows from a word's start to its commit, with a step's
            // processing: force_after + max(step, processing) + processing.
            own: Own::Exactly(low_latency(400)),
        },
        Row {
            name: "transcription, auto behind a live source, latency=400",
            props: &[
                ("mode", "transcription"),
                ("latency-mode", "auto"),
                ("latency", "400"),
            ],
            own: Own::SameAs("transcription, low, latency=400"),
        },
        Row {
            name: "transcription, low, latency automatic",
            props: &[("mode", "transcription"), ("latency-mode", "low")],
            // The processing part is measured at load (three warm-up windows): only bounds.
            own: Own::Between(low_latency(1), low_latency(10_240)),
        },
    ]
}

/// The low-latency mode's own latency with `processing_ms` for a step.
fn low_latency(processing_ms: u64) -> gst::ClockTime {
    let bound = StreamOptions::default().delay_bound(Duration::from_millis(processing_ms));
    gst::ClockTime::from_nseconds(bound.as_nanos() as u64)
}

/// The answer of the element's source pad to a LATENCY query, behind a live appsrc, in PAUSED
/// with no data sent.
fn query_paused(row: &Row) -> (bool, gst::ClockTime, Option<gst::ClockTime>) {
    let element = gst::ElementFactory::make("whisperencnpu")
        .property("model", model_dir("tiny.en").to_str().unwrap())
        .build()
        .unwrap();
    for (name, value) in row.props {
        element.set_property_from_str(name, value);
    }
    let src = gst::ElementFactory::make("appsrc")
        .property("is-live", true)
        .property_from_str("format", "time")
        .property("min-latency", UPSTREAM_MIN.nseconds() as i64)
        .property("max-latency", UPSTREAM_MAX.nseconds() as i64)
        .property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("format", "S16LE")
                .field("rate", SAMPLE_RATE as i32)
                .field("channels", 1)
                .field("layout", "interleaved")
                .build(),
        )
        .build()
        .unwrap();
    let sink = gst::ElementFactory::make("fakesink").build().unwrap();
    let pipeline = gst::Pipeline::new();
    pipeline.add_many([&src, &element, &sink]).unwrap();
    gst::Element::link_many([&src, &element, &sink]).unwrap();

    let state = pipeline.set_state(gst::State::Paused);
    assert_eq!(
        state,
        Ok(gst::StateChangeSuccess::NoPreroll),
        "{}: PAUSED behind a live source is not NO_PREROLL",
        row.name
    );
    let mut q = gst::query::Latency::new();
    let answered = element.static_pad("src").unwrap().query(&mut q);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(
        answered,
        "{}: the src pad did not answer the latency query",
        row.name
    );
    q.result()
}

#[test]
fn latency_behind_a_live_source_is_upstream_plus_the_documented_own_part() {
    init_gst();
    let mut measured: Vec<(&str, gst::ClockTime)> = Vec::new();
    for row in rows() {
        let (live, min, max) = query_paused(&row);
        assert!(live, "{}: a live upstream, answered as not live", row.name);
        assert!(
            min >= UPSTREAM_MIN,
            "{}: minimum {min} is below upstream's {UPSTREAM_MIN}",
            row.name
        );
        let own = min - UPSTREAM_MIN;
        println!(
            "{}: own latency {own} (reported {min}, max {max:?})",
            row.name
        );
        match row.own {
            Own::Exactly(expected) => assert_eq!(own, expected, "{}: own latency", row.name),
            Own::Between(lo, hi) => assert!(
                own >= lo && own <= hi,
                "{}: own latency {own} is outside [{lo}, {hi}]",
                row.name
            ),
            Own::SameAs(other) => match measured.iter().find(|(n, _)| *n == other) {
                Some(&(_, theirs)) => {
                    assert_eq!(
                        own, theirs,
                        "{}: own latency differs from {other}'s",
                        row.name
                    )
                }
                None => panic!("{}: row {other} was not measured before it", row.name),
            },
        }
        // The maximum is upstream's plus the same own part (a bounded upstream stays bounded).
        assert_eq!(
            max,
            Some(UPSTREAM_MAX + own),
            "{}: maximum latency is not upstream's plus the own part",
            row.name
        );
        measured.push((row.name, own));
    }
}

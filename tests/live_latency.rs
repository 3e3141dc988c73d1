//! The live-latency contract: behind a live source, the element's source pad answers a LATENCY
//! query in PAUSED, before any data flows (as transcriberbin asks it), with upstream's latency plus
//! its own, and its own part is what the README documents. No timing is measured here: the delay
//! under real time is `scripts/caption-delay`'s job.

mod common;

use gst::prelude::*;
use gstwhisperencnpu::mel::{SAMPLE_RATE, WINDOW_SAMPLES};

use common::{init_gst, model_dir};

/// One encoder window: 1024 mel frames of 160 samples at 16 kHz (10.24 s).
const WINDOW: gst::ClockTime =
    gst::ClockTime::from_nseconds(WINDOW_SAMPLES as u64 * 1_000_000_000 / SAMPLE_RATE as u64);
/// The audio handed to the transcriber at a time, which the README counts in transcription mode's
/// latency ("one window plus one 1 s chunk plus the processing bound").
const TRANSCRIPTION_CHUNK: gst::ClockTime = gst::ClockTime::from_seconds(1);
/// The upstream latency the live source reports (a capture source's buffer time, made large so
/// that a forgotten upstream part cannot pass for rounding).
const UPSTREAM_MIN: gst::ClockTime = gst::ClockTime::from_mseconds(250);
const UPSTREAM_MAX: gst::ClockTime = gst::ClockTime::from_seconds(2);
/// Issue 9's acceptance: in `latency-mode=low` the element reports at most 3 s in a live pipeline.
const LOW_MODE_MAX: gst::ClockTime = gst::ClockTime::from_seconds(3);
/// The capture source's part of that pipeline's latency: one 20 ms buffer (`scripts/caption-delay`
/// and `pulsesrc` at its usual buffer time).
const CAPTURE_BUFFER: gst::ClockTime = gst::ClockTime::from_mseconds(20);

/// What a row expects of the element's own latency.
#[derive(Clone, Copy, Debug)]
enum Own {
    Exactly(gst::ClockTime),
    /// Only bounds are documented: measured at load (the warm-up window), or not documented yet
    /// beyond issue 9's limit (low mode).
    Between(gst::ClockTime, gst::ClockTime),
    /// The same as the row of this name, in the same run.
    SameAs(&'static str),
}

struct Row {
    name: &'static str,
    props: &'static [(&'static str, &'static str)],
    /// Set only where the element has the property (`latency-mode=full` pins today's behaviour on
    /// builds that have the property, whose default would follow the live upstream).
    if_present: &'static [(&'static str, &'static str)],
    own: Own,
}

/// The README's documented own latency, row by row.
fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "transcription, full, latency automatic",
            props: &[("mode", "transcription")],
            if_present: &[("latency-mode", "full")],
            // A window and a chunk buffered; processing bounded by a window (the realtime limit).
            own: Own::Exactly(WINDOW + TRANSCRIPTION_CHUNK + WINDOW),
        },
        Row {
            name: "transcription, full, latency=3000",
            props: &[("mode", "transcription"), ("latency", "3000")],
            if_present: &[("latency-mode", "full")],
            own: Own::Exactly(WINDOW + TRANSCRIPTION_CHUNK + gst::ClockTime::from_seconds(3)),
        },
        Row {
            name: "embeddings, latency=3000",
            props: &[("mode", "embeddings"), ("latency", "3000")],
            if_present: &[],
            own: Own::Exactly(WINDOW + gst::ClockTime::from_seconds(3)),
        },
        Row {
            name: "embeddings, latency automatic",
            props: &[("mode", "embeddings")],
            if_present: &[],
            // A window plus twice the warm-up window's time, at most a window.
            own: Own::Between(WINDOW, WINDOW + WINDOW),
        },
        Row {
            name: "transcription, low",
            props: &[("mode", "transcription"), ("latency-mode", "low")],
            if_present: &[],
            // Step, processing and stabilisation; issue 9 bounds the whole at 3 s. Make this
            // exact once the README documents low mode's formula.
            own: Own::Between(
                gst::ClockTime::from_nseconds(1),
                LOW_MODE_MAX - CAPTURE_BUFFER,
            ),
        },
        Row {
            name: "transcription, auto behind a live source",
            props: &[("mode", "transcription"), ("latency-mode", "auto")],
            if_present: &[],
            own: Own::SameAs("transcription, low"),
        },
    ]
}

/// The answer of the element's source pad to a LATENCY query, behind a live appsrc, in PAUSED
/// with no data sent; `Err` names a property the element does not have.
fn query_paused(row: &Row) -> Result<(bool, gst::ClockTime, Option<gst::ClockTime>), String> {
    let element = gst::ElementFactory::make("whisperencnpu")
        .property("model", model_dir("tiny.en").to_str().unwrap())
        .build()
        .unwrap();
    for (name, value) in row.props {
        if element.find_property(name).is_none() {
            return Err(format!("whisperencnpu has no property {name}"));
        }
        element.set_property_from_str(name, value);
    }
    for (name, value) in row.if_present {
        if element.find_property(name).is_some() {
            element.set_property_from_str(name, value);
        }
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
    Ok(q.result())
}

#[test]
fn latency_behind_a_live_source_is_upstream_plus_the_documented_own_part() {
    init_gst();
    let mut measured: Vec<(&str, gst::ClockTime)> = Vec::new();
    let mut skipped = Vec::new();
    for row in rows() {
        let (live, min, max) = match query_paused(&row) {
            Ok(answer) => answer,
            Err(why) => {
                eprintln!(
                    "SKIPPED (not checked): {}: {why} (issue 9, not merged yet)",
                    row.name
                );
                skipped.push(row.name);
                continue;
            }
        };
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
    if !skipped.is_empty() {
        eprintln!(
            "live_latency: {} of {} rows not checked: {}",
            skipped.len(),
            rows().len(),
            skipped.join("; ")
        );
    }
}

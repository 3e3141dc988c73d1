//! The acceptance pipeline: a WAV file through `whisperencnpu` into a file, as users launch it.

mod common;

use gst::prelude::*;

use common::{model_dir, read_npy_2d, relative_l2, shared_file};

const POSITIONS: usize = 512;

struct Run {
    windows: Vec<Vec<f32>>,
    timings: Vec<gst::Structure>,
}

fn run_file(model: &str, d_model: usize) -> Run {
    common::init_gst();
    let out =
        std::env::temp_dir().join(format!("whisperencnpu-{model}-{}.f32", std::process::id()));
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! wavparse ! audioconvert ! audioresample ! \
         whisperencnpu model={} ! filesink location={}",
        shared_file("audio/jfk.wav").display(),
        model_dir(model).display(),
        out.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut timings = Vec::new();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(300)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("pipeline error: {} ({:?})", e.error(), e.debug()),
            gst::MessageView::Element(e) => {
                let s = e.structure().unwrap();
                if s.name() == "whisperencnpu-timing" {
                    timings.push(s.to_owned());
                }
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        floats.len() % (POSITIONS * d_model),
        0,
        "partial window in the file"
    );
    Run {
        windows: floats
            .chunks(POSITIONS * d_model)
            .map(|w| w.to_vec())
            .collect(),
        timings,
    }
}

fn check(model: &str, d_model: usize) {
    let run = run_file(model, d_model);
    // jfk.wav is 11.0 s: one full window and one zero-padded one.
    assert_eq!(run.windows.len(), 2);
    let reference = read_npy_2d(&format!("golden/enc_{model}_jfk.npy"));
    let err = relative_l2(&run.windows[0], reference.as_slice().unwrap());
    println!("{model}: first window vs golden relative L2 = {err:.3e}");
    assert!(err <= 1e-4, "relative L2 error {err}");

    assert_eq!(run.timings.len(), 2);
    for (i, s) in run.timings.iter().enumerate() {
        println!("{s}");
        assert_eq!(s.get::<u64>("window").unwrap(), i as u64);
        let pts = s.get::<gst::ClockTime>("pts").unwrap();
        assert_eq!(pts, gst::ClockTime::from_mseconds(10_240 * i as u64));
        let processing = s.get::<gst::ClockTime>("processing-time").unwrap();
        let encoder = s.get::<gst::ClockTime>("encoder-time").unwrap();
        let mel = s.get::<gst::ClockTime>("mel-time").unwrap();
        assert!(processing >= encoder + mel);
        let audio = s.get::<gst::ClockTime>("audio-duration").unwrap();
        let rtf = s.get::<f64>("realtime-factor").unwrap();
        let expected = audio.nseconds() as f64 / processing.nseconds() as f64;
        assert!((rtf - expected).abs() <= 1e-9 * expected);
        assert_eq!(s.get::<&str>("backend").unwrap(), "cpu");
        assert_eq!(s.get::<&str>("precision").unwrap(), "f32");
    }
    // The first window is full; the second holds the remaining 0.76 s.
    let audio: Vec<_> = run
        .timings
        .iter()
        .map(|s| s.get::<gst::ClockTime>("audio-duration").unwrap())
        .collect();
    assert_eq!(audio[0], gst::ClockTime::from_mseconds(10_240));
    assert!(
        audio[1] > gst::ClockTime::from_mseconds(700)
            && audio[1] < gst::ClockTime::from_mseconds(800)
    );
}

#[test]
fn jfk_base_matches_the_reference() {
    check("base", 512);
}

#[test]
fn jfk_tiny_en_matches_the_reference() {
    check("tiny.en", 384);
}

/// A flushing seek restarts the windows at the seek target; nothing from before it comes out.
#[test]
fn seek_restarts_windows_at_the_target() {
    common::init_gst();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! wavparse ! audioconvert ! audioresample ! \
         whisperencnpu model={} ! fakesink name=sink signal-handoffs=true",
        shared_file("audio/jfk.wav").display(),
        model_dir("tiny.en").display(),
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = pipeline.by_name("sink").unwrap();
    let seen_in = seen.clone();
    sink.connect("handoff", false, move |args| {
        let buffer = args[1].get::<gst::Buffer>().unwrap();
        seen_in.lock().unwrap().push(buffer.pts().unwrap());
        None
    });
    let bus = pipeline.bus().unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::AsyncDone],
    )
    .expect("preroll");
    seen.lock().unwrap().clear();
    pipeline
        .seek_simple(
            gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE,
            gst::ClockTime::from_seconds(5),
        )
        .unwrap();
    bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::AsyncDone],
    )
    .expect("preroll after the seek");
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(120),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS");
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();
    // 11 s of audio from 5 s on: one window, zero-padded, starting at the target.
    assert_eq!(*seen.lock().unwrap(), vec![gst::ClockTime::from_seconds(5)]);
}

//! The element as users drive it: gst-check's Harness and real pipelines, with the real models.

mod common;

use std::str::FromStr;

use gst::prelude::*;
use gst_check::Harness;

use common::{
    f32_buffer, init_gst as init, jfk_samples, model_dir, pause_error, read_npy_2d, relative_l2,
};

const WINDOW_SAMPLES: usize = 163_840;
const WINDOW: gst::ClockTime = gst::ClockTime::from_mseconds(10_240);
const F32_CAPS: &str = "audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved";
const S16_CAPS: &str = "audio/x-raw,format=S16LE,rate=16000,channels=1,layout=interleaved";

fn element(model: &str) -> gst::Element {
    init();
    gst::ElementFactory::make("whisperencnpu")
        .property("model", model_dir(model).to_str().unwrap())
        .property("threads", 2u32)
        .build()
        .unwrap()
}

fn harness(model: &str, caps: &str) -> Harness {
    let mut h = Harness::with_element(&element(model), Some("sink"), Some("src"));
    h.set_src_caps_str(caps);
    h.play();
    h
}

fn s16_buffer(samples: &[i16], pts: gst::ClockTime) -> gst::Buffer {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    buffer.get_mut().unwrap().set_pts(pts);
    buffer
}

/// A 440 Hz tone at a modest level: real signal, cheap to make.
fn tone(samples: usize) -> Vec<f32> {
    (0..samples)
        .map(|i| 0.1 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin())
        .collect()
}

fn floats(buffer: &gst::Buffer) -> Vec<f32> {
    let map = buffer.map_readable().unwrap();
    map.chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Pulls buffers until EOS, checking that EOS does come.
fn pull_until_eos(h: &mut Harness) -> Vec<gst::Buffer> {
    let mut out = Vec::new();
    loop {
        match h.pull_until_eos() {
            Ok(Some(buffer)) => out.push(buffer),
            Ok(None) => return out,
            Err(err) => panic!("no EOS: {err}"),
        }
    }
}

#[test]
fn caps_are_negotiated_for_tensors() {
    let mut h = harness("tiny.en", F32_CAPS);
    assert_eq!(
        h.push(f32_buffer(&tone(1600), gst::ClockTime::ZERO)),
        Ok(gst::FlowSuccess::Ok)
    );
    h.push_event(gst::event::Eos::new());
    let buffers = pull_until_eos(&mut h);
    assert_eq!(buffers.len(), 1);
    let caps = h.sinkpad().unwrap().current_caps().unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!(s.name(), "other/tensors");
    assert_eq!(s.get::<&str>("dimensions").unwrap(), "384:512");
    assert_eq!(s.get::<&str>("types").unwrap(), "float32");
    assert_eq!(s.get::<i32>("num_tensors").unwrap(), 1);
    assert_eq!(buffers[0].size(), 384 * 512 * 4);
}

#[test]
fn other_rates_and_channel_counts_are_refused() {
    for caps in [
        "audio/x-raw,format=F32LE,rate=44100,channels=1,layout=interleaved",
        "audio/x-raw,format=F32LE,rate=16000,channels=2,layout=interleaved",
        "audio/x-raw,format=S32LE,rate=16000,channels=1,layout=interleaved",
    ] {
        let el = element("tiny.en");
        let sinkpad = el.static_pad("sink").unwrap();
        let caps = gst::Caps::from_str(caps).unwrap();
        assert!(!sinkpad.query_accept_caps(&caps), "{caps} accepted");

        let mut h = Harness::with_element(&el, Some("sink"), Some("src"));
        h.play();
        h.push_event(gst::event::StreamStart::new("test"));
        assert!(
            !sinkpad.send_event(gst::event::Caps::new(&caps)),
            "{caps} taken"
        );
        // Upstream pushing on regardless is told the stream is not negotiated.
        h.push_event(gst::event::Caps::new(&caps));
        h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
            gst::ClockTime,
        >::new()));
        assert_eq!(
            h.push(f32_buffer(&tone(1600), gst::ClockTime::ZERO)),
            Err(gst::FlowError::NotNegotiated)
        );
    }
    let accepted = gst::Caps::from_str(S16_CAPS).unwrap();
    assert!(element("tiny.en")
        .static_pad("sink")
        .unwrap()
        .query_accept_caps(&accepted));
}

#[test]
fn eos_drains_the_last_partial_window() {
    let mut h = harness("tiny.en", F32_CAPS);
    // 25 s in buffers of 0.1 s: two full windows and a partial one.
    let audio = tone(25 * 16_000);
    for (i, chunk) in audio.chunks(1600).enumerate() {
        let pts = gst::ClockTime::from_mseconds(i as u64 * 100);
        assert!(h.push(f32_buffer(chunk, pts)).is_ok());
    }
    h.push_event(gst::event::Eos::new());
    let buffers = pull_until_eos(&mut h);
    let pts: Vec<_> = buffers.iter().map(|b| b.pts().unwrap()).collect();
    assert_eq!(
        pts,
        vec![
            gst::ClockTime::ZERO,
            gst::ClockTime::from_mseconds(10_240),
            gst::ClockTime::from_mseconds(20_480)
        ]
    );
    for b in &buffers {
        assert_eq!(b.duration(), Some(WINDOW));
    }
}

#[test]
fn windows_follow_the_first_timestamp() {
    let mut h = harness("tiny.en", F32_CAPS);
    let start = gst::ClockTime::from_seconds(5);
    h.push(f32_buffer(&tone(WINDOW_SAMPLES + 100), start))
        .unwrap();
    h.push_event(gst::event::Eos::new());
    let pts: Vec<_> = pull_until_eos(&mut h)
        .iter()
        .map(|b| b.pts().unwrap())
        .collect();
    assert_eq!(pts, vec![start, start + WINDOW]);
}

#[test]
fn flush_drops_pending_audio_and_restarts_timing() {
    let mut h = harness("tiny.en", F32_CAPS);
    h.push(f32_buffer(&tone(WINDOW_SAMPLES / 2), gst::ClockTime::ZERO))
        .unwrap();
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<
        gst::ClockTime,
    >::new()));
    let restart = gst::ClockTime::from_seconds(100);
    h.push(f32_buffer(&tone(WINDOW_SAMPLES / 4), restart))
        .unwrap();
    h.push_event(gst::event::Eos::new());
    let buffers = pull_until_eos(&mut h);
    assert_eq!(
        buffers.len(),
        1,
        "the flushed half window must not come out"
    );
    assert_eq!(buffers[0].pts(), Some(restart));
}

#[test]
fn gap_counts_as_silence() {
    // A window made of a GAP event gives the same embeddings as a window of zeros.
    let mut gap = harness("tiny.en", F32_CAPS);
    gap.push_event(
        gst::event::Gap::builder(gst::ClockTime::ZERO)
            .duration(WINDOW)
            .build(),
    );
    gap.push_event(gst::event::Eos::new());
    let from_gap = pull_until_eos(&mut gap);

    let mut zeros = harness("tiny.en", F32_CAPS);
    zeros
        .push(f32_buffer(&vec![0.0; WINDOW_SAMPLES], gst::ClockTime::ZERO))
        .unwrap();
    zeros.push_event(gst::event::Eos::new());
    let from_zeros = pull_until_eos(&mut zeros);

    assert_eq!(from_gap.len(), 1);
    assert_eq!(from_zeros.len(), 1);
    assert_eq!(floats(&from_gap[0]), floats(&from_zeros[0]));

    // A gap between buffers keeps later audio at its own time.
    let mut h = harness("tiny.en", F32_CAPS);
    h.push(f32_buffer(&tone(16_000), gst::ClockTime::ZERO))
        .unwrap();
    h.push_event(
        gst::event::Gap::builder(gst::ClockTime::from_seconds(1))
            .duration(gst::ClockTime::from_seconds(10))
            .build(),
    );
    h.push(f32_buffer(&tone(16_000), gst::ClockTime::from_seconds(11)))
        .unwrap();
    h.push_event(gst::event::Eos::new());
    let pts: Vec<_> = pull_until_eos(&mut h)
        .iter()
        .map(|b| b.pts().unwrap())
        .collect();
    assert_eq!(pts, vec![gst::ClockTime::ZERO, WINDOW]);
}

#[test]
fn s16_and_f32_give_the_same_embeddings() {
    let jfk = jfk_samples();
    let as_f32: Vec<f32> = jfk.iter().map(|&s| s as f32 / 32768.0).collect();

    let mut h16 = harness("tiny.en", S16_CAPS);
    h16.push(s16_buffer(&jfk, gst::ClockTime::ZERO)).unwrap();
    h16.push_event(gst::event::Eos::new());
    let out16 = pull_until_eos(&mut h16);

    let mut h32 = harness("tiny.en", F32_CAPS);
    h32.push(f32_buffer(&as_f32, gst::ClockTime::ZERO)).unwrap();
    h32.push_event(gst::event::Eos::new());
    let out32 = pull_until_eos(&mut h32);

    assert_eq!(out16.len(), 2);
    assert_eq!(out32.len(), 2);
    for (a, b) in out16.iter().zip(&out32) {
        assert_eq!(floats(a), floats(b));
    }
    // And the first window is the reference encoder output.
    let reference = read_npy_2d("golden/enc_tiny.en_jfk.npy");
    let err = relative_l2(&floats(&out16[0]), reference.as_slice().unwrap());
    println!("tiny.en jfk through the element: relative L2 {err:.2e}");
    assert!(err <= 1e-4, "relative L2 error {err}");
}

#[test]
fn latency_is_a_window_plus_processing() {
    init();
    let pipeline = gst::parse::launch(&format!(
        "audiotestsrc is-live=true samplesperbuffer=1600 ! audio/x-raw,rate=16000,channels=1 ! \
         whisperencnpu name=enc threads=2 model={} ! fakesink async=false",
        model_dir("tiny.en").display()
    ))
    .unwrap();
    let enc = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("enc")
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    // Upstream answers once it has negotiated, i.e. after its first buffer.
    let sinkpad = enc.static_pad("sink").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sinkpad.current_caps().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no caps from the live source"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut q = gst::query::Latency::new();
    assert!(enc.static_pad("src").unwrap().query(&mut q));
    let (live, min, _max) = q.result();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(live);
    assert!(min >= WINDOW, "min latency {min}");
    assert!(
        min <= WINDOW * 2 + gst::ClockTime::from_mseconds(100),
        "min latency {min}"
    );
}

/// Puts the element alone in a pipeline, tries PAUSED, and returns the error text on the bus.
fn state_change_error(configure: impl FnOnce(&gst::Element)) -> String {
    init();
    let el = gst::ElementFactory::make("whisperencnpu").build().unwrap();
    configure(&el);
    pause_error(&el)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("whisperencnpu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The element keeps its prepared model across NULL (transcriberbin cycles its state), but not
/// past a change on disk: a model.bin cut short after a good run is reported on the next PAUSED,
/// not hidden by the kept copy.
#[test]
fn a_model_broken_after_a_run_is_an_error_message_on_the_next() {
    init();
    let dir = temp_dir("broken-later");
    let real = std::fs::read(model_dir("tiny.en").join("model.bin")).unwrap();
    std::fs::write(dir.join("model.bin"), &real).unwrap();
    let el = gst::ElementFactory::make("whisperencnpu")
        .property("model", dir.to_str().unwrap())
        .build()
        .unwrap();
    let pipeline = gst::Pipeline::new();
    pipeline.add(&el).unwrap();
    pipeline.set_state(gst::State::Paused).unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
    pipeline.remove(&el).unwrap();

    std::fs::write(dir.join("model.bin"), &real[..real.len() / 2]).unwrap();
    let text = pause_error(&el);
    assert!(text.to_lowercase().contains("truncated"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_model_is_an_error_message() {
    let text = state_change_error(|el| el.set_property("model", "/nonexistent/whisper"));
    assert!(text.contains("/nonexistent/whisper"), "{text}");
}

#[test]
fn corrupt_model_is_an_error_message() {
    let garbage = temp_dir("garbage");
    std::fs::write(garbage.join("model.bin"), b"this is not a model at all").unwrap();
    let text = state_change_error(|el| el.set_property("model", garbage.to_str().unwrap()));
    assert!(
        text.contains("model.bin") || text.contains("CTranslate2"),
        "{text}"
    );

    // The real model cut short: the reader must notice, not read past the end.
    let truncated = temp_dir("truncated");
    let real = std::fs::read(model_dir("tiny.en").join("model.bin")).unwrap();
    std::fs::write(truncated.join("model.bin"), &real[..real.len() / 3]).unwrap();
    let text = state_change_error(|el| el.set_property("model", truncated.to_str().unwrap()));
    assert!(text.to_lowercase().contains("truncated"), "{text}");
    let _ = std::fs::remove_dir_all(garbage);
    let _ = std::fs::remove_dir_all(truncated);
}

#[test]
fn unavailable_backend_is_an_error_message() {
    let text = state_change_error(|el| {
        el.set_property("model", model_dir("tiny.en").to_str().unwrap());
        el.set_property_from_str("backend", "xdna");
    });
    assert!(text.contains("xdna"), "{text}");
}

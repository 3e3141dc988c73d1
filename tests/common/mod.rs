//! Where the tests find models and reference data, and how they compare arrays.
#![allow(dead_code)]

use std::path::PathBuf;

use gst::prelude::*;

/// `../shared` beside the project (WHISPERENCNPU_SHARED overrides).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("WHISPERENCNPU_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

pub fn shared_file(rel: &str) -> PathBuf {
    let path = shared_dir().join(rel);
    assert!(
        path.is_file(),
        "reference file {} is missing (set WHISPERENCNPU_SHARED to the shared/ folder)",
        path.display()
    );
    path
}

/// An installed model (`base`, `tiny.en`); fails with what to run when it is not there.
pub fn model_dir(name: &str) -> PathBuf {
    let dir = gstwhisperencnpu::model::default_model_dir()
        .parent()
        .unwrap()
        .join(name);
    assert!(
        dir.join("model.bin").is_file(),
        "model {name} is not installed in {}: run scripts/fetch-models",
        dir.display()
    );
    dir
}

pub fn read_npy_2d(rel: &str) -> ndarray::Array2<f32> {
    let path = shared_file(rel);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn read_npy_1d(rel: &str) -> ndarray::Array1<f32> {
    let path = shared_file(rel);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// ||ours - reference|| / ||reference||
pub fn relative_l2(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "shapes differ");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        diff += (a as f64 - b as f64).powi(2);
        norm += (b as f64).powi(2);
    }
    (diff / norm).sqrt()
}

/// GStreamer initialised and this crate's plugin registered, once per test binary.
pub fn init_gst() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstwhisperencnpu::plugin_register_static().expect("register the plugin");
    });
}

/// float32 little-endian audio in a buffer with the given PTS.
pub fn f32_buffer(samples: &[f32], pts: gst::ClockTime) -> gst::Buffer {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(pts);
        b.set_duration(gst::ClockTime::from_nseconds(
            samples.len() as u64 * 1_000_000_000 / 16_000,
        ));
    }
    buffer
}

/// The samples of jfk.wav (16-bit PCM WAV; the data chunk is looked up, not assumed at 44).
pub fn jfk_samples() -> Vec<i16> {
    let data = std::fs::read(shared_file("audio/jfk.wav")).unwrap();
    let pos = data.windows(4).position(|w| w == b"data").unwrap();
    data[pos + 8..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The words of jfk.wav, as `words` normalises them.
pub const JFK_WORDS: &str = "and so my fellow americans ask not what your country can do for you \
                             ask what you can do for your country";

/// Lower-case words without punctuation, single-spaced.
pub fn words(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 16-bit mono WAV file's samples as float32 in [-1, 1).
pub fn wav_f32(rel: &str) -> Vec<f32> {
    let data = std::fs::read(shared_file(rel)).unwrap();
    let pos = data.windows(4).position(|w| w == b"data").unwrap();
    data[pos + 8..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

/// Word-level edit distance.
pub fn word_errors(reference: &[&str], hypothesis: &[&str]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut cur = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(r != h))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[hypothesis.len()]
}

/// Puts `element` alone in a pipeline, checks that PAUSED fails, and returns the error text the
/// element posted on the bus.
pub fn pause_error(element: &gst::Element) -> String {
    use gst::prelude::*;
    let pipeline = gst::Pipeline::new();
    pipeline.add(element).unwrap();
    assert!(pipeline.set_state(gst::State::Paused).is_err());
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error message on the bus");
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.view() {
        gst::MessageView::Error(e) => e.error().to_string(),
        _ => unreachable!(),
    }
}

/// `seconds` of uniform white noise at -20 dBFS RMS, seeded (xorshift64): the same every run.
pub fn white_noise(seconds: usize) -> Vec<f32> {
    // Uniform in [-a/2, a/2] has RMS a / sqrt(12); 0.346 / sqrt(12) = 0.1 = -20 dBFS.
    const AMPLITUDE: f32 = 0.346;
    let mut state = 0x1234_5678_9abc_def0u64;
    (0..seconds * 16_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * AMPLITUDE
        })
        .collect()
}

/// What a transcription element gave: text buffers (PTS, duration, text), GAP events,
/// final-transcript events, the caps, and the segment and partial messages.
#[derive(Default)]
pub struct TextOutput {
    pub texts: Vec<(gst::ClockTime, gst::ClockTime, String)>,
    pub gaps: Vec<(gst::ClockTime, gst::ClockTime)>,
    pub finals: usize,
    pub caps: Option<gst::Caps>,
    pub segments: Vec<gst::Structure>,
    pub partials: Vec<gst::Structure>,
    pub timings: Vec<gst::Structure>,
    /// The latency the element answered (asked only when the clock was set).
    pub latency: Option<gst::ClockTime>,
}

/// Runs `el` in a gst-check Harness (which answers the latency query as a live source, with
/// `upstream_latency` if given): `audio` (float32) in buffers of `chunk` samples, then EOS; collects
/// all it pushed and posted.
pub fn run_text_harness(
    el: &gst::Element,
    audio: &[f32],
    chunk: usize,
    upstream_latency: Option<gst::ClockTime>,
) -> TextOutput {
    run_text_harness_at(el, audio, chunk, upstream_latency, None)
}

/// [`run_text_harness`] with the harness's test clock set to the running time `now` once the
/// latency was asked, before the audio comes: the audio then arrives that much after its capture.
pub fn run_text_harness_at(
    el: &gst::Element,
    audio: &[f32],
    chunk: usize,
    upstream_latency: Option<gst::ClockTime>,
    now: Option<gst::ClockTime>,
) -> TextOutput {
    let bus = gst::Bus::new();
    el.set_bus(Some(&bus));
    let mut h = gst_check::Harness::with_element(el, Some("sink"), Some("src"));
    h.set_src_caps_str("audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved");
    if let Some(latency) = upstream_latency {
        h.set_upstream_latency(latency);
    }
    h.play();
    let latency = now.map(|now| {
        let latency = h.query_latency().expect("a latency answer");
        h.set_time(now).expect("the harness's test clock");
        latency
    });
    for (i, piece) in audio.chunks(chunk).enumerate() {
        let pts = gst::ClockTime::from_nseconds((i * chunk) as u64 * 1_000_000_000 / 16_000);
        h.push(f32_buffer(piece, pts)).unwrap();
    }
    h.push_event(gst::event::Eos::new());

    let mut out = TextOutput {
        latency,
        ..TextOutput::default()
    };
    loop {
        match h.pull_until_eos() {
            Ok(Some(b)) => {
                let text = String::from_utf8(b.map_readable().unwrap().to_vec()).expect("UTF-8");
                out.texts
                    .push((b.pts().unwrap(), b.duration().unwrap(), text));
            }
            Ok(None) => break,
            Err(e) => panic!("no EOS: {e}"),
        }
    }
    while let Some(ev) = h.try_pull_event() {
        match ev.view() {
            gst::EventView::Gap(g) => {
                let (pts, duration) = g.get();
                out.gaps.push((pts, duration.unwrap()));
            }
            gst::EventView::CustomDownstream(c)
                if c.structure()
                    .is_some_and(|s| s.name() == "rstranscribe/final-transcript") =>
            {
                out.finals += 1
            }
            gst::EventView::Caps(c) => out.caps = Some(c.caps_owned()),
            _ => {}
        }
    }
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Element(e) = msg.view() {
            let s = e.structure().unwrap();
            match s.name().as_str() {
                "whisperencnpu-segment" => out.segments.push(s.to_owned()),
                "whisperencnpu-partial" => out.partials.push(s.to_owned()),
                "whisperencnpu-timing" => out.timings.push(s.to_owned()),
                _ => {}
            }
        }
    }
    el.set_bus(None);
    out
}

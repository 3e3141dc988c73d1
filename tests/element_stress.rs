//! Issue 10, item 5: the element under random input through gst-check's Harness, seeded so that a
//! failure is reproduced by its seed. Each case is a random stream: buffers of 1 byte to 2
//! windows, the format switched mid-stream, timestamps missing, repeated, backwards and jumping
//! forward (a little, more than a window, up to 10 days), DISCONT, GAP, FLUSH, EOS and state
//! changes at random points (while a window is being processed, as likely as not).
//!
//! Invariants: no panic, error or hang (a watchdog ends the process after `HANG` without
//! progress); in embeddings mode every input sample is in exactly one window (the samples the
//! windows report equal those pushed, with the silence of the holes a window or shorter, which a
//! model of the element's rules counts) and window PTS never go backwards, contiguous unless
//! DISCONT; in transcription mode no text is pushed twice (no overlap) and text PTS never go
//! backwards. Between FLUSH or state changes the streams are checked apart (a flush may seek back).
//!
//! `make test` runs `STRESS_CASES` (default 200) embeddings cases and a tenth as many transcription
//! cases on tiny.en; `scripts/stress` runs many more with other seeds (`STRESS_SEED`).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_check::Harness;

use common::{init_gst, jfk_samples, model_dir};

const RATE: u64 = 16_000;
const NS_PER_SAMPLE: u64 = 1_000_000_000 / RATE;
const WINDOW_SAMPLES: u64 = 163_840;
/// The element's rules (src/whisperenc/imp.rs): a timestamp this far past the expected one is a
/// hole; a hole up to a window is filled with silence, a longer one restarts the windows.
const DISCONT_TOLERANCE_NS: u64 = 40_000_000;
const MAX_FILLED_HOLE_SAMPLES: u64 = WINDOW_SAMPLES;
/// No output, EOS or progress for this long is a hang.
const HANG: Duration = Duration::from_secs(120);
const DEFAULT_CASES: usize = 200;
const DEFAULT_SEED: u64 = 0x5eed_2026_1201;

/// What the case being run did so far, shared with the watchdog (which prints it on a hang).
#[derive(Clone, Default)]
struct Ops(Arc<Mutex<Vec<String>>>);

impl Ops {
    fn push(&self, op: String) {
        self.0.lock().unwrap().push(op);
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n  ")
    }
}

/// xorshift64*: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Log-uniform in [1, max]: as many tiny buffers as large ones.
    fn log_uniform(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let top = 1u64 << self.below(bits + 1);
        (1 + self.below(top)).min(max)
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Format {
    S16,
    F32,
}

impl Format {
    fn bpf(self) -> u64 {
        match self {
            Format::S16 => 2,
            Format::F32 => 4,
        }
    }
    fn caps(self) -> &'static str {
        match self {
            Format::S16 => "audio/x-raw,format=S16LE,rate=16000,channels=1,layout=interleaved",
            Format::F32 => "audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved",
        }
    }
}

/// What the element pushed and posted, in order (a probe on its src pad and a sync bus handler,
/// both on the thread that pushes or posts).
#[derive(Debug)]
enum Out {
    Buffer {
        pts: Option<u64>,
        duration: Option<u64>,
        discont: bool,
        text: Option<String>,
    },
    /// `whisperencnpu-timing`: the audio in the window (ns).
    Timing(u64),
    Eos,
    Error(String),
}

/// The element's sample count, as its rules say it should be (see the module doc).
#[derive(Default, Debug)]
struct Model {
    base: Option<u64>,
    /// Samples in since `base`: real and the silence of filled holes.
    samples_in: u64,
    /// All samples since the start of the stream (across restarts): what the windows must hold.
    total: u64,
    /// Bytes of an incomplete sample.
    pending: u64,
    last_pts: Option<u64>,
}

impl Model {
    fn expected(&self) -> Option<u64> {
        self.base.map(|b| b + self.samples_in * NS_PER_SAMPLE)
    }
    fn hole(&mut self, from: u64, to: u64) {
        self.pending = 0;
        let samples =
            ((u128::from(to - from) * u128::from(RATE) + 500_000_000) / 1_000_000_000) as u64;
        if samples <= MAX_FILLED_HOLE_SAMPLES {
            self.samples_in += samples;
            self.total += samples;
        } else {
            self.base = Some(to);
            self.samples_in = 0;
        }
    }
    /// A buffer of `size` bytes, stamped `pts`, DISCONT or not.
    fn buffer(&mut self, size: u64, pts: Option<u64>, discont: bool, bpf: u64) {
        if self.pending > 0 && discont {
            self.pending = 0;
        }
        match (pts, self.expected()) {
            (Some(p), None) => self.base = Some(p),
            (Some(p), Some(e)) if p > e + DISCONT_TOLERANCE_NS => self.hole(e, p),
            (None, None) => self.base = Some(0),
            _ => {}
        }
        let bytes = self.pending + size;
        self.pending = bytes % bpf;
        self.samples_in += bytes / bpf;
        self.total += bytes / bpf;
    }
    fn gap(&mut self, pts: u64, duration: u64) {
        let base = *self.base.get_or_insert(pts);
        let expected = base + self.samples_in * NS_PER_SAMPLE;
        if pts + duration > expected {
            self.hole(expected, pts + duration);
        }
    }
}

struct Stress {
    h: Harness,
    element: gst::Element,
    out: Arc<Mutex<Vec<Out>>>,
    progress: Arc<AtomicU64>,
    format: Format,
    model: Model,
    /// Where the stream being checked starts in `out`.
    run_start: usize,
    transcription: bool,
    /// Audio to cut buffers from (bytes of the current format are made from it).
    audio: Vec<f32>,
    audio_pos: usize,
    /// What happened in this case, for the failure message.
    ops: Ops,
    bytes_in: u64,
}

impl Stress {
    fn new(mode: &str, latency_mode: &str, progress: Arc<AtomicU64>) -> Stress {
        init_gst();
        let element = gst::ElementFactory::make("whisperencnpu")
            .property("model", model_dir("tiny.en").to_str().unwrap())
            .property("threads", 2u32)
            .property_from_str("mode", mode)
            .property_from_str("latency-mode", latency_mode)
            .build()
            .unwrap();
        let out: Arc<Mutex<Vec<Out>>> = Arc::default();
        let srcpad = element.static_pad("src").unwrap();
        {
            let (out, progress) = (out.clone(), progress.clone());
            srcpad.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
                move |_, info| {
                    progress.fetch_add(1, Ordering::Relaxed);
                    match &info.data {
                        Some(gst::PadProbeData::Buffer(b)) => {
                            let text = b
                                .map_readable()
                                .ok()
                                .and_then(|m| std::str::from_utf8(&m).ok().map(str::to_string));
                            out.lock().unwrap().push(Out::Buffer {
                                pts: b.pts().map(|t| t.nseconds()),
                                duration: b.duration().map(|t| t.nseconds()),
                                discont: b.flags().contains(gst::BufferFlags::DISCONT),
                                text,
                            });
                        }
                        Some(gst::PadProbeData::Event(e)) if e.type_() == gst::EventType::Eos => {
                            out.lock().unwrap().push(Out::Eos)
                        }
                        _ => {}
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }
        let bus = gst::Bus::new();
        {
            let out = out.clone();
            bus.set_sync_handler(move |_, msg| {
                match msg.view() {
                    gst::MessageView::Element(e) => {
                        let s = e.structure().unwrap();
                        if s.name() == "whisperencnpu-timing" {
                            let audio = s.get::<gst::ClockTime>("audio-duration").unwrap();
                            out.lock().unwrap().push(Out::Timing(audio.nseconds()));
                        }
                    }
                    gst::MessageView::Error(e) => out.lock().unwrap().push(Out::Error(format!(
                        "{} ({:?})",
                        e.error(),
                        e.debug()
                    ))),
                    _ => {}
                }
                gst::BusSyncReply::Drop
            });
        }
        element.set_bus(Some(&bus));
        let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
        h.set_src_caps_str(Format::F32.caps());
        h.play();
        let jfk: Vec<f32> = jfk_samples().iter().map(|&s| s as f32 / 32768.0).collect();
        let audio = if mode == "transcription" {
            jfk
        } else {
            // Embeddings do not look at the audio: any signal will do.
            jfk[..RATE as usize].to_vec()
        };
        Stress {
            h,
            element,
            out,
            progress,
            format: Format::F32,
            model: Model::default(),
            run_start: 0,
            transcription: mode == "transcription",
            audio,
            audio_pos: 0,
            ops: Ops::default(),
            bytes_in: 0,
        }
    }

    fn bytes(&mut self, size: u64) -> Vec<u8> {
        let bpf = self.format.bpf() as usize;
        let mut bytes = Vec::with_capacity(size as usize + bpf);
        while bytes.len() < size as usize {
            let s = self.audio[self.audio_pos % self.audio.len()];
            self.audio_pos += 1;
            match self.format {
                Format::S16 => bytes.extend_from_slice(&((s * 32767.0) as i16).to_le_bytes()),
                Format::F32 => bytes.extend_from_slice(&s.to_le_bytes()),
            }
        }
        bytes.truncate(size as usize);
        bytes
    }

    fn drain_harness(&mut self) {
        while self.h.try_pull().is_some() {}
        while self.h.try_pull_event().is_some() {}
    }

    fn fail(&self, seed: u64, case: usize, what: &str) -> ! {
        panic!(
            "seed {seed:#x}, case {case}: {what}\nops:\n  {}\noutput of the stream:\n  {:?}",
            self.ops.text(),
            &self.out.lock().unwrap()[self.run_start..]
        );
    }

    /// Checks the stream since the last boundary; `ended` says it ended with EOS (then every
    /// sample must be in a window).
    fn check_run(&mut self, seed: u64, case: usize, ended: bool) {
        let out = self.out.lock().unwrap();
        let run = &out[self.run_start..];
        let mut last: Option<(u64, u64)> = None;
        let mut seen: Vec<(u64, String)> = Vec::new();
        let (mut buffers, mut timings, mut audio_ns) = (0u64, 0u64, 0u64);
        let mut problem = None;
        for item in run {
            match item {
                Out::Error(e) => problem = Some(format!("error message: {e}")),
                Out::Timing(ns) => {
                    timings += 1;
                    audio_ns += ns;
                }
                Out::Buffer {
                    pts,
                    duration,
                    discont,
                    text,
                } => {
                    buffers += 1;
                    let Some(pts) = *pts else {
                        problem = Some("a buffer without PTS".into());
                        continue;
                    };
                    let duration = duration.unwrap_or(0);
                    if let Some((prev, prev_end)) = last {
                        if pts < prev {
                            problem = Some(format!("PTS went backwards: {prev} then {pts}"));
                        }
                        if self.transcription {
                            if pts < prev_end {
                                problem = Some(format!(
                                    "text at {pts} overlaps the text before it (to {prev_end})"
                                ));
                            }
                        } else if !discont && pts != prev_end {
                            problem = Some(format!(
                                "window at {pts} not DISCONT, the one before ended at {prev_end}"
                            ));
                        }
                    }
                    if let Some(text) = text.as_ref().filter(|_| self.transcription) {
                        if seen.iter().any(|(p, t)| *p == pts && t == text) {
                            problem = Some(format!("text {text:?} at {pts} pushed twice"));
                        }
                        seen.push((pts, text.clone()));
                    }
                    last = Some((pts, pts + duration));
                }
                Out::Eos => {}
            }
        }
        if ended && !self.transcription && problem.is_none() {
            let pushed = self.model.total;
            let in_windows = audio_ns / NS_PER_SAMPLE;
            if timings != buffers {
                problem = Some(format!("{buffers} windows but {timings} timing messages"));
            } else if in_windows != pushed {
                problem = Some(format!(
                    "the windows hold {in_windows} samples, {pushed} went in (model: {:?})",
                    self.model
                ));
            }
        }
        drop(out);
        if let Some(problem) = problem {
            self.fail(seed, case, &problem);
        }
    }

    /// The start of a new stream to check (after a flush, a state change or EOS).
    fn boundary(&mut self) {
        self.run_start = self.out.lock().unwrap().len();
        self.model = Model::default();
        self.drain_harness();
    }

    fn flush(&mut self) {
        self.h.push_event(gst::event::FlushStart::new());
        self.h.push_event(gst::event::FlushStop::new(true));
        self.h
            .push_event(gst::event::Segment::new(&gst::FormattedSegment::<
                gst::ClockTime,
            >::new()));
    }

    fn wait_for_eos(&mut self, seed: u64, case: usize) {
        let mut last_progress = (self.progress.load(Ordering::Relaxed), Instant::now());
        loop {
            if self.out.lock().unwrap()[self.run_start..]
                .iter()
                .any(|o| matches!(o, Out::Eos | Out::Error(_)))
            {
                return;
            }
            self.drain_harness();
            let p = self.progress.load(Ordering::Relaxed);
            if p != last_progress.0 {
                last_progress = (p, Instant::now());
            } else if last_progress.1.elapsed() > HANG {
                self.fail(seed, case, "no EOS: hang");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One random stream, checked.
    fn case(&mut self, rng: &mut Rng, seed: u64, case: usize) {
        self.ops.clear();
        let max_buffer = if self.transcription {
            WINDOW_SAMPLES * 4
        } else {
            2 * WINDOW_SAMPLES * 4
        };
        let ops = 1 + rng.below(12);
        for _ in 0..ops {
            let op = rng.below(100);
            match op {
                // A buffer.
                0..=64 => {
                    let size = rng.log_uniform(max_buffer);
                    let expected = self.model.expected().unwrap_or(0);
                    let pending = self.model.pending > 0;
                    // While a sample is incomplete, a buffer stamped at or before its start
                    // would not continue it (tests/element_hardening.rs has those cases): unstamped.
                    let pts = match rng.below(10) {
                        _ if pending => None,
                        0 | 1 => None,
                        2 => self.model.last_pts,
                        3 => Some(expected.saturating_sub(rng.below(RATE) * NS_PER_SAMPLE)),
                        4 => Some(expected + (rng.below(5 * RATE) + 1_000) * NS_PER_SAMPLE),
                        5 => Some(
                            expected
                                + (WINDOW_SAMPLES + 1 + rng.below(10 * 86_400 * RATE))
                                    * NS_PER_SAMPLE,
                        ),
                        _ => Some(expected),
                    };
                    let discont = rng.chance(5);
                    let bytes = self.bytes(size);
                    self.bytes_in += size;
                    let mut buffer = gst::Buffer::from_mut_slice(bytes);
                    {
                        let b = buffer.get_mut().unwrap();
                        b.set_pts(pts.map(gst::ClockTime::from_nseconds));
                        if discont {
                            b.set_flags(gst::BufferFlags::DISCONT);
                        }
                    }
                    self.ops
                        .push(format!("buffer {size} bytes pts {pts:?} discont {discont}"));
                    self.model.buffer(size, pts, discont, self.format.bpf());
                    if pts.is_some() {
                        self.model.last_pts = pts;
                    }
                    match self.h.push(buffer) {
                        Ok(_) => {}
                        Err(err) => self.fail(seed, case, &format!("push returned {err:?}")),
                    }
                }
                // A GAP: here or after a jump, short or longer than a window.
                65..=74 => {
                    let expected = self.model.expected().unwrap_or(0);
                    let pts = if rng.chance(50) {
                        expected
                    } else {
                        expected + rng.below(3 * RATE) * NS_PER_SAMPLE
                    };
                    let duration = match rng.below(3) {
                        0 => rng.below(RATE) * NS_PER_SAMPLE,
                        1 => rng.below(2 * WINDOW_SAMPLES) * NS_PER_SAMPLE,
                        _ => rng.below(10 * 86_400 * RATE) * NS_PER_SAMPLE,
                    };
                    self.ops.push(format!("GAP at {pts} for {duration}"));
                    self.model.gap(pts, duration);
                    self.h.push_event(
                        gst::event::Gap::builder(gst::ClockTime::from_nseconds(pts))
                            .duration(gst::ClockTime::from_nseconds(duration))
                            .build(),
                    );
                }
                // The format switched.
                75..=81 => {
                    self.format = if self.format == Format::F32 {
                        Format::S16
                    } else {
                        Format::F32
                    };
                    self.ops.push(format!("caps {:?}", self.format));
                    self.model.pending = 0;
                    self.h.set_src_caps_str(self.format.caps());
                }
                // A flush, maybe while a window is processed.
                82..=89 => {
                    self.ops.push("flush".into());
                    self.flush();
                    self.check_run(seed, case, false);
                    self.boundary();
                }
                // A state change down and back, maybe while a window is processed.
                _ => {
                    let state = if rng.chance(50) {
                        gst::State::Ready
                    } else {
                        gst::State::Null
                    };
                    self.ops.push(format!("state {state:?} and back"));
                    self.element.set_state(state).unwrap();
                    self.check_run(seed, case, false);
                    self.boundary();
                    self.element.set_state(gst::State::Playing).unwrap();
                    self.h.push_event(gst::event::StreamStart::new("stress"));
                    self.h.set_src_caps_str(self.format.caps());
                }
            }
            self.progress.fetch_add(1, Ordering::Relaxed);
        }
        // Most cases end with EOS, the others with a flush (at any point of processing).
        if rng.chance(75) {
            self.ops.push("EOS".into());
            self.h.push_event(gst::event::Eos::new());
            self.wait_for_eos(seed, case);
            self.check_run(seed, case, true);
        } else {
            self.check_run(seed, case, false);
        }
        self.flush();
        self.boundary();
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

/// Ends the process when nothing moves for `HANG` (a hang would otherwise never end the test),
/// until the watchdog returned is dropped.
fn watchdog(progress: Arc<AtomicU64>, ops: Ops) -> Watchdog {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = done.clone();
    std::thread::spawn(move || {
        let mut last = (progress.load(Ordering::Relaxed), Instant::now());
        while !watching.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let p = progress.load(Ordering::Relaxed);
            if p != last.0 {
                last = (p, Instant::now());
            } else if last.1.elapsed() > HANG {
                println!(
                    "element_stress: no progress for {HANG:?}: hang in the case of\n  {}",
                    ops.text()
                );
                std::process::exit(2);
            }
        }
    });
    Watchdog(done)
}

struct Watchdog(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn run(mode: &str, latency_mode: &str, cases: usize, seed: u64) {
    let progress = Arc::new(AtomicU64::new(0));
    let mut stress = Stress::new(mode, latency_mode, progress.clone());
    let _watchdog = watchdog(progress, stress.ops.clone());
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    for case in 0..cases {
        stress.case(&mut rng, seed, case);
    }
    let out = stress.out.lock().unwrap();
    let buffers = out
        .iter()
        .filter(|o| matches!(o, Out::Buffer { .. }))
        .count();
    let windows = out.iter().filter(|o| matches!(o, Out::Timing(_))).count();
    drop(out);
    println!(
        "{mode} ({latency_mode}): {cases} cases, seed {seed:#x}: {} MiB of audio in, {windows} \
         windows or steps, {buffers} buffers out, {:.1?}",
        stress.bytes_in >> 20,
        started.elapsed()
    );
    stress.element.set_state(gst::State::Null).unwrap();
}

#[test]
fn random_streams_in_embeddings_mode() {
    let cases = env_number("STRESS_CASES", DEFAULT_CASES as u64) as usize;
    run(
        "embeddings",
        "auto",
        cases,
        env_number("STRESS_SEED", DEFAULT_SEED),
    );
}

#[test]
fn random_streams_in_transcription_mode() {
    let cases = env_number("STRESS_CASES", DEFAULT_CASES as u64) as usize / 20;
    let seed = env_number("STRESS_SEED", DEFAULT_SEED);
    run("transcription", "full", cases, seed ^ 1);
    run("transcription", "low", cases, seed ^ 2);
}

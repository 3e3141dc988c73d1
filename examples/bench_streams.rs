//! Many live streams in one process (issue 12): N elements, each fed distinct speech at real time,
//! sharing one prepared model and one compute pool.
//!
//! ```text
//! cargo run --release --locked --example bench_streams -- --streams N [options] [prop=value ...]
//!     --streams N       elements in the one process (run one N per process: peak memory is
//!                       the process's)
//!     --seconds S       audio per stream (default 60; whole clips, so a little more)
//!     --embeddings      mode=embeddings, as fast as it goes: windows per second instead of delay
//!     --json PATH       also append the result as a JSON line to PATH
//!     prop=value        set on every element, e.g. latency-mode=low model=tiny.en precision=int8
//! ```
//!
//! Stream i gets the clips of `../shared/audio/eval` and `../shared/audio/real` (manifest order,
//! 1 s of silence after each) starting at clip 3i, so no two streams say the same thing at the
//! same time. In transcription mode every stream is `appsrc is-live=true` pushing 20 ms buffers
//! when the pipeline clock reaches their end (a capture card per channel), all on one clock, into
//! `whisperencnpu ! appsink sync=false`; the delay of a text buffer is its arrival running time
//! minus its PTS (its first word), as in `caption_delay`. Printed: the delay per stream (mean,
//! p95), the CPU the process used (cores busy on average), its peak resident memory, how long
//! after the audio's end the last stream finished (`drain`), and whether the streams kept up: no
//! stream's element busy more than 95% of the audio's duration (the sum of its windows'
//! `processing-time`: a stream busier than that cannot follow the audio; in `latency-mode=low`
//! its steps merge instead, so the delay grows) and no stream's mean delay over its last third
//! more than 1 s above its first third's (a stream falling behind drifts). The last line is the
//! result as one JSON object.
mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gst::prelude::*;
use gst_app::{AppSink, AppSrc};

use support::{clips_of, json_number, mean, percentile, shared_dir, ElementProps, RATE};

/// Audio per buffer, as a capture source delivers it.
const BUFFER_MS: u64 = 20;
/// Silence after each clip.
const GAP_SECONDS: f64 = 1.0;
/// Clips between the starts of consecutive streams' audio.
const CLIP_STRIDE: usize = 3;
/// A stream keeps up when its element is busy at most this fraction of the audio's duration...
const KEEPS_UP_BUSY: f64 = 0.95;
/// ...and its delay over the last third is at most this much above the first third's.
const KEEPS_UP_DRIFT: f64 = 1.0;

struct Args {
    streams: usize,
    seconds: f64,
    embeddings: bool,
    json: Option<PathBuf>,
    props: ElementProps,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_streams --streams N [--seconds S] [--embeddings] [--json PATH] [prop=value ...]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        streams: 0,
        seconds: 60.0,
        embeddings: false,
        json: None,
        props: ElementProps::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--streams" => a.streams = value().parse().unwrap_or_else(|_| usage()),
            "--seconds" => a.seconds = value().parse().unwrap_or_else(|_| usage()),
            "--embeddings" => a.embeddings = true,
            "--json" => a.json = Some(PathBuf::from(value())),
            s if a.props.take(s) => {}
            _ => usage(),
        }
    }
    if a.streams == 0 {
        usage();
    }
    a.props.set_default(
        "mode",
        if a.embeddings {
            "embeddings"
        } else {
            "transcription"
        },
    );
    a.props.set_default("language", "en");
    a
}

/// Each stream's audio: the clips from clip `CLIP_STRIDE * i` on, round the list, until `seconds`.
fn stream_audio(streams: usize, seconds: f64) -> Result<Vec<Vec<i16>>, String> {
    let mut clips = clips_of(&shared_dir().join("audio/eval"))?;
    clips.extend(clips_of(&shared_dir().join("audio/real"))?);
    let decoded: Vec<Vec<i16>> = clips
        .iter()
        .map(|c| support::decode_audio(&c.path))
        .collect::<Result<_, _>>()?;
    let gap = (GAP_SECONDS * RATE as f64) as usize;
    let target = (seconds * RATE as f64) as usize;
    Ok((0..streams)
        .map(|i| {
            let mut audio = Vec::new();
            let mut c = CLIP_STRIDE * i;
            while audio.len() < target {
                audio.extend_from_slice(&decoded[c % decoded.len()]);
                audio.resize(audio.len() + gap, 0);
                c += 1;
            }
            audio
        })
        .collect())
}

/// What one stream's sink saw: (PTS, arrival running time) of every buffer, and when EOS came.
#[derive(Default)]
struct StreamOut {
    buffers: Vec<(f64, f64)>,
    eos: Option<f64>,
}

fn secs(t: gst::ClockTime) -> f64 {
    t.nseconds() as f64 / 1e9
}

/// CPU time this process used so far, in seconds (utime + stime of /proc/self/stat, in the
/// kernel's clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

/// Peak resident memory of this process, MiB (VmHWM).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args = parse_args();
    support::init_gst();
    let audio = stream_audio(args.streams, args.seconds).unwrap_or_else(|e| {
        eprintln!("bench_streams: {e}");
        std::process::exit(1)
    });
    let audio_seconds = audio[0].len() as f64 / RATE as f64;
    let caps = gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(RATE as i32)
        .channels(1)
        .build();

    let pipeline = gst::Pipeline::new();
    let mut sources = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..args.streams {
        let src = AppSrc::builder()
            .is_live(!args.embeddings)
            .format(gst::Format::Time)
            .caps(&caps)
            .min_latency(gst::ClockTime::from_mseconds(BUFFER_MS).nseconds() as i64)
            // As fast as it goes in embeddings mode: a bounded queue, the pusher blocks.
            .block(true)
            .max_bytes(RATE as u64 * 2 * 4)
            .build();
        let element = gst::ElementFactory::make("whisperencnpu")
            .name(format!("stream{}", outs.len()))
            .build()
            .expect("whisperencnpu is registered");
        args.props.apply(&element).unwrap_or_else(|e| {
            eprintln!("bench_streams: {e}");
            std::process::exit(2)
        });
        let sink = AppSink::builder().sync(false).build();
        sink.set_property("async", false);
        pipeline
            .add_many([src.upcast_ref(), &element, sink.upcast_ref()])
            .unwrap();
        gst::Element::link_many([src.upcast_ref(), &element, sink.upcast_ref()]).unwrap();
        let out = Arc::new(Mutex::new(StreamOut::default()));
        let (on_sample, on_eos) = (out.clone(), out.clone());
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let arrival = sink.current_running_time();
                    if let (Some(pts), Some(arrival)) =
                        (sample.buffer().and_then(|b| b.pts()), arrival)
                    {
                        on_sample
                            .lock()
                            .unwrap()
                            .buffers
                            .push((secs(pts), secs(arrival)));
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .eos(move |sink| {
                    on_eos.lock().unwrap().eos = sink.current_running_time().map(secs);
                })
                .build(),
        );
        sources.push(src);
        outs.push(out);
    }

    let bus = pipeline.bus().unwrap();
    let started = Instant::now();
    if pipeline.set_state(gst::State::Playing).is_err() {
        eprintln!("bench_streams: the pipeline did not start");
        std::process::exit(1)
    }
    let _ = pipeline.state(gst::ClockTime::from_seconds(60));
    let clock = pipeline.clock().expect("a clock in PLAYING");
    let base_time = pipeline.base_time().expect("a base time in PLAYING");
    let prepared = started.elapsed().as_secs_f64();
    let (cpu_before, wall_before) = (cpu_seconds(), Instant::now());

    let buffer_samples = (RATE as u64 * BUFFER_MS / 1000) as usize;
    let live = !args.embeddings;
    let start = clock.time() - base_time;
    let pushers: Vec<_> = sources
        .into_iter()
        .zip(audio)
        .map(|(src, audio)| {
            let clock = clock.clone();
            std::thread::spawn(move || {
                let mut at = start;
                for chunk in audio.chunks(buffer_samples) {
                    let duration = gst::ClockTime::from_nseconds(
                        chunk.len() as u64 * 1_000_000_000 / RATE as u64,
                    );
                    if live {
                        let _ = clock.new_single_shot_id(base_time + at + duration).wait();
                    }
                    let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                    let mut buffer = gst::Buffer::from_mut_slice(bytes);
                    {
                        let b = buffer.get_mut().unwrap();
                        b.set_pts(at);
                        b.set_duration(duration);
                    }
                    if src.push_buffer(buffer).is_err() {
                        break;
                    }
                    at += duration;
                }
                let _ = src.end_of_stream();
                secs(at)
            })
        })
        .collect();

    let mut failure = None;
    let mut windows = 0u64;
    let mut batched = Vec::new();
    let mut decoder_batched = Vec::new();
    let mut busy = vec![0.0f64; args.streams];
    loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_seconds(300)) else {
            failure = Some("no message for 300 s: stalled".to_string());
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                failure = Some(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "whisperencnpu-timing") {
                    windows += 1;
                    let stream = msg
                        .src()
                        .and_then(|o| o.name().strip_prefix("stream")?.parse::<usize>().ok());
                    if let (Some(i), Ok(t)) = (stream, s.get::<gst::ClockTime>("processing-time")) {
                        busy[i] += secs(t);
                    }
                    if let Ok(b) = s.get::<u32>("encoder-batch") {
                        batched.push(b as f64);
                    }
                    // Windows whose decoding ran token steps (0: none).
                    if let Some(b) = s.get::<f64>("decoder-batch").ok().filter(|&b| b > 0.0) {
                        decoder_batched.push(b);
                    }
                }
            }
            _ => {}
        }
    }
    let wall = wall_before.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let _ = pipeline.set_state(gst::State::Null);
    let audio_end = pushers
        .into_iter()
        .map(|p| p.join().unwrap_or(0.0))
        .fold(0.0, f64::max);
    if let Some(f) = failure {
        eprintln!("bench_streams: {f}");
        std::process::exit(1)
    }

    let rss = peak_rss_mib();
    let mode = args.props.get("mode").unwrap_or("?").to_string();
    let latency_mode = args.props.get("latency-mode").unwrap_or("auto").to_string();
    let mut result = serde_json::json!({
        "streams": args.streams,
        "mode": mode,
        "latency_mode": latency_mode,
        "props": args.props.to_json(),
        "audio_seconds": json_number(audio_seconds),
        "prepare_seconds": json_number(prepared),
        "wall_seconds": json_number(wall),
        "cpu_cores": json_number(cpu / wall),
        "peak_rss_mib": json_number(rss),
        "mean_batch": json_number(mean(&batched)),
        "mean_decoder_batch": json_number(mean(&decoder_batched)),
        "load": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("-"),
    });
    println!(
        "{} streams, {mode} {latency_mode}, {audio_seconds:.0} s of audio each: prepared in \
         {prepared:.1} s, CPU {:.2} cores, peak RSS {rss:.0} MiB, mean encoder batch {:.2}, \
         mean decoder batch {:.2}",
        args.streams,
        cpu / wall,
        mean(&batched),
        mean(&decoder_batched)
    );

    if args.embeddings {
        let rate = windows as f64 / wall;
        println!("{windows} windows in {wall:.1} s: {rate:.2} windows/s");
        result["windows_per_second"] = json_number(rate);
    } else {
        let mut means = Vec::new();
        let mut p95s = Vec::new();
        let mut drifts = Vec::new();
        let mut last_eos: f64 = 0.0;
        for (i, out) in outs.iter().enumerate() {
            let out = out.lock().unwrap();
            let mut delays: Vec<f64> = out.buffers.iter().map(|(pts, at)| at - pts).collect();
            let third = delays.len() / 3;
            let drift = if third > 0 {
                mean(&delays[delays.len() - third..]) - mean(&delays[..third])
            } else {
                0.0
            };
            last_eos = last_eos.max(out.eos.unwrap_or(f64::NAN));
            let m = mean(&delays);
            delays.sort_by(|a, b| a.total_cmp(b));
            let p95 = percentile(&delays, 95.0);
            println!(
                "  stream {i:2}: {:3} buffers, delay mean {m:5.2} s, p95 {p95:5.2} s, drift {drift:+.2} s",
                delays.len()
            );
            means.push(m);
            p95s.push(p95);
            drifts.push(drift);
        }
        let drain = last_eos - audio_end;
        let worst_drift = drifts.iter().copied().fold(f64::MIN, f64::max);
        let busiest = busy.iter().copied().fold(0.0, f64::max) / audio_seconds;
        let keeps_up = busiest <= KEEPS_UP_BUSY && worst_drift <= KEEPS_UP_DRIFT;
        let mean_of_means = mean(&means);
        let worst_p95 = p95s.iter().copied().fold(0.0, f64::max);
        println!(
            "delay mean {mean_of_means:.2} s (streams {:.2}-{:.2}), worst p95 {worst_p95:.2} s, \
             drain {drain:.2} s, worst drift {worst_drift:+.2} s, busiest {:.0}%: {}",
            means.iter().copied().fold(f64::MAX, f64::min),
            means.iter().copied().fold(0.0, f64::max),
            100.0 * busiest,
            if keeps_up { "keeps up" } else { "FALLS BEHIND" }
        );
        result["delay_mean"] = json_number(mean_of_means);
        result["delay_p95_worst"] = json_number(worst_p95);
        result["drain_seconds"] = json_number(drain);
        result["worst_drift"] = json_number(worst_drift);
        result["busiest"] = json_number(busiest);
        result["keeps_up"] = serde_json::Value::Bool(keeps_up);
    }
    let line = result.to_string();
    println!("{line}");
    if let Some(path) = &args.json {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

//! Caption delay of the element under a live source at real time (issue 9).
//!
//! ```text
//! cargo run --release --locked --example caption_delay -- [options] INPUT... [prop=value ...]
//!     INPUT                a file GStreamer decodes, or a folder: its manifest.tsv clips in order
//!     prop=value           set on whisperencnpu (after mode=transcription), e.g. language=en
//!                          latency-mode=low model=tiny.en precision=int8
//!     --loop-to SECONDS    repeat the inputs until this much audio (e.g. 600 for the 10-minute run)
//!     --gap SECONDS        silence after each clip when there are several (default 1)
//!     --buffer-ms MS       audio per buffer (default 20, as pulsesrc's default latency-time is 10
//!                          to 20 ms)
//!     --json PATH          also append the result as a JSON line to PATH
//!     --segments PATH      write the text buffers (start, end in seconds of audio, text) as TSV,
//!                          which `long_join --segments` checks for repeats
//!     --verbose            every text buffer with its delay
//! ```
//!
//! The audio is decoded into memory first, then `appsrc is-live=true format=time
//! do-timestamp=false` brings it to `whisperencnpu mode=transcription ! appsink sync=false` at real
//! time as a capture source would: each buffer is pushed when the pipeline clock reaches its end,
//! stamped with the running time its first sample was captured at. For every text buffer the delay
//! is its arrival running time minus its PTS (the element stamps a segment with its first word's
//! start): what a viewer waits from the first word to its caption, with nothing synchronising. The
//! latency the element reports is asked of its source pad in PLAYING before data flows: a whole
//! pipeline's query would end at `appsink sync=false`, which answers "not live". A syncing sink
//! shows a buffer at PTS + that latency, so a buffer arriving later than it would be late there.
//! Per-minute means (by PTS, without the buffers EOS flushed) show whether the delay drifts over a
//! long run. Where the element posts `whisperencnpu-partial` messages (low mode's interim text),
//! how long after their first and last word they are posted is reported too. A caption whose words
//! were committed later than the latency allows is stamped later by the element so that a syncing
//! sink still shows it (`caption-moved` in its timing message): its delay here is counted from the
//! new PTS, so those captions and how far they were moved are reported on their own line.
//!
//! The last line of the output is the result as one JSON object.
mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gst_app::{AppSink, AppSrc};

use support::{clips_of, json_number, mean, percentile, ElementProps, RATE};

struct Args {
    inputs: Vec<PathBuf>,
    props: ElementProps,
    loop_to: Option<f64>,
    gap: f64,
    buffer_ms: u64,
    json: Option<PathBuf>,
    segments: Option<PathBuf>,
    verbose: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: caption_delay [--loop-to SECONDS] [--gap SECONDS] [--buffer-ms MS] [--json PATH] \
         [--segments PATH] [--verbose] INPUT... [prop=value ...]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        inputs: Vec::new(),
        props: ElementProps::default(),
        loop_to: None,
        gap: 1.0,
        buffer_ms: 20,
        json: None,
        segments: None,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--loop-to" => a.loop_to = Some(value().parse().unwrap_or_else(|_| usage())),
            "--gap" => a.gap = value().parse().unwrap_or_else(|_| usage()),
            "--buffer-ms" => a.buffer_ms = value().parse().unwrap_or_else(|_| usage()),
            "--json" => a.json = Some(PathBuf::from(value())),
            "--segments" => a.segments = Some(PathBuf::from(value())),
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => usage(),
            s if s.starts_with("--") => usage(),
            s if !std::path::Path::new(s).exists() && a.props.take(s) => {}
            s => a.inputs.push(PathBuf::from(s)),
        }
    }
    if a.inputs.is_empty() || a.buffer_ms == 0 {
        usage();
    }
    a.props.set_default("mode", "transcription");
    a
}

/// The audio to bring live: the inputs one after another (with `gap` of silence after each when
/// there are several), repeated up to `loop_to` seconds (whole clips, so no word is cut).
fn build_input(args: &Args) -> Result<(Vec<i16>, String), String> {
    let mut clips = Vec::new();
    for input in &args.inputs {
        clips.extend(clips_of(input)?);
    }
    if clips.is_empty() {
        return Err("no audio in the inputs".into());
    }
    let gap = if clips.len() > 1 || args.loop_to.is_some() {
        (args.gap * RATE as f64) as usize
    } else {
        0
    };
    let mut decoded = Vec::new();
    for clip in &clips {
        decoded.push(support::decode_audio(&clip.path)?);
    }
    let target = args.loop_to.map_or(0, |s| (s * RATE as f64) as usize);
    let mut audio = Vec::new();
    'rounds: loop {
        for clip in &decoded {
            audio.extend_from_slice(clip);
            audio.resize(audio.len() + gap, 0);
            if args.loop_to.is_some() && audio.len() >= target {
                break 'rounds;
            }
        }
        if args.loop_to.is_none() || decoded.iter().all(|c| c.is_empty()) {
            break;
        }
    }
    let mut name = args
        .inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    if clips.len() > 1 {
        name.push_str(&format!(" ({} clips", clips.len()));
        if let Some(s) = args.loop_to {
            name.push_str(&format!(", repeated to {s} s"));
        }
        name.push(')');
    }
    Ok((audio, name))
}

/// A text buffer as it reached the sink.
#[derive(Clone, Debug)]
struct Arrival {
    pts: gst::ClockTime,
    duration: gst::ClockTime,
    arrival: gst::ClockTime,
    text: String,
}

/// The element's answer to a LATENCY query on its source pad.
#[derive(Clone, Copy, Debug)]
struct Reported {
    live: bool,
    min: gst::ClockTime,
    upstream: gst::ClockTime,
}

/// What one live run measured.
struct Run {
    arrivals: Vec<Arrival>,
    reported: Option<Reported>,
    /// Running time of the first audio sample and of EOS.
    audio_start: gst::ClockTime,
    eos_at: gst::ClockTime,
    /// The `processing-time` of every window, from the element's timing messages.
    processing: Vec<f64>,
    /// The slowest window: its PTS, processing and decoder time (all temperatures tried).
    slowest: Option<(f64, f64, f64)>,
    /// `whisperencnpu-partial` messages (low mode's uncommitted hypothesis): running time when
    /// posted, and their `start` and `end`.
    partials: Vec<Partial>,
    /// The `caption-moved` of timing messages: captions the element stamped later than their
    /// first word so as to be on time at a syncing sink (their words came later than the latency).
    moved: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
struct Partial {
    posted: gst::ClockTime,
    start: gst::ClockTime,
    end: gst::ClockTime,
}

fn run_live(audio: Vec<i16>, args: &Args) -> Result<Run, String> {
    let caps = gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(RATE as i32)
        .channels(1)
        .build();
    let buffer_duration = gst::ClockTime::from_mseconds(args.buffer_ms);
    let src = AppSrc::builder()
        .is_live(true)
        .format(gst::Format::Time)
        .do_timestamp(false)
        .caps(&caps)
        // A capture source reports one buffer of latency.
        .min_latency(buffer_duration.nseconds() as i64)
        .build();
    let element = gst::ElementFactory::make("whisperencnpu")
        .build()
        .map_err(|_| "whisperencnpu is not registered".to_string())?;
    args.props.apply(&element)?;
    let sink = AppSink::builder().sync(false).build();
    // Not waiting for a first text buffer to complete the state change: in a live pipeline the
    // capture starts at PLAYING whatever the sink has.
    sink.set_property("async", false);
    let pipeline = gst::Pipeline::new();
    pipeline
        .add_many([src.upcast_ref(), &element, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([src.upcast_ref(), &element, sink.upcast_ref()])
        .map_err(|e| e.to_string())?;

    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let arrivals_in = arrivals.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                // Taken first: this is when the text reached the sink.
                let arrival = sink.current_running_time();
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let text = buffer
                    .map_readable()
                    .map(|m| String::from_utf8_lossy(&m).into_owned())
                    .unwrap_or_default();
                if let (Some(pts), Some(arrival)) = (buffer.pts(), arrival) {
                    arrivals_in.lock().unwrap().push(Arrival {
                        pts,
                        duration: buffer.duration().unwrap_or(gst::ClockTime::ZERO),
                        arrival,
                        text,
                    });
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    let bus = pipeline.bus().expect("a pipeline has a bus");
    if pipeline.set_state(gst::State::Playing).is_err() {
        let _ = pipeline.set_state(gst::State::Null);
        return Err(bus_error(&bus).unwrap_or_else(|| "the pipeline did not start".into()));
    }
    let _ = pipeline.state(gst::ClockTime::from_seconds(10));
    let (Some(clock), Some(base_time)) = (pipeline.clock(), pipeline.base_time()) else {
        let _ = pipeline.set_state(gst::State::Null);
        return Err("the pipeline has no clock in PLAYING".into());
    };

    // Asked of the element itself: upstream's latency plus its own, before any data flows.
    let latency_of = |element: &gst::Element| {
        let mut q = gst::query::Latency::new();
        let pad = element.static_pad("src").expect("a src pad");
        pad.query(&mut q).then(|| q.result())
    };
    let reported = latency_of(&element).map(|(live, min, _max)| Reported {
        live,
        min,
        upstream: latency_of(src.upcast_ref()).map_or(gst::ClockTime::ZERO, |(_, min, _)| min),
    });

    // Interim text is stamped where it is posted (the element's thread), not when this thread
    // gets to it.
    let partials = Arc::new(Mutex::new(Vec::new()));
    {
        let partials = partials.clone();
        let clock = clock.clone();
        bus.set_sync_handler(move |_, msg| {
            if let gst::MessageView::Element(e) = msg.view() {
                if let Some(s) = e
                    .structure()
                    .filter(|s| s.name() == "whisperencnpu-partial")
                {
                    let posted = clock.time().saturating_sub(base_time);
                    if let (Ok(start), Ok(end)) = (
                        s.get::<gst::ClockTime>("start"),
                        s.get::<gst::ClockTime>("end"),
                    ) {
                        partials
                            .lock()
                            .unwrap()
                            .push(Partial { posted, start, end });
                    }
                }
            }
            gst::BusSyncReply::Pass
        });
    }

    // The capture thread: every buffer goes out when the clock reaches its end.
    let buffer_samples = (RATE as u64 * args.buffer_ms / 1000) as usize;
    let audio_start = clock.time() - base_time;
    let pusher = {
        let src = src.clone();
        let clock = clock.clone();
        std::thread::spawn(move || {
            let mut start = audio_start;
            for chunk in audio.chunks(buffer_samples) {
                let duration =
                    gst::ClockTime::from_nseconds(chunk.len() as u64 * 1_000_000_000 / RATE as u64);
                let end = start + duration;
                let _ = clock.new_single_shot_id(base_time + end).wait();
                let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                let mut buffer = gst::Buffer::from_mut_slice(bytes);
                {
                    let b = buffer.get_mut().unwrap();
                    b.set_pts(start);
                    b.set_duration(duration);
                }
                if src.push_buffer(buffer).is_err() {
                    break;
                }
                start = end;
            }
            let eos_at = clock.time() - base_time;
            let _ = src.end_of_stream();
            eos_at
        })
    };

    let mut processing = Vec::new();
    let mut moved = Vec::new();
    let mut slowest: Option<(f64, f64, f64)> = None;
    let mut failure = None;
    // A window's timing message comes at least every window while audio flows, so a silent bus for
    // this long is a stall.
    let stall = gst::ClockTime::from_seconds(120);
    loop {
        let Some(msg) = bus.timed_pop(stall) else {
            failure = Some(format!("no message for {stall}: the pipeline stalled"));
            let _ = src.end_of_stream();
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                failure = Some(format!("pipeline error: {} ({:?})", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "whisperencnpu-timing") {
                    let time = |f: &str| s.get::<gst::ClockTime>(f).ok().map(secs);
                    moved.extend(time("caption-moved"));
                    if let Some(t) = time("processing-time") {
                        processing.push(t);
                        if slowest.is_none_or(|(_, p, _)| t > p) {
                            let pts = time("pts").map_or(f64::NAN, |p| p - secs(audio_start));
                            slowest = Some((pts, t, time("decoder-time").unwrap_or(f64::NAN)));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    let eos_at = pusher.join().map_err(|_| "the capture thread panicked")?;
    if let Some(f) = failure {
        return Err(f);
    }
    let arrivals = std::mem::take(&mut *arrivals.lock().unwrap());
    let partials = std::mem::take(&mut *partials.lock().unwrap());
    Ok(Run {
        arrivals,
        reported,
        audio_start,
        eos_at,
        processing,
        slowest,
        partials,
        moved,
    })
}

fn bus_error(bus: &gst::Bus) -> Option<String> {
    let msg =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(e.error().to_string()),
        _ => None,
    }
}

/// The 1-minute load average (the machine is shared: a busy one delays every window).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

fn secs(t: gst::ClockTime) -> f64 {
    t.nseconds() as f64 / 1e9
}

/// Delay statistics of a set of arrivals.
struct Stats {
    n: usize,
    mean: f64,
    p95: f64,
    max: f64,
}

fn stats(delays: &[f64]) -> Stats {
    let mut sorted = delays.to_vec();
    sorted.sort_by(f64::total_cmp);
    Stats {
        n: sorted.len(),
        mean: mean(&sorted),
        p95: percentile(&sorted, 95.0),
        max: sorted.last().copied().unwrap_or(f64::NAN),
    }
}

fn main() {
    let args = parse_args();
    support::init_gst();
    let (audio, name) = build_input(&args).unwrap_or_else(|e| {
        eprintln!("caption_delay: {e}");
        std::process::exit(1)
    });
    let audio_seconds = support::seconds(audio.len());
    let props = args
        .props
        .0
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "caption delay: {name}\n  {audio_seconds:.1} s of audio, live at real time in {} ms buffers; \
         whisperencnpu {props} ! appsink sync=false",
        args.buffer_ms
    );
    let load_start = load_average();
    let run = run_live(audio, &args).unwrap_or_else(|e| {
        eprintln!("caption_delay: {e}");
        std::process::exit(1)
    });

    let load_end = load_average();
    let delay = |a: &Arrival| secs(a.arrival) - secs(a.pts);
    let delays: Vec<f64> = run.arrivals.iter().map(delay).collect();
    let all = stats(&delays);
    // Text that came out only because EOS flushed the last window: no live stream ends that way.
    let live_edge: Vec<f64> = run
        .arrivals
        .iter()
        .filter(|a| a.arrival < run.eos_at)
        .map(delay)
        .collect();
    let before_eos = stats(&live_edge);
    let reported = run.reported.map(|r| secs(r.min));
    let late = reported.map(|l| delays.iter().filter(|&&d| d > l).count());

    // Means by minute of the audio (by PTS), and the first and the last full minute; without the
    // buffers EOS flushed, which come early and would make the last minute look better.
    let minute = |a: &Arrival| ((secs(a.pts) - secs(run.audio_start)).max(0.0) / 60.0) as usize;
    let minutes = run.arrivals.iter().map(minute).max().map_or(0, |m| m + 1);
    let minute_means: Vec<f64> = (0..minutes)
        .map(|m| {
            let d: Vec<f64> = run
                .arrivals
                .iter()
                .filter(|a| minute(a) == m && a.arrival < run.eos_at)
                .map(delay)
                .collect();
            mean(&d)
        })
        .collect();
    let full_minutes = (audio_seconds / 60.0) as usize;
    let last_full = full_minutes.checked_sub(1);
    let first_mean = minute_means.first().copied().unwrap_or(f64::NAN);
    let last_mean = last_full
        .and_then(|m| minute_means.get(m).copied())
        .unwrap_or(f64::NAN);

    if let Some(path) = &args.segments {
        let tsv: String = run
            .arrivals
            .iter()
            .map(|a| {
                let start = secs(a.pts) - secs(run.audio_start);
                let end = start + secs(a.duration);
                format!("{start:.6}\t{end:.6}\t{}\n", a.text.trim())
            })
            .collect();
        if let Err(e) = std::fs::write(path, tsv) {
            eprintln!("caption_delay: {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if args.verbose {
        for (a, d) in run.arrivals.iter().zip(&delays) {
            println!(
                "  [{:8.2} +{:5.2}] arrived {:8.2}  delay {d:6.2}  {}",
                secs(a.pts) - secs(run.audio_start),
                secs(a.duration),
                secs(a.arrival) - secs(run.audio_start),
                a.text.trim()
            );
        }
    }
    let s = |v: f64| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.2} s")
        }
    };
    println!("  text buffers            {}", all.n);
    println!(
        "  delay mean / p95 / max  {} / {} / {}",
        s(all.mean),
        s(all.p95),
        s(all.max)
    );
    println!(
        "  before EOS only         {} buffers: {} / {} / {} ({} came after the audio ended, \
         flushed by EOS)",
        before_eos.n,
        s(before_eos.mean),
        s(before_eos.p95),
        s(before_eos.max),
        all.n - before_eos.n
    );
    match run.reported {
        Some(r) => println!(
            "  reported latency        {} (live {}; upstream {} + element {})",
            s(secs(r.min)),
            r.live,
            s(secs(r.upstream)),
            s(secs(r.min.saturating_sub(r.upstream)))
        ),
        None => println!("  reported latency        the query failed"),
    }
    println!(
        "  later than reported     {}",
        late.map_or("-".into(), |l| l.to_string())
    );
    println!(
        "  minute means before EOS {}",
        minute_means
            .iter()
            .enumerate()
            .map(|(m, v)| format!("{}: {}", m + 1, s(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(last) = last_full.filter(|&l| l > 0) {
        println!(
            "  first / last full minute {} / {} (minute {}; difference {})",
            s(first_mean),
            s(last_mean),
            last + 1,
            s(last_mean - first_mean)
        );
    }
    // Interim text: how far behind the live edge its first and last words are when it is posted.
    let partial_start: Vec<f64> = run
        .partials
        .iter()
        .map(|p| secs(p.posted) - secs(p.start))
        .collect();
    let partial_end: Vec<f64> = run
        .partials
        .iter()
        .map(|p| secs(p.posted) - secs(p.end))
        .collect();
    let partial_start_stats = stats(&partial_start);
    let partial_end_stats = stats(&partial_end);
    if !run.partials.is_empty() {
        println!(
            "  partial hypotheses      {}: posted {} / {} / {} after their first word, {} / {} / {} \
             after their last",
            run.partials.len(),
            s(partial_start_stats.mean),
            s(partial_start_stats.p95),
            s(partial_start_stats.max),
            s(partial_end_stats.mean),
            s(partial_end_stats.p95),
            s(partial_end_stats.max)
        );
    }
    let moved_max = run.moved.iter().copied().fold(0.0, f64::max);
    println!(
        "  moved to be on time     {} (by up to {}: their first words came that much later than \
         the reported latency)",
        run.moved.len(),
        s(moved_max)
    );
    let processing_max = run.processing.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "  windows                 {} (processing mean {}, max {})",
        run.processing.len(),
        s(mean(&run.processing)),
        s(processing_max)
    );
    if let Some((pts, processing, decoder)) = run.slowest {
        println!(
            "  slowest window          at {pts:.2} s: processing {}, of which decoding {}",
            s(processing),
            s(decoder)
        );
    }
    println!(
        "  load average            {} at the start, {} at the end (2 cores; others' jobs count)",
        load_start, load_end
    );

    let json = serde_json::json!({
        "input": name,
        "audio_s": json_number(audio_seconds),
        "buffer_ms": args.buffer_ms,
        "props": args.props.to_json(),
        "n": all.n,
        "mean_s": json_number(all.mean),
        "p95_s": json_number(all.p95),
        "max_s": json_number(all.max),
        "before_eos": {
            "n": before_eos.n,
            "mean_s": json_number(before_eos.mean),
            "p95_s": json_number(before_eos.p95),
            "max_s": json_number(before_eos.max),
        },
        "reported_latency_s": reported.map(json_number),
        "reported_live": run.reported.map(|r| r.live),
        "upstream_latency_s": run.reported.map(|r| json_number(secs(r.upstream))),
        "late": late,
        "moved": run.moved.len(),
        "moved_max_s": json_number(moved_max),
        // Every buffer's delay, in arrival order, for other thresholds later (e.g. transcriberbin's
        // latency=3000 makes the element report 14.26 s).
        "delays_s": delays.iter().map(|&d| json_number(d)).collect::<Vec<_>>(),
        "minute_means_s": minute_means.iter().map(|&v| json_number(v)).collect::<Vec<_>>(),
        "first_minute_mean_s": json_number(first_mean),
        "last_full_minute_mean_s": json_number(last_mean),
        "windows": run.processing.len(),
        "processing_mean_s": json_number(mean(&run.processing)),
        "processing_max_s": json_number(processing_max),
        "slowest_window": run.slowest.map(|(pts, p, d)| serde_json::json!({
            "pts_s": json_number(pts), "processing_s": json_number(p), "decoder_s": json_number(d),
        })),
        "partials": {
            "n": run.partials.len(),
            "after_first_word_mean_s": json_number(partial_start_stats.mean),
            "after_first_word_p95_s": json_number(partial_start_stats.p95),
            "after_last_word_mean_s": json_number(partial_end_stats.mean),
            "after_last_word_p95_s": json_number(partial_end_stats.p95),
        },
        "loadavg_start": load_start,
        "loadavg_end": load_end,
    });
    println!("{json}");
    if let Some(path) = &args.json {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{json}"));
        if let Err(e) = written {
            eprintln!("caption_delay: {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

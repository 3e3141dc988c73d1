//! Soak (issue 10, item 6): long runs of the element at full speed, with its resident memory
//! sampled every 10 s of audio, which must stay flat after the first minute. Real speech: the
//! clips of `../shared/audio/real` and `eval` and `jfk.wav`, joined and repeated to the length
//! asked, pushed through `appsrc ! whisperencnpu ! fakesink` as 0.5 s S16LE buffers.
//!
//! `scripts/soak [--embeddings-minutes 60] [--transcription-minutes 20] [prop=value ...]`
//! prints, per run, the memory at every audio minute, the first and the last minute's peak, and
//! whether it grew more than `FLAT_MIB` after the first minute (the exit status says so too).

#[path = "support/mod.rs"]
mod support;

use std::time::Instant;

use gst::prelude::*;
use gst_app::AppSrc;

use support::{clips_of, decode_audio, init_gst, shared_dir, ElementProps, RATE};

/// Growth after the first minute that still counts as flat (issue 10).
const FLAT_MIB: f64 = 5.0;
/// Memory is sampled this often, in seconds of audio.
const SAMPLE_EVERY_S: usize = 10;
/// Audio per buffer, as a live source would push it (0.5 s).
const BUFFER_SAMPLES: usize = RATE as usize / 2;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The speech of `../shared/audio`, joined with 1 s of silence after each clip.
fn speech() -> Result<Vec<i16>, String> {
    let shared = shared_dir().join("audio");
    let mut clips = clips_of(&shared.join("real"))?;
    clips.extend(clips_of(&shared.join("eval"))?);
    clips.extend(clips_of(&shared.join("jfk.wav"))?);
    let mut joined = Vec::new();
    for clip in clips {
        joined.extend(decode_audio(&clip.path)?);
        joined.extend(std::iter::repeat_n(0i16, RATE as usize));
    }
    Ok(joined)
}

/// One run: `minutes` of `speech` repeated through the element with `props`; memory (MiB) at every
/// `SAMPLE_EVERY_S` seconds of audio.
fn run(speech: &[i16], minutes: usize, props: &ElementProps) -> Result<Vec<f64>, String> {
    let total = minutes * 60 * RATE as usize;
    let caps = gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::S16le)
        .rate(RATE as i32)
        .channels(1)
        .build();
    let src = AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .block(true)
        .max_bytes(4 * BUFFER_SAMPLES as u64 * 2)
        .build();
    let element = gst::ElementFactory::make("whisperencnpu")
        .build()
        .map_err(|e| e.to_string())?;
    props.apply(&element)?;
    let sink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .build()
        .map_err(|e| e.to_string())?;
    let pipeline = gst::Pipeline::new();
    pipeline
        .add_many([src.upcast_ref(), &element, &sink])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([src.upcast_ref(), &element, &sink]).map_err(|e| e.to_string())?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| e.to_string())?;

    let mut memory = Vec::new();
    let mut pushed = 0usize;
    while pushed < total {
        let n = BUFFER_SAMPLES.min(total - pushed);
        let bytes: Vec<u8> = (pushed..pushed + n)
            .flat_map(|i| speech[i % speech.len()].to_le_bytes())
            .collect();
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_nseconds(
                pushed as u64 * 1_000_000_000 / u64::from(RATE),
            ));
        src.push_buffer(buffer)
            .map_err(|e| format!("push: {e:?}"))?;
        pushed += n;
        if pushed.is_multiple_of(SAMPLE_EVERY_S * RATE as usize) {
            memory.push(rss_mib());
        }
    }
    src.end_of_stream().map_err(|e| format!("EOS: {e:?}"))?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::NONE,
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let result = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(e)) => Err(format!("{}", e.error())),
        _ => Ok(memory),
    };
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Prints the memory of one run; whether it stayed flat.
fn report(name: &str, memory: &[f64], seconds: f64) -> bool {
    let per_minute = 60 / SAMPLE_EVERY_S;
    println!(
        "{name}: {} min of audio in {seconds:.0} s",
        memory.len() / per_minute
    );
    for (minute, m) in memory.chunks(per_minute).enumerate() {
        let peak = m.iter().cloned().fold(0.0, f64::max);
        println!("  minute {:>3}: {peak:.1} MiB", minute + 1);
    }
    let first = memory[..per_minute.min(memory.len())]
        .iter()
        .cloned()
        .fold(0.0, f64::max);
    let last = memory[memory.len().saturating_sub(per_minute)..]
        .iter()
        .cloned()
        .fold(0.0, f64::max);
    let grew = last - first;
    let flat = grew <= FLAT_MIB;
    // A warm-up (a larger cache once, the allocator's high-water mark) stops; a leak goes on: the
    // second half tells them apart.
    let half = memory[memory.len() / 2];
    println!(
        "{name}: second half {half:.1} -> {last:.1} MiB ({:+.1} MiB)",
        last - half
    );
    println!(
        "{name}: first minute {first:.1} MiB, last minute {last:.1} MiB, grew {grew:+.1} MiB: {}",
        if flat { "flat" } else { "GROWING" }
    );
    flat
}

fn main() {
    init_gst();
    let mut minutes = [("embeddings", 60usize), ("transcription", 20usize)];
    let mut props = ElementProps::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--embeddings-minutes" => 0,
            "--transcription-minutes" => 1,
            _ if props.take(&arg) => continue,
            _ => {
                println!(
                    "soak [--embeddings-minutes N] [--transcription-minutes N] [prop=value ...]"
                );
                std::process::exit(2);
            }
        };
        minutes[slot].1 = args.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    let speech = speech().unwrap_or_else(|e| {
        println!("soak: {e}");
        std::process::exit(1);
    });
    let mut flat = true;
    for (mode, minutes) in minutes.into_iter().filter(|(_, m)| *m > 0) {
        let mut props = props.clone();
        props.set_default("mode", mode);
        if mode == "transcription" {
            props.set_default("language", "en");
        }
        let started = Instant::now();
        match run(&speech, minutes, &props) {
            Ok(memory) if !memory.is_empty() => {
                flat &= report(mode, &memory, started.elapsed().as_secs_f64())
            }
            Ok(_) => println!("{mode}: too short to sample"),
            Err(e) => {
                println!("{mode}: {e}");
                flat = false;
            }
        }
    }
    std::process::exit(if flat { 0 } else { 1 });
}

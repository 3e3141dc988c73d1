//! How loud the audio is, in 20 ms frames (one timestamp step): where speech is, by level.
//!
//! These judge the audio only, never the text: they move times and seek positions, and decide that
//! a window is digital silence before the model runs.

use super::options::SAMPLES_PER_TIMESTAMP;
use crate::mel::SAMPLE_RATE;

/// Samples per frame: one timestamp step.
const FRAME: usize = SAMPLES_PER_TIMESTAMP as usize;
/// A frame is loud when it is this much (dB) above the window's noise floor ...
const ABOVE_FLOOR_DB: f64 = 12.0;
/// ... and above this level (dBFS), whatever the floor.
const MIN_LOUD_DBFS: f64 = -55.0;
/// The noise floor: this quantile of the window's frame levels.
const FLOOR_QUANTILE_DIVISOR: usize = 10;
/// Frames of margin kept around the loud part when narrowing a segment (0.1 s).
const TRIM_PAD_FRAMES: u64 = 5;
/// Gaps shorter than this many frames (0.2 s) stay inside a word's loud island (a stop
/// consonant's closure is shorter).
const ISLAND_MAX_GAP: usize = 10;

/// A span of the stream, in samples, `start <= end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    pub fn new(start: u64, end: u64) -> Span {
        Span { start, end }
    }
}

/// Mean-square level of each 20 ms frame, in dBFS.
fn frame_levels(samples: &[f32]) -> impl Iterator<Item = f64> + '_ {
    samples.chunks(FRAME).map(|c| {
        let ms = c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / c.len() as f64;
        10.0 * ms.max(1e-12).log10()
    })
}

/// Whether the loudest 20 ms of `samples` are below `threshold_db` (dBFS RMS).
pub(super) fn is_quiet(samples: &[f32], threshold_db: f64) -> bool {
    frame_levels(samples).fold(f64::NEG_INFINITY, f64::max) < threshold_db
}

/// For every 20 ms frame of `samples`: whether it is louder than the samples' noise floor (their
/// 10th percentile) by 12 dB, and than -55 dBFS.
pub(super) fn loud_frames(samples: &[f32]) -> Vec<bool> {
    let db: Vec<f64> = frame_levels(samples).collect();
    let mut sorted = db.clone();
    sorted.sort_by(f64::total_cmp);
    let floor = sorted
        .get(sorted.len() / FLOOR_QUANTILE_DIVISOR)
        .copied()
        .unwrap_or(-120.0);
    let threshold = (floor + ABOVE_FLOOR_DB).max(MIN_LOUD_DBFS);
    db.iter().map(|&d| d > threshold).collect()
}

/// The frames of `loud` (frames from stream sample `window_start`) that `[start, end]` covers.
fn frame_range(loud: &[bool], window_start: u64, start: u64, end: u64) -> std::ops::Range<usize> {
    let sps = SAMPLES_PER_TIMESTAMP;
    let first = (start.saturating_sub(window_start) / sps) as usize;
    let last = (end.saturating_sub(window_start).div_ceil(sps) as usize).min(loud.len());
    first..last
}

/// Narrows `[start, end]` (stream samples) to the loud frames in it, with 0.1 s to spare on each
/// side: Whisper often starts a segment where the previous one ended, before a pause. Never widens
/// it; leaves it as it is when nothing in it is loud.
pub(super) fn trim_to_speech(loud: &[bool], window_start: u64, start: u64, end: u64) -> Span {
    let sps = SAMPLES_PER_TIMESTAMP;
    let range = frame_range(loud, window_start, start, end);
    if range.is_empty() {
        return Span::new(start, end);
    }
    let first = range.start;
    let frames = &loud[range];
    let (Some(a), Some(b)) = (
        frames.iter().position(|&l| l),
        frames.iter().rposition(|&l| l),
    ) else {
        return Span::new(start, end);
    };
    let pad = TRIM_PAD_FRAMES * sps;
    let new_start = (window_start + (first + a) as u64 * sps)
        .saturating_sub(pad)
        .max(start);
    let new_end = (window_start + (first + b + 1) as u64 * sps + pad).min(end);
    Span::new(new_start, new_end.max(new_start))
}

/// A run of loud frames with short gaps.
#[derive(Clone, Copy)]
struct Island {
    first: usize,
    last: usize,
    loud_frames: usize,
}

/// A word's span narrowed to its loudest island: the alignment runs words edge to edge, so a
/// word after a pause starts where the one before it ended. Islands are runs of loud frames
/// with gaps under 0.2 s; the one with the most loud frames is kept. Unchanged when nothing in it
/// is loud.
pub(super) fn loudest_island(loud: &[bool], window_start: u64, start: u64, end: u64) -> Span {
    let sps = SAMPLES_PER_TIMESTAMP;
    let range = frame_range(loud, window_start, start, end);
    if range.is_empty() {
        return Span::new(start, end);
    }
    let first = range.start;
    let bigger = |a: Option<Island>, b: Option<Island>| match (a, b) {
        (Some(x), Some(y)) if x.loud_frames > y.loud_frames => Some(x),
        (Some(x), None) => Some(x),
        (_, y) => y,
    };
    let mut best: Option<Island> = None;
    let mut cur: Option<Island> = None;
    for (i, _) in loud[range].iter().enumerate().filter(|(_, &l)| l) {
        cur = match cur {
            Some(c) if i - c.last <= ISLAND_MAX_GAP => Some(Island {
                last: i,
                loud_frames: c.loud_frames + 1,
                ..c
            }),
            done => {
                best = bigger(done, best);
                Some(Island {
                    first: i,
                    last: i,
                    loud_frames: 1,
                })
            }
        };
    }
    let Some(island) = bigger(cur, best) else {
        return Span::new(start, end);
    };
    let at = |f: usize| window_start + (first + f) as u64 * sps;
    let new_start = at(island.first).max(start);
    Span::new(new_start, at(island.last + 1).min(end).max(new_start))
}

/// Seconds of loud frames in `[start, end]` (stream samples).
pub(super) fn speech_seconds(loud: &[bool], window_start: u64, start: u64, end: u64) -> f64 {
    let range = frame_range(loud, window_start, start, end);
    let frames = loud
        .get(range)
        .map_or(0, |f| f.iter().filter(|&&l| l).count());
    frames as f64 * SAMPLES_PER_TIMESTAMP as f64 / f64::from(SAMPLE_RATE)
}

/// The frame where speech begins that runs up to the end of `loud` (within 0.5 s) after a pause of
/// at least 0.5 s; `None` when the frames end quiet or speech runs all along.
pub(super) fn trailing_speech_onset(loud: &[bool]) -> Option<usize> {
    let half_second = (u64::from(SAMPLE_RATE) / SAMPLES_PER_TIMESTAMP) as usize / 2;
    let last_loud = loud.iter().rposition(|&l| l)?;
    if last_loud + half_second < loud.len() {
        return None;
    }
    let mut onset = last_loud;
    let mut quiet = 0;
    for i in (0..last_loud).rev() {
        if loud[i] {
            onset = i;
            quiet = 0;
        } else {
            quiet += 1;
            if quiet >= half_second {
                return Some(onset);
            }
        }
    }
    None
}

//! Long runs through the element (issue 9, "Long runs repeat"): the joins of jfk.wav and the
//! evaluation clips, and a check of what came out for repeated sentences and zero-length segments.
//!
//! ```text
//! cargo run --release --locked --example long_join -- [--rounds N,N,...] [--build-only]
//!     [--json PATH] [--verbose] [prop=value ...]
//!     --rounds 1,2,7   the joins to build and check (default 2: 343 s; 7 is the 20-minute run)
//!     --build-only     write the joins and their reference text, run nothing
//!     --recheck        check the segments an earlier run with the same properties wrote
//!     --segments PATH  check these segments instead (start, end, text a line; one --rounds
//!                      value), e.g. the live run `caption_delay --segments PATH
//!                      target/long-join/join-2x.wav latency-mode=low` wrote
//!     prop=value       set on whisperencnpu after mode=transcription language=en, e.g.
//!                      previous-text-prompt=false latency-mode=low model=tiny.en
//! ```
//!
//! A round is the clips of `../shared/audio/eval/manifest.tsv` in manifest order (jfk.wav first),
//! each followed by 1 s of silence: 171.6 s. The joins are written to `target/long-join/` as
//! `join-Nx.wav` with `join-Nx.txt` (the reference, one clip a line); the element's segments go to
//! `join-Nx.segments.tsv` (start, end, text; `join-Nx.<prop=value,...>.segments.tsv` with other
//! properties).
//!
//! The file goes through `filesrc ! wavparse ! audioconvert ! audioresample ! whisperencnpu !
//! fakesink` as fast as it decodes, and the `whisperencnpu-segment` messages are checked, round by
//! round (a segment belongs to the round its start falls in):
//! - zero-length segments: end not after start;
//! - repeated sentences: the text is cut into sentences at `.`, `?` and `!`; each sentence of at
//!   least 4 normalised words stands for the round's reference sentence it is closest to (at most
//!   half its words wrong), else for itself; a sentence said more often than the round's reference
//!   says it (and more than once) is repeated, each extra time counted once;
//! - word error rate, overall and per round, with the project's normaliser (`transcribe::text`).
//!
//! The last line of the output is the result as one JSON object per join.
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use gst::prelude::*;
use gstwhisperencnpu::transcribe::text::{normalize_english, word_errors};

use support::{json_number, ElementProps, RATE};

/// Silence after each clip in a round (the issue's joins).
const GAP_SECONDS: f64 = 1.0;
/// A hypothesis sentence shorter than this (in normalised words) is not checked for repetition:
/// short phrases ("thank you") recur legitimately.
const MIN_SENTENCE_WORDS: usize = 4;
/// A hypothesis sentence stands for a reference sentence when at most this share of the
/// reference's words differ (a misheard sentence is still that sentence).
const SAME_SENTENCE_MAX_ERROR: f64 = 0.5;

struct Args {
    rounds: Vec<usize>,
    build_only: bool,
    /// Check the segments of an earlier run again instead of transcribing.
    recheck: bool,
    props: ElementProps,
    json: Option<PathBuf>,
    /// Check these segments (e.g. from `caption_delay --segments`) instead of transcribing.
    segments: Option<PathBuf>,
    verbose: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: long_join [--rounds N,N,...] [--build-only] [--recheck] [--segments PATH] \
         [--json PATH] [--verbose] [prop=value ...]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        rounds: vec![2],
        build_only: false,
        recheck: false,
        props: ElementProps::default(),
        json: None,
        segments: None,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--rounds" => {
                a.rounds = value()
                    .split(',')
                    .map(|n| n.trim().parse().unwrap_or_else(|_| usage()))
                    .collect();
                if a.rounds.contains(&0) {
                    usage();
                }
            }
            "--build-only" => a.build_only = true,
            "--recheck" => a.recheck = true,
            "--json" => a.json = Some(PathBuf::from(value())),
            "--segments" => a.segments = Some(PathBuf::from(value())),
            "--verbose" | "-v" => a.verbose = true,
            s if a.props.take(s) => {}
            _ => usage(),
        }
    }
    if a.segments.is_some() && a.rounds.len() != 1 {
        usage();
    }
    a.props.set_default("language", "en");
    a.props.set_default("mode", "transcription");
    a
}

/// One round: the samples (clips with their gaps) and each clip's reference.
struct Round {
    audio: Vec<i16>,
    references: Vec<String>,
}

fn build_round() -> Result<Round, String> {
    let clips = support::manifest(&support::shared_dir().join("audio/eval"))?;
    let gap = (GAP_SECONDS * RATE as f64) as usize;
    let mut round = Round {
        audio: Vec::new(),
        references: Vec::new(),
    };
    for clip in clips {
        round.audio.extend(support::decode_audio(&clip.path)?);
        round.audio.resize(round.audio.len() + gap, 0);
        round.references.push(clip.reference.unwrap_or_default());
    }
    Ok(round)
}

/// Writes `join-Nx.wav` and `join-Nx.txt`; returns the WAV's path.
fn write_join(round: &Round, rounds: usize) -> Result<PathBuf, String> {
    let dir = support::target_dir().join("long-join");
    let wav = dir.join(format!("join-{rounds}x.wav"));
    let audio: Vec<i16> = (0..rounds)
        .flat_map(|_| round.audio.iter().copied())
        .collect();
    support::write_wav(&wav, &audio).map_err(|e| format!("{}: {e}", wav.display()))?;
    let text: String = (0..rounds)
        .flat_map(|_| round.references.iter().map(|r| format!("{r}\n")))
        .collect();
    let txt = wav.with_extension("txt");
    std::fs::write(&txt, text).map_err(|e| format!("{}: {e}", txt.display()))?;
    Ok(wav)
}

/// A `whisperencnpu-segment` message.
#[derive(Clone, Debug)]
struct Segment {
    start: f64,
    end: f64,
    text: String,
}

fn secs(t: gst::ClockTime) -> f64 {
    t.nseconds() as f64 / 1e9
}

/// The file through the element as fast as it goes; its segments and the wall time.
fn transcribe(wav: &Path, props: &ElementProps) -> Result<(Vec<Segment>, f64), String> {
    let pipeline = gst::parse::launch(
        "filesrc name=src ! wavparse ! audioconvert ! audioresample ! whisperencnpu name=enc ! \
         fakesink sync=false",
    )
    .map_err(|e| e.to_string())?
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let by_name = |n: &str| pipeline.by_name(n).expect("named in the launch line");
    by_name("src").set_property("location", wav.to_str().ok_or("path is not UTF-8")?);
    props.apply(&by_name("enc"))?;

    let started = Instant::now();
    let bus = pipeline.bus().expect("a pipeline has a bus");
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| "the pipeline did not start".to_string())?;
    let mut segments = Vec::new();
    let mut failure = None;
    // A window's timing message comes every window; a silent bus for this long is a stall.
    let stall = gst::ClockTime::from_seconds(300);
    loop {
        let Some(msg) = bus.timed_pop(stall) else {
            failure = Some(format!("no message for {stall}: the pipeline stalled"));
            break;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                failure = Some(format!("pipeline error: {} ({:?})", e.error(), e.debug()));
                break;
            }
            gst::MessageView::Element(e) => {
                let Some(s) = e
                    .structure()
                    .filter(|s| s.name() == "whisperencnpu-segment")
                else {
                    continue;
                };
                let time = |f: &str| s.get::<gst::ClockTime>(f).map(secs).unwrap_or(f64::NAN);
                segments.push(Segment {
                    start: time("start"),
                    end: time("end"),
                    text: s.get::<String>("text").unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    match failure {
        Some(f) => Err(f),
        None => Ok((segments, started.elapsed().as_secs_f64())),
    }
}

/// `join-Nx.segments.tsv` for the default properties, `join-Nx.<prop=value,...>.segments.tsv` for
/// others, so runs with different settings keep their segments apart.
fn segments_path(wav: &Path, props: &ElementProps) -> PathBuf {
    let defaults = [("mode", "transcription"), ("language", "en")];
    let tag: Vec<String> = props
        .0
        .iter()
        .filter(|(n, v)| !defaults.contains(&(n.as_str(), v.as_str())))
        .map(|(n, v)| format!("{n}={}", v.replace('/', "_")))
        .collect();
    if tag.is_empty() {
        wav.with_extension("segments.tsv")
    } else {
        wav.with_extension(format!("{}.segments.tsv", tag.join(",")))
    }
}

/// Segments written by an earlier run (start, end, text a line).
fn read_segments(path: &Path) -> Result<Vec<Segment>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let mut time = || f.next().and_then(|v| v.parse::<f64>().ok());
            match (time(), time(), f.next()) {
                (Some(start), Some(end), text) => Ok(Segment {
                    start,
                    end,
                    text: text.unwrap_or("").to_string(),
                }),
                _ => Err(format!("{}: bad line {l:?}", path.display())),
            }
        })
        .collect()
}

/// A sentence of the hypothesis and where the segment it starts in lies.
#[derive(Clone, Debug)]
struct Sentence {
    words: Vec<String>,
    text: String,
    start: f64,
    end: f64,
}

/// The segments' text cut into sentences at `.`, `?`, `!` (a sentence may span segments; it takes
/// the start of the first and the end of the last).
fn sentences(segments: &[&Segment]) -> Vec<Sentence> {
    let mut out = Vec::new();
    let mut current: Option<Sentence> = None;
    for segment in segments {
        for piece in segment.text.split_inclusive(['.', '?', '!']) {
            let s = current.get_or_insert_with(|| Sentence {
                words: Vec::new(),
                text: String::new(),
                start: segment.start,
                end: segment.end,
            });
            s.text.push_str(piece);
            s.end = segment.end;
            if piece.trim_end().ends_with(['.', '?', '!']) {
                let mut done = current.take().expect("just filled");
                done.text = done.text.trim().to_string();
                done.words = normalize_english(&done.text);
                out.push(done);
            }
        }
    }
    if let Some(mut s) = current {
        s.text = s.text.trim().to_string();
        s.words = normalize_english(&s.text);
        out.push(s);
    }
    out.retain(|s| !s.words.is_empty());
    out
}

/// The reference's sentences, normalised.
fn reference_sentences(text: &str) -> Vec<Vec<String>> {
    text.split_inclusive(['.', '?', '!'])
        .map(normalize_english)
        .filter(|w| !w.is_empty())
        .collect()
}

/// A sentence said more often than the reference says it.
#[derive(Debug)]
struct Repeat {
    round: usize,
    /// What it stands for: the reference words it matches, or its own words.
    sentence: String,
    said: usize,
    in_reference: usize,
    at: Vec<(f64, f64, String)>,
}

/// Where `hyp` best fits inside `reference` (any stretch of it, the rest free): the edit distance
/// and the stretch. Whisper often cuts a reference sentence in two at a comma, and each part is
/// then a sentence of its own, said once.
fn best_fit(hyp: &[String], reference: &[String]) -> (usize, std::ops::Range<usize>) {
    // cost[i][j]: hyp[..i] aligned to a stretch of reference ending at j; from[i][j]: its start.
    let (m, n) = (hyp.len(), reference.len());
    let mut cost = vec![vec![0usize; n + 1]; m + 1];
    let mut from = vec![vec![0usize; n + 1]; m + 1];
    for (j, start) in from[0].iter_mut().enumerate() {
        *start = j;
    }
    for i in 1..=m {
        cost[i][0] = i;
        from[i][0] = 0;
        for j in 1..=n {
            let sub = cost[i - 1][j - 1] + usize::from(hyp[i - 1] != reference[j - 1]);
            let skip_hyp = cost[i - 1][j] + 1;
            let skip_ref = cost[i][j - 1] + 1;
            (cost[i][j], from[i][j]) = if sub <= skip_hyp && sub <= skip_ref {
                (sub, from[i - 1][j - 1])
            } else if skip_hyp <= skip_ref {
                (skip_hyp, from[i - 1][j])
            } else {
                (skip_ref, from[i][j - 1])
            };
        }
    }
    // On a tie the longer stretch: a misheard last word is that word, not one said in addition.
    let end = (0..=n).rev().min_by_key(|&j| cost[m][j]).unwrap_or(0);
    (cost[m][end], from[m][end]..end)
}

/// How often `words` occur one after another in the reference sentences.
fn occurrences(words: &[String], reference: &[Vec<String>]) -> usize {
    reference
        .iter()
        .map(|r| {
            r.windows(words.len().max(1))
                .filter(|w| *w == words)
                .count()
        })
        .sum()
}

fn repeats(round: usize, hyp: &[Sentence], reference: &[Vec<String>]) -> Vec<Repeat> {
    let mut said: HashMap<String, (usize, Vec<&Sentence>)> = HashMap::new();
    let mut order = Vec::new();
    for s in hyp.iter().filter(|s| s.words.len() >= MIN_SENTENCE_WORDS) {
        let closest = reference
            .iter()
            .map(|r| {
                let (errors, stretch) = best_fit(&s.words, r);
                (errors as f64 / s.words.len() as f64, &r[stretch])
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let (key, in_reference) = match closest {
            Some((share, words)) if share <= SAME_SENTENCE_MAX_ERROR => {
                (words.join(" "), occurrences(words, reference))
            }
            _ => (s.words.join(" "), occurrences(&s.words, reference)),
        };
        if !said.contains_key(&key) {
            order.push(key.clone());
        }
        said.entry(key)
            .or_insert((in_reference, Vec::new()))
            .1
            .push(s);
    }
    order
        .into_iter()
        .filter_map(|key| {
            let (expected, times) = &said[&key];
            (times.len() > (*expected).max(1)).then(|| Repeat {
                round,
                sentence: key.clone(),
                said: times.len(),
                in_reference: *expected,
                at: times
                    .iter()
                    .map(|s| (s.start, s.end, s.text.clone()))
                    .collect(),
            })
        })
        .collect()
}

fn wer(reference: &str, hyp: &str) -> f64 {
    let r = normalize_english(reference);
    word_errors(&r, &normalize_english(hyp)) as f64 / r.len().max(1) as f64
}

fn check(
    rounds: usize,
    round: &Round,
    segments: &[Segment],
    wall: f64,
    args: &Args,
) -> serde_json::Value {
    let round_seconds = support::seconds(round.audio.len());
    let reference = round.references.join(" ");
    let zero: Vec<&Segment> = segments.iter().filter(|s| s.end <= s.start).collect();
    let mut found = Vec::new();
    let mut round_wers = Vec::new();
    for r in 0..rounds {
        let (from, to) = (r as f64 * round_seconds, (r + 1) as f64 * round_seconds);
        let here: Vec<&Segment> = segments
            .iter()
            .filter(|s| (s.start >= from && s.start < to) || (r + 1 == rounds && s.start >= to))
            .collect();
        let hyp_text = here
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        round_wers.push(wer(&reference, &hyp_text));
        found.extend(repeats(
            r + 1,
            &sentences(&here),
            &reference_sentences(&reference),
        ));
    }
    let all_reference = vec![reference.as_str(); rounds].join(" ");
    let all_hyp = segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let total_wer = wer(&all_reference, &all_hyp);
    let extra: usize = found.iter().map(|r| r.said - r.in_reference.max(1)).sum();

    let props = args
        .props
        .0
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let speed = if wall.is_nan() {
        "checked again".to_string()
    } else {
        format!(
            "in {wall:.0} s, {:.1}x realtime",
            round_seconds * rounds as f64 / wall
        )
    };
    println!(
        "  {} segments ({speed}); whisperencnpu {props}",
        segments.len()
    );
    println!("  zero-length segments    {}", zero.len());
    for s in &zero {
        println!("    [{:8.2} - {:8.2}] {}", s.start, s.end, s.text.trim());
    }
    println!("  repeated sentences      {extra}");
    for r in &found {
        println!(
            "    round {}: said {}x, the reference {}x: {:?}",
            r.round, r.said, r.in_reference, r.sentence
        );
        for (start, end, text) in &r.at {
            println!("      [{start:8.2} - {end:8.2}] {text}");
        }
    }
    println!(
        "  word error rate         {total_wer:.3} (rounds: {})",
        round_wers
            .iter()
            .map(|w| format!("{w:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    serde_json::json!({
        "join": format!("join-{rounds}x"),
        "rounds": rounds,
        "audio_s": json_number(round_seconds * rounds as f64),
        "props": args.props.to_json(),
        "segments": segments.len(),
        "zero_length": zero.len(),
        "repeated_sentences": extra,
        "repeats": found.iter().map(|r| serde_json::json!({
            "round": r.round, "sentence": r.sentence, "said": r.said,
            "in_reference": r.in_reference,
            "at": r.at.iter().map(|(s, e, _)| [json_number(*s), json_number(*e)]).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "wer": json_number(total_wer),
        "round_wer": round_wers.iter().map(|&w| json_number(w)).collect::<Vec<_>>(),
        "wall_s": json_number(wall),
    })
}

fn main() {
    let args = parse_args();
    support::init_gst();
    let fail = |e: String| -> ! {
        eprintln!("long_join: {e}");
        std::process::exit(1)
    };
    let round = build_round().unwrap_or_else(|e| fail(e));
    let mut results = Vec::new();
    for &rounds in &args.rounds {
        let wav = write_join(&round, rounds).unwrap_or_else(|e| fail(e));
        println!(
            "long join x{rounds}: {} ({:.1} s)",
            wav.display(),
            support::seconds(round.audio.len()) * rounds as f64
        );
        if args.build_only {
            continue;
        }
        let tsv_path = args
            .segments
            .clone()
            .unwrap_or_else(|| segments_path(&wav, &args.props));
        let (segments, wall) = if args.recheck || args.segments.is_some() {
            (
                read_segments(&tsv_path).unwrap_or_else(|e| fail(e)),
                f64::NAN,
            )
        } else {
            let (segments, wall) = transcribe(&wav, &args.props).unwrap_or_else(|e| fail(e));
            let tsv: String = segments
                .iter()
                .map(|s| format!("{:.6}\t{:.6}\t{}\n", s.start, s.end, s.text.trim()))
                .collect();
            std::fs::write(&tsv_path, tsv)
                .unwrap_or_else(|e| fail(format!("{}: {e}", tsv_path.display())));
            (segments, wall)
        };
        println!("  segments: {}", tsv_path.display());
        if args.verbose {
            for s in &segments {
                println!("    [{:8.2} - {:8.2}] {}", s.start, s.end, s.text.trim());
            }
        }
        results.push(check(rounds, &round, &segments, wall, &args));
    }
    for json in &results {
        println!("{json}");
        if let Some(path) = &args.json {
            use std::io::Write;
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{json}"));
            if let Err(e) = written {
                fail(format!("{}: {e}", path.display()));
            }
        }
    }
}

/// The checker on made-up segments (`cargo test --release --locked --example long_join`).
#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: f64, end: f64, text: &str) -> Segment {
        Segment {
            start,
            end,
            text: text.into(),
        }
    }

    /// A round's reference in short: jfk's sentence twice (jfk.wav, then long-form-mixed.wav begins
    /// with it), a misheard sentence, a short one.
    const REFERENCE: &str =
        "And so my fellow Americans, ask not what your country can do for you, \
        ask what you can do for your country. The girl at the booth sold fifty bonds. Thank you. \
        And so my fellow Americans, ask not what your country can do for you, ask what you can do \
        for your country.";

    #[test]
    fn repeated_sentences_are_counted_against_the_reference() {
        // (case, segments, repeated sentence expected and how often it was said)
        const FIRST_PART: &str =
            "And so my fellow Americans, ask not what your country can do for you.";
        const SECOND_PART: &str = "Ask what you can do for your country.";
        const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, \
                           ask what you can do for your country.";
        const GIRL: &str = "the girl at the booth sold 50 bonds";
        const ASK: &str = "ask what you can do for your country";
        // (case, segments, the repeated sentence expected and how often it was said)
        let cases: [(&str, Vec<Segment>, Option<(&str, usize)>); 7] = [
            (
                "every sentence as often as the reference says it",
                vec![
                    seg(0.0, 2.0, JFK),
                    seg(3.0, 5.0, "The girl at the booth sold fifty bonds."),
                    seg(6.0, 8.0, JFK),
                ],
                None,
            ),
            (
                "a misheard sentence said again where other words were spoken",
                vec![
                    seg(3.0, 5.0, "The girl at the moot sold 50 months."),
                    seg(81.24, 83.6, "The girl at the moot sold 50 months."),
                ],
                Some((GIRL, 2)),
            ),
            (
                "a reference sentence said in two parts, twice, is said as often as the reference",
                vec![
                    seg(0.0, 4.0, FIRST_PART),
                    seg(4.0, 6.0, SECOND_PART),
                    seg(7.0, 9.0, FIRST_PART),
                    seg(10.0, 12.0, SECOND_PART),
                ],
                None,
            ),
            (
                "its second part said once more",
                vec![
                    seg(0.0, 4.0, FIRST_PART),
                    seg(4.0, 6.0, SECOND_PART),
                    seg(6.0, 7.0, SECOND_PART),
                    seg(7.0, 9.0, FIRST_PART),
                    seg(10.0, 12.0, SECOND_PART),
                ],
                Some((ASK, 3)),
            ),
            (
                "a whole sentence said three times where the reference has it twice",
                vec![seg(0.0, 2.0, JFK), seg(2.0, 4.0, JFK), seg(6.0, 8.0, JFK)],
                Some((
                    "and so my fellow americans ask not what your country can do for you ask \
                     what you can do for your country",
                    3,
                )),
            ),
            (
                "short sentences are not checked",
                vec![seg(0.0, 1.0, "Thank you."), seg(2.0, 3.0, "Thank you.")],
                None,
            ),
            (
                "a sentence spanning segments is one sentence",
                vec![
                    seg(0.0, 1.0, "The girl at the"),
                    seg(1.0, 2.0, "booth sold fifty bonds. The girl at the booth"),
                    seg(2.0, 3.0, "sold fifty bonds."),
                ],
                Some((GIRL, 2)),
            ),
        ];
        let reference = reference_sentences(REFERENCE);
        for (case, segments, expected) in cases {
            let refs: Vec<&Segment> = segments.iter().collect();
            let found = repeats(1, &sentences(&refs), &reference);
            let found: Vec<(&str, usize)> = found
                .iter()
                .map(|r| (r.sentence.as_str(), r.said))
                .collect();
            assert_eq!(found, expected.into_iter().collect::<Vec<_>>(), "{case}");
        }
    }
}

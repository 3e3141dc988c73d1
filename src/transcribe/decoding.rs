//! Decoding one window, as OpenAI's `whisper/decoding.py` does it: the start-of-transcript
//! sequence, logit filters (suppress-blank, the model's suppress list, timestamp rules), greedy or
//! sampled decoding of a group of hypotheses, or beam search, ranked by length-normalised
//! log-probability; plus what the 10.24 s windows need: no timestamp past the audio in the window,
//! and repetition caught while decoding.
use ndarray::{s, ArrayView1};

use crate::cancel::Cancel;
use crate::model::decoder::{CrossKv, Decoder, KvCache};
use crate::model::tokenizer::Tokenizer;

use super::text::{compression_ratio, repetition_start, Words};
use super::Task;

/// Everything that fixes how one window is decoded at one temperature.
#[derive(Clone, Debug)]
pub(crate) struct DecodeParams {
    /// Previous text (tokens after `<|startofprev|>`), already cut to the last 223.
    pub prompt: Vec<u32>,
    /// Language token (multilingual models).
    pub language: Option<u32>,
    pub task: Task,
    pub temperature: f32,
    /// Beam search with this many beams when > 1 (temperature 0 only).
    pub beam_size: usize,
    pub patience: f32,
    /// Sampled hypotheses at temperature > 0.
    pub best_of: usize,
    /// Most tokens sampled.
    pub sample_len: usize,
    /// Timestamp index (in [`TIMESTAMP_STEP`](crate::mel::TIMESTAMP_STEP)s) the first timestamp
    /// may not exceed.
    pub max_initial_timestamp: Option<u32>,
    /// Last timestamp index allowed at all: the end of the audio in the window.
    pub max_timestamp: u32,
    pub suppress_blank: Vec<u32>,
    pub suppress: Vec<u32>,
    pub without_timestamps: bool,
    /// Stop a hypothesis that starts repeating itself (see [`repetition_start`]).
    pub check_repetition: bool,
    /// Raised by the element (NULL, flush): decoding stops at the next token.
    pub cancel: Cancel,
}

/// The decoded window at one temperature.
#[derive(Clone, Debug, Default)]
pub(crate) struct DecodeResult {
    /// Sampled tokens, without the final `<|endoftext|>`.
    pub tokens: Vec<u32>,
    pub avg_logprob: f64,
    pub no_speech_prob: f32,
    pub temperature: f32,
    pub compression_ratio: f64,
    /// The hypothesis looped; `tokens` are cut before the repetition.
    pub repetition: bool,
}

/// Small deterministic generator for sampling (xorshift64*).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    logits.iter().map(|&v| v - lse).collect()
}

fn logsumexp(v: &[f32]) -> f32 {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = v.iter().map(|&x| f64::from(x - max).exp()).sum();
    max + sum.ln() as f32
}

/// Applies suppress-blank, the suppress list and the timestamp rules to `logits` for a hypothesis
/// whose sampled tokens so far are `seq`.
pub(crate) fn apply_filters(logits: &mut [f32], seq: &[u32], p: &DecodeParams, tok: &Tokenizer) {
    let ninf = f32::NEG_INFINITY;
    let eot = tok.eot() as usize;
    let tb = tok.timestamp_begin() as usize;
    let n = logits.len();
    if seq.is_empty() {
        for &id in &p.suppress_blank {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = ninf;
            }
        }
    }
    for &id in &p.suppress {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = ninf;
        }
    }
    if p.without_timestamps {
        logits[tb.min(n)..].fill(ninf);
        return;
    }
    logits[tok.special().no_timestamps as usize] = ninf;

    let is_ts = |t: u32| t as usize >= tb;
    let last_ts = seq.last().is_some_and(|&t| is_ts(t));
    let penultimate_ts = seq.len() < 2 || is_ts(seq[seq.len() - 2]);
    if last_ts {
        if penultimate_ts {
            logits[tb..].fill(ninf);
        } else {
            logits[..eot].fill(ninf);
        }
    }
    if let Some(&last) = seq.iter().rev().find(|&&t| is_ts(t)) {
        // Non-decreasing, and every segment of non-zero length.
        let floor = if last_ts && !penultimate_ts {
            last as usize
        } else {
            last as usize + 1
        };
        logits[tb..floor.min(n)].fill(ninf);
    }
    if seq.is_empty() {
        logits[..tb].fill(ninf);
        if let Some(m) = p.max_initial_timestamp {
            logits[(tb + m as usize + 1).min(n)..].fill(ninf);
        }
    }
    // Nothing past the audio of the window.
    logits[(tb + p.max_timestamp as usize + 1).min(n)..].fill(ninf);
    // Inside a segment that can no longer be closed: stop.
    if !last_ts && !seq.is_empty() && logits[tb..].iter().all(|&l| l == ninf) {
        logits[..eot].fill(ninf);
        logits[eot + 1..].fill(ninf);
        logits[eot] = 0.0;
        return;
    }

    let lp = log_softmax(logits);
    let ts_lp = logsumexp(&lp[tb..]);
    let max_text = lp[..tb].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if ts_lp > max_text {
        logits[..tb].fill(ninf);
    }
}

/// The prompt: `<|startofprev|>` + previous text, then `<|startoftranscript|>`, language, task, and
/// `<|notimestamps|>` when asked. Returns the tokens and the index of `<|startoftranscript|>`.
pub(crate) fn initial_tokens(p: &DecodeParams, tok: &Tokenizer) -> (Vec<u32>, usize) {
    let sp = tok.special();
    let mut out = Vec::new();
    if let (Some(prev), false) = (sp.sot_prev, p.prompt.is_empty()) {
        out.push(prev);
        out.extend_from_slice(&p.prompt);
    }
    let sot_index = out.len();
    out.push(sp.sot);
    if tok.is_multilingual() {
        if let Some(lang) = p.language {
            out.push(lang);
        }
        let task = match p.task {
            Task::Transcribe => sp.transcribe,
            Task::Translate => sp.translate,
        };
        out.extend(task);
    }
    if p.without_timestamps {
        out.push(sp.no_timestamps);
    }
    (out, sot_index)
}

/// The most hypotheses `o` decodes a window with at once: the beams at temperature 0, the
/// best-of samples at the others (if any).
pub(crate) fn largest_batch(o: &super::TranscribeOptions) -> usize {
    let sampled = o.temperatures.iter().any(|&t| t > 0.0);
    o.beam_size.max(if sampled { o.best_of } else { 1 })
}

/// Language probabilities of a window: `(token, probability)` over the language tokens, best first.
/// `cache` is the transcriber's, reset here.
pub(crate) fn detect_language(
    dec: &Decoder,
    tok: &Tokenizer,
    cross: &CrossKv,
    cache: &mut KvCache,
) -> Vec<(u32, f32)> {
    let langs = tok.languages();
    if langs.is_empty() {
        return Vec::new();
    }
    cache.reset();
    let h = dec.forward(cache, cross, &[tok.sot()], 1);
    let logits = dec.logits_row(h.row(0));
    let vals: Vec<f32> = langs.iter().map(|&(_, id)| logits[id as usize]).collect();
    let lp = log_softmax(&vals);
    let mut out: Vec<(u32, f32)> = langs
        .iter()
        .zip(lp)
        .map(|(&(_, id), l)| (id, l.exp()))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

struct Hyp {
    tokens: Vec<u32>,
    sum_logprob: f64,
    done: bool,
    repetition: bool,
}

/// Whether appending `next` to `seq` makes the hypothesis loop; the index in `seq` where the
/// repetition starts if so.
fn loops_with(tok: &Tokenizer, seq: &[u32], next: u32) -> Option<usize> {
    if !tok.is_text(next) {
        return None;
    }
    let mut all = seq.to_vec();
    all.push(next);
    let words = Words::from_tokens(tok, &all);
    repetition_start(&words.words).map(|w| words.token_index[w])
}

fn finish(tok: &Tokenizer, h: Hyp, no_speech_prob: f32, temperature: f32) -> DecodeResult {
    let text = tok.decode(&h.tokens);
    DecodeResult {
        avg_logprob: h.sum_logprob / (h.tokens.len() + 1) as f64,
        compression_ratio: compression_ratio(&text),
        tokens: h.tokens,
        no_speech_prob,
        temperature,
        repetition: h.repetition,
    }
}

/// Decodes a window at `p.temperature`: greedy (or beam search) at 0, best-of-n sampling above.
/// `cache` is the transcriber's (reserved for its largest batch, [`KvCache::reserve_batch`]),
/// reset here.
pub(crate) fn decode(
    dec: &Decoder,
    tok: &Tokenizer,
    cross: &CrossKv,
    p: &DecodeParams,
    rng: &mut Rng,
    cache: &mut KvCache,
) -> DecodeResult {
    if p.cancel.is_set() {
        return DecodeResult::default();
    }
    let (initial, sot_index) = initial_tokens(p, tok);
    let eot = tok.eot();
    cache.reset();
    let h = dec.forward(cache, cross, &initial, initial.len());
    let first = dec.logits(h.slice(s![sot_index..sot_index + 1, ..]));
    let no_speech_prob = match tok.special().no_speech {
        Some(ns) => {
            let lp = log_softmax(first.row(0).as_slice().expect("contiguous logits"));
            lp[ns as usize].exp()
        }
        None => 0.0,
    };
    let last = if sot_index + 1 == initial.len() {
        first
    } else {
        dec.logits(h.slice(s![initial.len() - 1.., ..]))
    };
    let sample_len = p
        .sample_len
        .min(cache.capacity().saturating_sub(initial.len() + 1));

    if p.beam_size > 1 && p.temperature == 0.0 {
        return beam_search(
            dec,
            tok,
            cross,
            p,
            cache,
            last.row(0),
            sample_len,
            no_speech_prob,
        );
    }

    let n = if p.temperature > 0.0 {
        p.best_of.max(1)
    } else {
        1
    };
    let mut hyps: Vec<Hyp> = (0..n)
        .map(|_| Hyp {
            tokens: Vec::new(),
            sum_logprob: 0.0,
            done: false,
            repetition: false,
        })
        .collect();
    cache.repeat(n);
    // Hypotheses still running, in cache order, and their logits.
    let mut active: Vec<usize> = (0..n).collect();
    let mut logits: Vec<Vec<f32>> = vec![last.row(0).to_vec(); n];
    let _stepping = dec.stepping();
    for _ in 0..sample_len {
        if p.cancel.is_set() {
            break;
        }
        let mut next_tokens = Vec::with_capacity(active.len());
        for (slot, &hi) in active.iter().enumerate() {
            let hyp = &mut hyps[hi];
            let l = &mut logits[slot];
            apply_filters(l, &hyp.tokens, p, tok);
            let lp = log_softmax(l);
            let next = if p.temperature == 0.0 {
                argmax(l)
            } else {
                sample(l, p.temperature, rng)
            };
            hyp.sum_logprob += f64::from(lp[next as usize]);
            if next == eot {
                hyp.done = true;
            } else if p.check_repetition {
                if let Some(at) = loops_with(tok, &hyp.tokens, next) {
                    hyp.tokens.truncate(at);
                    hyp.repetition = true;
                    hyp.done = true;
                }
            }
            if !hyp.done {
                hyp.tokens.push(next);
            }
            next_tokens.push(next);
        }
        let keep: Vec<usize> = (0..active.len())
            .filter(|&slot| !hyps[active[slot]].done)
            .collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() != active.len() {
            cache.reorder(&keep);
            active = keep.iter().map(|&s| active[s]).collect();
        }
        let feed: Vec<u32> = keep.iter().map(|&s| next_tokens[s]).collect();
        let lg = dec.step(cache, cross, &feed);
        logits = lg.rows().into_iter().map(|r| r.to_vec()).collect();
    }
    // Rank: sum of log-probabilities over length (OpenAI's ranker without length penalty).
    let best = hyps
        .into_iter()
        .max_by(|a, b| {
            let score = |h: &Hyp| h.sum_logprob / h.tokens.len().max(1) as f64;
            score(a).total_cmp(&score(b))
        })
        .expect("at least one hypothesis");
    finish(tok, best, no_speech_prob, p.temperature)
}

/// The index of the largest value (the first of equals): greedy decoding's token.
pub(super) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| f64::from((l - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.next_f64() * total;
    for (i, &w) in weights.iter().enumerate() {
        if r < w {
            return i as u32;
        }
        r -= w;
    }
    argmax(logits)
}

/// A beam: tokens, their log-probabilities, and whether it was cut at a repetition.
#[derive(Clone)]
struct Beam {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    repetition: bool,
}

impl Beam {
    fn score(&self) -> f64 {
        self.logprobs.iter().map(|&l| f64::from(l)).sum()
    }
}

/// Beam search (OpenAI's `BeamSearchDecoder`): each beam proposes its `beam + 1` best tokens, the
/// `beam` best unfinished sequences go on, finished ones are collected until there are
/// `round(beam * patience)`, and the best by log-probability over length wins. A candidate that
/// makes its beam loop finishes it, cut before the repetition (as greedy decoding does).
#[allow(clippy::too_many_arguments)]
fn beam_search(
    dec: &Decoder,
    tok: &Tokenizer,
    cross: &CrossKv,
    p: &DecodeParams,
    cache: &mut KvCache,
    first: ArrayView1<f32>,
    sample_len: usize,
    no_speech_prob: f32,
) -> DecodeResult {
    let beam = p.beam_size;
    let eot = tok.eot();
    let max_candidates = ((beam as f32 * p.patience).round() as usize).max(1);
    cache.repeat(beam);
    let empty = Beam {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        repetition: false,
    };
    let mut beams: Vec<Beam> = vec![empty; beam];
    let mut logits: Vec<Vec<f32>> = vec![first.to_vec(); beam];
    let _stepping = dec.stepping();
    // Finished beams; the log-probability of <|endoftext|> is in `logprobs`, not in `tokens`.
    let mut finished: Vec<Beam> = Vec::new();
    for _ in 0..sample_len {
        if p.cancel.is_set() {
            break;
        }
        // Candidates: (beam, next token, its log-probability, score, source beam).
        let mut cands: Vec<(Vec<u32>, f32, f64, usize)> = Vec::new();
        for (bi, b) in beams.iter().enumerate() {
            let l = &mut logits[bi];
            apply_filters(l, &b.tokens, p, tok);
            let lp = log_softmax(l);
            let mut idx: Vec<usize> = (0..lp.len()).collect();
            let k = (beam + 1).min(idx.len());
            idx.select_nth_unstable_by(k - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
            idx.truncate(k);
            let base = b.score();
            for &t in &idx {
                if lp[t] == f32::NEG_INFINITY {
                    continue;
                }
                let mut seq = b.tokens.clone();
                seq.push(t as u32);
                let score = base + f64::from(lp[t]);
                // The first step's beams are all the same: keep one of each sequence.
                if !cands.iter().any(|c| c.0 == seq) {
                    cands.push((seq, lp[t], score, bi));
                }
            }
        }
        cands.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut next: Vec<Beam> = Vec::new();
        let mut sources = Vec::new();
        let mut newly_finished = Vec::new();
        for (seq, lp, _, src) in cands {
            let parent = &beams[src];
            let mut logprobs = parent.logprobs.clone();
            logprobs.push(lp);
            let last = *seq.last().expect("non-empty candidate");
            if last == eot {
                let n = seq.len() - 1;
                newly_finished.push(Beam {
                    tokens: seq[..n].to_vec(),
                    logprobs,
                    repetition: false,
                });
                continue;
            }
            if p.check_repetition {
                if let Some(at) = loops_with(tok, &parent.tokens, last) {
                    newly_finished.push(Beam {
                        tokens: seq[..at].to_vec(),
                        logprobs: logprobs[..at].to_vec(),
                        repetition: true,
                    });
                    continue;
                }
            }
            next.push(Beam {
                tokens: seq,
                logprobs,
                repetition: false,
            });
            sources.push(src);
            if next.len() == beam {
                break;
            }
        }
        for f in newly_finished {
            if finished.len() >= max_candidates {
                break;
            }
            finished.push(f);
        }
        if finished.len() >= max_candidates || next.is_empty() {
            break;
        }
        cache.reorder(&sources);
        let feed: Vec<u32> = next
            .iter()
            .map(|b| *b.tokens.last().expect("token"))
            .collect();
        beams = next;
        let lg = dec.step(cache, cross, &feed);
        logits = lg.rows().into_iter().map(|r| r.to_vec()).collect();
    }
    if finished.is_empty() {
        finished = beams;
    }
    let best = finished
        .into_iter()
        .max_by(|a, b| {
            let score = |h: &Beam| h.score() / h.tokens.len().max(1) as f64;
            score(a).total_cmp(&score(b))
        })
        .expect("at least one beam");
    let repetition = best.repetition;
    let sum_logprob = best.score();
    finish(
        tok,
        Hyp {
            tokens: best.tokens,
            sum_logprob,
            done: true,
            repetition,
        },
        no_speech_prob,
        p.temperature,
    )
}

//! Transcription: Whisper decoding on the element's 10.24 s windows, stream-driven, without
//! GStreamer.
//!
//! A [`Transcriber`] takes 16 kHz mono audio as it comes ([`Transcriber::push_audio`]) and, once a
//! full window is buffered past its seek position, encodes it and decodes it
//! ([`Transcriber::next_window`]), the way OpenAI's `transcribe.py` walks a long file: the window
//! starts at the seek position; complete segments (`<|start|> text <|end|>`) are emitted; the seek
//! moves to the end of the last segment emitted, so text after it is decoded again, with the audio
//! that follows, from the next window. At the end of the stream ([`Transcriber::finish`]) the rest
//! is decoded and all of it emitted.
//!
//! What the short windows need on top of Whisper's rules (the model was trained on 30 s):
//! - no timestamp past the end of the audio in the window;
//! - a segment that ends within `edge_margin` (0.5 s) of the end of a window that is not the
//!   stream's last is held back (its last word may be cut) and decoded again from the next window;
//! - decoding stops when a hypothesis starts repeating itself (a phrase back to back, or six words
//!   said again): with complete segments before it, that is the model running past the audio and
//!   the cut result is kept; otherwise it is a failure and the temperature fallback runs;
//! - segments saying more than ~10 words a second are hallucinations and dropped, with all after
//!   them;
//! - a segment whose words the previous window ended with is dropped (nothing said twice);
//! - the stream's last window, usually short, is decoded as the last full 10.24 s (look-back) and
//!   only the words after those already emitted are kept (aligned word by word); if that does not
//!   align, the short window is decoded;
//! - a window whose loudest 20 ms is below -60 dBFS is silent without running the model, and
//!   emitted segments are narrowed to the loud part of their span (better start times after
//!   pauses);
//! - a window that yields no text but ends in speech begun after a pause (Whisper says nothing of
//!   words cut by the window's end, or calls the window silent) is followed by one starting half
//!   a second before that speech, not at its end;
//! - segment times shown are where their words are by the decoder's cross-attention
//!   ([`alignment`], OpenAI's word timestamps); the seek positions, prompt and look-back keep
//!   following the timestamp tokens, so the text does not depend on the alignment.

use std::time::{Duration, Instant};

use crate::mel::{SAMPLE_RATE, WINDOW_SAMPLES};
use crate::model::decoder::{CrossKv, Decoder};
use crate::model::tokenizer::Tokenizer;
use crate::model::{ModelError, WhisperModel};
use crate::npu;
use crate::window::{EncoderOptions, SetupError, WindowEncoder};

pub mod alignment;
mod decoding;
pub mod streaming;
pub mod text;

use decoding::{DecodeParams, DecodeResult, Rng};

/// Samples per timestamp step (0.02 s).
pub const SAMPLES_PER_TIMESTAMP: u64 = 320;
/// How far (seconds) a segment of the last window decoded with look-back may start before the seek
/// position and still count as new.
const LOOKBACK_TOLERANCE: f64 = 0.4;
/// A segment of the last window that starts less than this many timestamp steps (0.1 s) before the
/// end of the audio is dropped.
const END_SLACK: u32 = 5;
/// Tokens of previous text given as prompt at most (`n_text_ctx / 2 - 1`).
pub const MAX_PROMPT_TOKENS: usize = 223;

/// What to produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Task {
    /// Text in the spoken language.
    #[default]
    Transcribe,
    /// English text (multilingual models).
    Translate,
}

/// Decoding options (OpenAI's `transcribe()` arguments and their defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct TranscribeOptions {
    /// Language code (`"en"`, `"de"`, ...); `None` detects it (multilingual models). Ignored by
    /// English-only models.
    pub language: Option<String>,
    pub task: Task,
    /// Beam search with this many beams at temperature 0; 1 is greedy decoding.
    pub beam_size: usize,
    /// Beam search patience (finished candidates = beam_size x patience).
    pub patience: f32,
    /// Hypotheses sampled at a temperature above 0, the best kept.
    pub best_of: usize,
    /// Temperatures tried in turn while the result fails the thresholds.
    pub temperatures: Vec<f32>,
    /// Fallback when the text's gzip compression ratio is above this (too repetitive).
    pub compression_ratio_threshold: Option<f64>,
    /// Fallback when the average log-probability is below this.
    pub logprob_threshold: Option<f64>,
    /// A window is silent when its no-speech probability is above this and its average
    /// log-probability is below `logprob_threshold`.
    pub no_speech_threshold: Option<f64>,
    /// Give the previous text as prompt (`condition_on_previous_text`).
    pub use_prompt: bool,
    /// Text given as prompt before the first window.
    pub initial_prompt: Option<String>,
    /// The first timestamp of a window is at most this (seconds).
    pub max_initial_timestamp: f64,
    /// Suppress a blank or `<|endoftext|>` as first token.
    pub suppress_blank: bool,
    /// Tokens never sampled; `None` takes the model's `suppress_ids` (config.json).
    pub suppress_tokens: Option<Vec<u32>>,
    /// A segment ending less than this before the end of a window that is not the last is held
    /// back and decoded again from the next window (seconds).
    pub edge_margin: f64,
    /// Stop and fall back when a hypothesis loops.
    pub check_repetition: bool,
    /// A window whose loudest 20 ms is quieter than this (dBFS RMS) is silent: it is skipped
    /// without running the model (Whisper tends to hallucinate a word or two on digital silence).
    pub silence_threshold_db: Option<f64>,
    /// Seed of the sampler used at temperatures above 0.
    pub seed: u64,
    /// Decoder threads; 0 means one per core.
    pub decoder_threads: usize,
    /// The decoder's linear layers: float32, or int8 (weights per output channel, activations per
    /// row, as the encoder's int8): about three times less memory traffic per token.
    pub decoder_precision: npu::Precision,
    /// Segment times from where their words are (cross-attention alignment) rather than from the
    /// timestamp tokens alone.
    pub word_timestamps: bool,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            language: None,
            task: Task::Transcribe,
            beam_size: 1,
            patience: 1.0,
            best_of: 5,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            use_prompt: true,
            initial_prompt: None,
            max_initial_timestamp: 1.0,
            suppress_blank: true,
            suppress_tokens: None,
            edge_margin: 0.5,
            check_repetition: true,
            silence_threshold_db: Some(-60.0),
            seed: 0,
            decoder_threads: 0,
            decoder_precision: npu::Precision::F32,
            word_timestamps: true,
        }
    }
}

/// One piece of transcribed text with its place in the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Start and end as sample indices of the stream (16 kHz, from the first sample pushed or
    /// the sample given to [`Transcriber::reset`]).
    pub start_sample: u64,
    pub end_sample: u64,
    /// Start and end in seconds of stream time (`sample / 16000`).
    pub start: f64,
    pub end: f64,
    /// The text, as Whisper writes it (usually with a leading space).
    pub text: String,
    /// Its tokens, timestamps included.
    pub tokens: Vec<u32>,
    pub avg_logprob: f64,
    pub no_speech_prob: f64,
    pub compression_ratio: f64,
    pub temperature: f32,
    /// Language code (`"en"`), `None` for English-only models.
    pub language: Option<String>,
    /// Its words and where each is, when the model has alignment heads (empty otherwise).
    pub words: Vec<Word>,
}

/// A word of a [`Segment`] and where it is (from the decoder's cross-attention).
#[derive(Clone, Debug, PartialEq)]
pub struct Word {
    /// As written, punctuation attached, without the leading space.
    pub text: String,
    /// Start and end as stream samples, inside the segment's span.
    pub start_sample: u64,
    pub end_sample: u64,
}

/// Time spent on one window.
#[derive(Clone, Copy, Debug, Default)]
pub struct TranscribeTiming {
    pub mel: Duration,
    pub encoder: Duration,
    /// Language detection, decoding at every temperature tried.
    pub decoder: Duration,
    /// Tokens run through the decoder (all temperatures and hypotheses, prompts excluded).
    pub decoded_tokens: usize,
}

/// What one window gave.
#[derive(Clone, Debug)]
pub struct WindowResult {
    /// Window index from 0.
    pub index: u64,
    /// Stream sample of the window's first sample (the seek position it started at).
    pub start_sample: u64,
    /// Samples of real audio in the window (less than 163840 only at the end of the stream).
    pub audio_samples: usize,
    /// Where the next window starts: the end of the last segment emitted, or of the window.
    pub next_seek: u64,
    /// Complete segments, in order.
    pub segments: Vec<Segment>,
    /// The window was judged silent (no-speech rule) and skipped.
    pub no_speech: bool,
    pub no_speech_prob: f64,
    pub avg_logprob: f64,
    /// Temperature of the result kept.
    pub temperature: f32,
    /// The decoding failed at every temperature (repetition, compression ratio or log-probability).
    pub failed: bool,
    pub language: Option<String>,
    /// The stream's last window.
    pub last: bool,
    pub timing: TranscribeTiming,
}

/// Errors of [`Transcriber::new`].
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("language {0:?} is not one of the model's languages")]
    UnknownLanguage(String),
    #[error("the English-only model {0} cannot translate")]
    CannotTranslate(String),
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// A piece of a decoded window: `<|start|> text <|end|>`, or a last one left open.
#[derive(Clone, Debug, PartialEq)]
struct RawSegment {
    start: u32,
    end: Option<u32>,
    /// Tokens from the start timestamp to the end timestamp, both included.
    tokens: Vec<u32>,
}

/// A segment to emit, in stream samples.
struct Emit {
    start: u64,
    end: u64,
    tokens: Vec<u32>,
    /// Where its words are by the cross-attention alignment (stream samples), when known.
    words: Option<(u64, u64)>,
    /// Each word and where it is (stream samples), when known.
    word_list: Vec<Word>,
}

/// Narrows `[start, end]` (stream samples) to the loud frames in it, with 0.1 s to spare on each
/// side: Whisper often starts a segment where the previous one ended, before a pause. Never widens
/// it; leaves it as it is when nothing in it is loud.
fn trim_to_speech(loud: &[bool], window_start: u64, start: u64, end: u64) -> (u64, u64) {
    let sps = SAMPLES_PER_TIMESTAMP;
    let first = ((start - window_start) / sps) as usize;
    let last = (end.saturating_sub(window_start).div_ceil(sps) as usize).min(loud.len());
    if first >= last {
        return (start, end);
    }
    let frames = &loud[first..last];
    let (Some(a), Some(b)) = (
        frames.iter().position(|&l| l),
        frames.iter().rposition(|&l| l),
    ) else {
        return (start, end);
    };
    let pad = 5 * sps;
    let new_start = (window_start + (first + a) as u64 * sps)
        .saturating_sub(pad)
        .max(start);
    let new_end = (window_start + (first + b + 1) as u64 * sps + pad).min(end);
    (new_start, new_end.max(new_start))
}

/// A word's span narrowed to its loudest island: the alignment runs words edge to edge, so a
/// word after a pause starts where the one before it ended. Islands are runs of loud frames
/// with gaps under 0.2 s (a stop consonant's closure is shorter); the one with the most loud
/// frames is kept. Unchanged when nothing in it is loud.
fn loudest_island(loud: &[bool], window_start: u64, start: u64, end: u64) -> (u64, u64) {
    const MAX_GAP: usize = 10;
    let sps = SAMPLES_PER_TIMESTAMP;
    let first = ((start.saturating_sub(window_start)) / sps) as usize;
    let last = (end.saturating_sub(window_start).div_ceil(sps) as usize).min(loud.len());
    if first >= last {
        return (start, end);
    }
    // (first loud frame, last loud frame, loud frames) of each island.
    let mut best: Option<(usize, usize, usize)> = None;
    let mut cur: Option<(usize, usize, usize)> = None;
    for (i, _) in loud[first..last].iter().enumerate().filter(|(_, &l)| l) {
        cur = match cur {
            Some((a, b, n)) if i - b <= MAX_GAP => Some((a, i, n + 1)),
            done => {
                if done.is_some_and(|d| best.is_none_or(|b| d.2 > b.2)) {
                    best = done;
                }
                Some((i, i, 1))
            }
        };
    }
    if cur.is_some_and(|d| best.is_none_or(|b| d.2 > b.2)) {
        best = cur;
    }
    let Some((a, b, _)) = best else {
        return (start, end);
    };
    let at = |f: usize| window_start + (first + f) as u64 * sps;
    (at(a).max(start), at(b + 1).min(end).max(at(a).max(start)))
}

/// Seconds of loud frames in `[start, end]` (stream samples).
fn speech_seconds(loud: &[bool], window_start: u64, start: u64, end: u64) -> f64 {
    let sps = SAMPLES_PER_TIMESTAMP;
    let first = (start.saturating_sub(window_start) / sps) as usize;
    let last = (end.saturating_sub(window_start).div_ceil(sps) as usize).min(loud.len());
    let frames = loud
        .get(first..last)
        .map_or(0, |f| f.iter().filter(|&&l| l).count());
    frames as f64 * sps as f64 / f64::from(SAMPLE_RATE)
}

/// Splits sampled tokens into segments at timestamps.
fn split_segments(tok: &Tokenizer, tokens: &[u32]) -> Vec<RawSegment> {
    let tb = tok.timestamp_begin();
    let mut out: Vec<RawSegment> = Vec::new();
    let mut cur: Option<RawSegment> = None;
    for &t in tokens {
        if tok.is_timestamp(t) {
            let ts = t - tb;
            match cur.take() {
                Some(mut c) if c.tokens.iter().any(|&x| tok.is_text(x)) => {
                    c.end = Some(ts);
                    c.tokens.push(t);
                    out.push(c);
                }
                // A start after a start (no text between): the later one counts.
                _ => {
                    cur = Some(RawSegment {
                        start: ts,
                        end: None,
                        tokens: vec![t],
                    })
                }
            }
        } else if tok.is_text(t) {
            cur.get_or_insert_with(|| RawSegment {
                start: out.last().and_then(|s| s.end).unwrap_or(0),
                end: None,
                tokens: Vec::new(),
            })
            .tokens
            .push(t);
        }
    }
    if let Some(c) = cur {
        out.push(c);
    }
    out
}

/// The transcriber: owns the encoder, the decoder and the stream's seek position.
pub struct Transcriber {
    tokenizer: Tokenizer,
    decoder: Decoder,
    encoder: WindowEncoder,
    options: TranscribeOptions,
    model_name: String,
    /// Language token fixed by the options or detected on the first window with speech.
    language: Option<u32>,
    language_fixed: bool,
    /// The language token the options ask for.
    language_option: Option<u32>,
    suppress: Vec<u32>,
    suppress_blank: Vec<u32>,
    initial_prompt: Vec<u32>,
    /// Audio from `buffer_start` on.
    buffer: Vec<f32>,
    buffer_start: u64,
    seek: u64,
    /// Segments emitted since the prompt was last reset: end sample and tokens.
    history: Vec<(u64, Vec<u32>)>,
    /// Emitted segments a look-back may overlap: start, end, words.
    recent: Vec<(u64, u64, Vec<String>)>,
    /// Words of the segments emitted from the last window (to drop repeats).
    last_words: Vec<String>,
    window_index: u64,
    rng: Rng,
    /// The seek position of the last window decoded again without the prompt (see `process`).
    retried_at: Option<u64>,
    /// End of the last segment emitted (as shown).
    shown_until: u64,
    /// The decoder's (layer, head) pairs that follow the speech; none: no word alignment.
    alignment_heads: Vec<(usize, usize)>,
    debug: bool,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber")
            .field("model", &self.model_name)
            .field("options", &self.options)
            .field("seek", &self.seek)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl Transcriber {
    /// Loads the decoder and tokenizer of `model` (and `tokenizer.json` from its directory),
    /// prepares the encoder as `encoder` says and the decoder on a CPU engine of
    /// `options.decoder_precision`.
    pub fn new(
        model: &WhisperModel,
        encoder: &EncoderOptions,
        options: TranscribeOptions,
    ) -> Result<Transcriber, TranscribeError> {
        let window_encoder = WindowEncoder::new(model, encoder)?;
        Self::with_encoder(model, window_encoder, options)
    }

    /// Builds a transcriber from parts made elsewhere (another engine for the decoder, say).
    pub fn with_parts(
        model: &WhisperModel,
        tokenizer: Tokenizer,
        encoder: WindowEncoder,
        decoder: Decoder,
        options: TranscribeOptions,
    ) -> Result<Transcriber, TranscribeError> {
        let model_name = model.dir().display().to_string();
        if options.temperatures.is_empty() {
            return Err(TranscribeError::InvalidOption(
                "temperatures is empty".to_string(),
            ));
        }
        if options.beam_size == 0 || options.best_of == 0 {
            return Err(TranscribeError::InvalidOption(
                "beam_size and best_of must be at least 1".to_string(),
            ));
        }
        let multilingual = tokenizer.is_multilingual();
        if !multilingual && options.task == Task::Translate {
            return Err(TranscribeError::CannotTranslate(model_name));
        }
        let language = match (&options.language, multilingual) {
            (Some(code), true) => Some(
                tokenizer
                    .language_token(&code.to_lowercase())
                    .ok_or_else(|| TranscribeError::UnknownLanguage(code.clone()))?,
            ),
            _ => None,
        };
        let sp = tokenizer.special().clone();
        let suppress: Vec<u32> = match &options.suppress_tokens {
            Some(list) => list.clone(),
            None if !model.config().suppress_ids.is_empty() => model
                .config()
                .suppress_ids
                .iter()
                .filter_map(|&i| u32::try_from(i).ok())
                .collect(),
            None => Vec::new(),
        }
        .into_iter()
        // Never sampled whatever the list says: the prompt's own special tokens.
        .chain(
            [
                Some(sp.sot),
                sp.transcribe,
                sp.translate,
                sp.sot_prev,
                sp.sot_lm,
                sp.no_speech,
            ]
            .into_iter()
            .flatten(),
        )
        .collect();
        let suppress_blank: Vec<u32> = if model.config().suppress_ids_begin.is_empty() {
            let mut v = tokenizer.encode(" ");
            v.push(sp.eot);
            v
        } else {
            model
                .config()
                .suppress_ids_begin
                .iter()
                .filter_map(|&i| u32::try_from(i).ok())
                .collect()
        };
        let initial_prompt = options
            .initial_prompt
            .as_deref()
            .map(|p| tokenizer.encode(&format!(" {}", p.trim())))
            .unwrap_or_default();
        let seed = options.seed;
        let dims = model.dims();
        let alignment_heads = if options.word_timestamps {
            model
                .config()
                .alignment_heads
                .iter()
                .copied()
                .filter(|&(l, h)| l < dims.n_decoder_layers && h < dims.n_decoder_heads)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Transcriber {
            alignment_heads,
            tokenizer,
            decoder,
            encoder,
            language_fixed: language.is_some(),
            language_option: language,
            language,
            options,
            model_name,
            suppress,
            suppress_blank,
            initial_prompt,
            buffer: Vec::new(),
            buffer_start: 0,
            seek: 0,
            history: Vec::new(),
            recent: Vec::new(),
            last_words: Vec::new(),
            window_index: 0,
            rng: Rng::new(seed),
            retried_at: None,
            shown_until: 0,
            debug: std::env::var_os("WHISPERENCNPU_DEBUG_DECODE").is_some(),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The window encoder (which backend and precision run).
    pub fn encoder(&self) -> &WindowEncoder {
        &self.encoder
    }

    /// Like [`new`](Self::new), with an encoder already prepared (and warmed up) by the caller.
    pub fn with_encoder(
        model: &WhisperModel,
        encoder: WindowEncoder,
        options: TranscribeOptions,
    ) -> Result<Transcriber, TranscribeError> {
        let tokenizer = Tokenizer::load(&model.dir().join("tokenizer.json"), model.dims().n_vocab)?;
        let engine: std::sync::Arc<dyn npu::Engine> = match options.decoder_precision {
            npu::Precision::F32 => std::sync::Arc::new(npu::CpuF32Engine::new()),
            npu::Precision::Int8 => std::sync::Arc::new(npu::cpu_int8::CpuInt8Engine::new()),
        };
        let decoder = Decoder::new(model, engine, options.decoder_threads)?;
        Self::with_parts(model, tokenizer, encoder, decoder, options)
    }

    pub fn options(&self) -> &TranscribeOptions {
        &self.options
    }

    /// The language in use: fixed by the options or detected (`None` before detection and for
    /// English-only models).
    pub fn language(&self) -> Option<&str> {
        self.language.and_then(|t| self.tokenizer.language_code(t))
    }

    /// Appends audio (16 kHz mono, [-1, 1]); holes in the stream are to be pushed as silence.
    pub fn push_audio(&mut self, samples: &[f32]) {
        self.buffer.extend_from_slice(samples);
    }

    /// Appends `n` samples of silence (a GAP, a hole in the timestamps).
    pub fn push_silence(&mut self, n: usize) {
        self.buffer.resize(self.buffer.len() + n, 0.0);
    }

    /// Stream sample just past the audio pushed so far.
    pub fn pushed_end(&self) -> u64 {
        self.buffer_start + self.buffer.len() as u64
    }

    /// Stream sample where the next window starts.
    pub fn seek(&self) -> u64 {
        self.seek
    }

    /// Whether [`next_window`](Self::next_window) has a full window to decode.
    pub fn has_window(&self) -> bool {
        self.pushed_end() >= self.seek + WINDOW_SAMPLES as u64
    }

    /// Decodes the window at the seek position if a full one is buffered.
    pub fn next_window(&mut self) -> Option<WindowResult> {
        self.has_window().then(|| self.process(false))
    }

    /// End of stream: decodes everything left (windows in turn until the audio is used up) and
    /// emits all of it. The transcriber is then ready for a new stream continuing at
    /// [`pushed_end`](Self::pushed_end).
    pub fn finish(&mut self) -> Vec<WindowResult> {
        let mut out = Vec::new();
        // Less than 0.1 s left: nothing a word fits in.
        while self.pushed_end() > self.seek + u64::from(SAMPLE_RATE) / 10 {
            let r = self.process(true);
            let last = r.last;
            out.push(r);
            if last {
                break;
            }
        }
        let end = self.pushed_end();
        self.seek = end;
        self.buffer.clear();
        self.buffer_start = end;
        out
    }

    /// Drops all pending audio and the text context: the next sample pushed is stream sample
    /// `start_sample` (a flushing seek). A detected language is forgotten.
    pub fn reset(&mut self, start_sample: u64) {
        self.buffer.clear();
        self.buffer_start = start_sample;
        self.seek = start_sample;
        self.history.clear();
        self.recent.clear();
        self.last_words.clear();
        self.shown_until = start_sample;
        self.retried_at = None;
        self.window_index = 0;
        self.rng = Rng::new(self.options.seed);
        // A language detected in the last stream is detected again.
        self.language = self.language_option;
        self.language_fixed = self.language_option.is_some();
    }

    fn decode_params(
        &self,
        language: Option<u32>,
        audio_samples: usize,
        prompt_before: u64,
    ) -> DecodeParams {
        let o = &self.options;
        let mut prompt: Vec<u32> = Vec::new();
        if o.use_prompt {
            prompt.extend_from_slice(&self.initial_prompt);
            let tol = (LOOKBACK_TOLERANCE * f64::from(SAMPLE_RATE)) as u64;
            for (end, tokens) in &self.history {
                if *end <= prompt_before + tol {
                    prompt.extend_from_slice(tokens);
                }
            }
            if prompt.len() > MAX_PROMPT_TOKENS {
                prompt.drain(..prompt.len() - MAX_PROMPT_TOKENS);
            }
        } else if self.history.is_empty() {
            prompt.extend_from_slice(&self.initial_prompt);
        }
        let seconds = audio_samples as f64 / f64::from(SAMPLE_RATE);
        DecodeParams {
            prompt,
            language,
            task: o.task,
            temperature: 0.0,
            beam_size: o.beam_size,
            patience: o.patience,
            best_of: o.best_of,
            // At most ~12 tokens a second of audio (fast speech is ~5 words a second).
            sample_len: (24.0 + 12.0 * seconds).ceil() as usize,
            max_initial_timestamp: Some((o.max_initial_timestamp / 0.02).round() as u32),
            max_timestamp: (audio_samples as u64 / SAMPLES_PER_TIMESTAMP) as u32,
            suppress_blank: if o.suppress_blank {
                self.suppress_blank.clone()
            } else {
                Vec::new()
            },
            suppress: self.suppress.clone(),
            without_timestamps: false,
            check_repetition: o.check_repetition,
        }
    }

    /// OpenAI's `decode_with_fallback`, with a repetition counting as a failure. Returns the result
    /// kept and whether every temperature failed.
    fn decode_with_fallback(
        &mut self,
        cross: &CrossKv,
        mut params: DecodeParams,
        at_end: bool,
        timing: &mut TranscribeTiming,
    ) -> (DecodeResult, bool) {
        let o = self.options.clone();
        let mut tried: Vec<DecodeResult> = Vec::new();
        for &t in &o.temperatures {
            params.temperature = t;
            let r = decoding::decode(
                &self.decoder,
                &self.tokenizer,
                cross,
                &params,
                &mut self.rng,
            );
            let n = if t > 0.0 { o.best_of } else { o.beam_size };
            timing.decoded_tokens += n * (r.tokens.len() + 1);
            if self.debug {
                eprintln!(
                    "  t={t:.1} lp={:.3} cr={:.2} ns={:.3} rep={} {}",
                    r.avg_logprob,
                    r.compression_ratio,
                    r.no_speech_prob,
                    r.repetition,
                    self.tokenizer.decode_with_timestamps(&r.tokens)
                );
            }
            // A loop after complete segments is the model running on past the end of the
            // window's audio: the cut result is good, its open tail is decoded again from the
            // next window. A loop with nothing complete before it is a failure.
            let mut fail = r.repetition
                && !split_segments(&self.tokenizer, &r.tokens)
                    .iter()
                    .any(|s| s.end.is_some() || (at_end && !s.tokens.is_empty()));
            if o.compression_ratio_threshold
                .is_some_and(|th| r.compression_ratio > th)
            {
                fail = true;
            }
            if o.logprob_threshold.is_some_and(|th| r.avg_logprob < th) {
                fail = true;
            }
            if self.is_silence(&r) {
                fail = false;
            }
            if !fail {
                return (r, false);
            }
            tried.push(r);
        }
        // Every temperature failed: the best non-looping result, else the greedy one (its
        // repetition is cut already).
        let best = tried
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                !r.repetition
                    && o.compression_ratio_threshold
                        .is_none_or(|th| r.compression_ratio <= th)
            })
            .max_by(|a, b| a.1.avg_logprob.total_cmp(&b.1.avg_logprob))
            .map_or(0, |(i, _)| i);
        (tried.swap_remove(best), true)
    }

    fn is_silence(&self, r: &DecodeResult) -> bool {
        let o = &self.options;
        match o.no_speech_threshold {
            Some(th) => {
                f64::from(r.no_speech_prob) > th
                    && o.logprob_threshold.is_none_or(|lt| r.avg_logprob <= lt)
            }
            None => false,
        }
    }

    /// Encodes `n` samples of the buffer from stream sample `window_start` and decodes them with
    /// the fallback; the prompt is the text emitted before `prompt_before`.
    fn run_window(
        &mut self,
        window_start: u64,
        n: usize,
        last: bool,
        prompt_before: u64,
        timing: &mut TranscribeTiming,
    ) -> (DecodeResult, bool, Option<u32>, CrossKv) {
        let off = (window_start - self.buffer_start) as usize;
        let (encoded, enc_timing) = self.encoder.encode(&self.buffer[off..off + n]);
        timing.mel += enc_timing.mel;
        timing.encoder += enc_timing.encoder;
        let t0 = Instant::now();
        let cross = self.decoder.cross_kv(encoded.view());
        let language = if self.tokenizer.is_multilingual() {
            match self.language {
                Some(l) => Some(l),
                None => decoding::detect_language(&self.decoder, &self.tokenizer, &cross)
                    .first()
                    .map(|&(id, _)| id),
            }
        } else {
            None
        };
        let params = self.decode_params(language, n, prompt_before);
        if self.debug {
            eprintln!(
                "window at {:.2} s, {:.2} s of audio{}",
                window_start as f64 / f64::from(SAMPLE_RATE),
                n as f64 / f64::from(SAMPLE_RATE),
                if last { ", last" } else { "" }
            );
        }
        let (result, failed) = self.decode_with_fallback(&cross, params, last, timing);
        timing.decoder += t0.elapsed();
        (result, failed, language, cross)
    }

    fn process(&mut self, at_end: bool) -> WindowResult {
        let available = (self.pushed_end() - self.seek) as usize;
        let last = at_end && available <= WINDOW_SAMPLES;
        let index = self.window_index;
        self.window_index += 1;
        let mut timing = TranscribeTiming::default();

        // The stream's last window is short: decode the last full 10.24 s instead, the audio before
        // the seek position too, and keep the words after those already emitted (the model does
        // much better with a full window than with a short one and padding).
        let lookback = if last {
            (WINDOW_SAMPLES - available).min((self.seek - self.buffer_start) as usize)
        } else {
            0
        };
        if lookback >= SAMPLE_RATE as usize && !self.is_quiet(self.seek, available) {
            let start = self.seek - lookback as u64;
            let n = lookback + available;
            let (result, failed, language, cross) =
                self.run_window(start, n, true, start, &mut timing);
            if !failed && !self.is_silence(&result) {
                if let Some((mut emit, k)) = self.align_lookback(start, n, &result.tokens) {
                    let t0 = Instant::now();
                    self.align_words(&cross, language, start, n, &result.tokens, k, &mut emit);
                    timing.decoder += t0.elapsed();
                    let mut out =
                        self.window_result(index, start, n, true, &result, failed, language);
                    self.lock_language(language);
                    out.timing = timing;
                    let _ = self.emit(&mut out, emit, &result);
                    out.next_seek = start + n as u64;
                    self.advance(out.next_seek);
                    return out;
                }
            }
            if self.debug {
                eprintln!("  look-back not aligned: decoding from the seek position");
            }
        }

        // A pause before the speech: start the window half a second before the speech instead.
        // Whisper times speech after a long pause badly and invents text in it.
        let n = available.min(WINDOW_SAMPLES);
        if let Some(first) = self.loud_frames(self.seek, n).iter().position(|&l| l) {
            let onset = self.seek + first as u64 * SAMPLES_PER_TIMESTAMP;
            let new_seek = onset.saturating_sub(u64::from(SAMPLE_RATE) / 2);
            if new_seek > self.seek + u64::from(SAMPLE_RATE) {
                let skipped = (new_seek - self.seek) as usize;
                let mut out = self.window_result(
                    index,
                    self.seek,
                    skipped,
                    false,
                    &DecodeResult::default(),
                    false,
                    None,
                );
                out.no_speech = true;
                out.next_seek = new_seek;
                if self.debug {
                    eprintln!(
                        "pause from {:.2} s: the window starts at {:.2} s",
                        self.seek as f64 / 16000.0,
                        new_seek as f64 / 16000.0
                    );
                }
                self.advance(new_seek);
                return out;
            }
        }

        let start = self.seek;
        if self.is_quiet(start, n) {
            let mut out =
                self.window_result(index, start, n, last, &DecodeResult::default(), false, None);
            out.no_speech = true;
            out.no_speech_prob = 1.0;
            if self.debug {
                eprintln!(
                    "window at {:.2} s: below the silence threshold",
                    start as f64 / 16000.0
                );
            }
            self.advance(out.next_seek);
            return out;
        }
        let (result, failed, language, cross) = self.run_window(start, n, last, start, &mut timing);
        let mut out = self.window_result(index, start, n, last, &result, failed, language);
        out.timing = timing;
        if out.no_speech {
            if !last {
                out.next_seek = self.stop_before_trailing_speech(start, n, out.next_seek);
            }
            self.advance(out.next_seek);
            return out;
        }
        self.lock_language(language);
        let (raw, seek_ts) = self.select_segments(&result.tokens, n, last);
        let mut emit: Vec<Emit> = raw
            .into_iter()
            .map(|s| Emit {
                start: start + u64::from(s.start) * SAMPLES_PER_TIMESTAMP,
                end: start + u64::from(s.end.unwrap_or(seek_ts)) * SAMPLES_PER_TIMESTAMP,
                tokens: s.tokens,
                words: None,
                word_list: Vec::new(),
            })
            .collect();
        let t0 = Instant::now();
        self.align_words(&cross, language, start, n, &result.tokens, 0, &mut emit);
        out.timing.decoder += t0.elapsed();
        let untranscribed = self.emit(&mut out, emit, &result);
        out.next_seek = if last {
            start + n as u64
        } else {
            let seek = start + (u64::from(seek_ts) * SAMPLES_PER_TIMESTAMP).min(n as u64);
            if out.segments.is_empty() {
                self.stop_before_trailing_speech(start, n, seek)
            } else {
                seek // the next window starts after the text said, with what follows it
            }
        };
        // Speech the model answered with the previous text: decode it again from there without the
        // prompt that led it astray (once per position, so this always moves on).
        if let Some(at) = untranscribed.filter(|_| !last) {
            // A little before: the dropped segment's timestamp may be late for the speech.
            let at = at
                .saturating_sub(u64::from(SAMPLE_RATE))
                .clamp(start, out.next_seek);
            if self.retried_at != Some(at) {
                if self.debug {
                    eprintln!(
                        "  repeated the prompt over speech: again from {:.2} s without it",
                        at as f64 / 16000.0
                    );
                }
                self.retried_at = Some(at);
                self.history.clear();
                out.next_seek = at;
            }
        }
        self.advance(out.next_seek);
        out
    }

    /// The segments of a look-back decode (window from `start`, `n` samples) that come after
    /// the words already emitted: the decoded words are aligned with the emitted ones that overlap
    /// the window (the first of which may begin before it). `None` when they do not match well.
    /// Also returns the index in `tokens` where the new part begins.
    fn align_lookback(&self, start: u64, n: usize, tokens: &[u32]) -> Option<(Vec<Emit>, usize)> {
        let overlap: Vec<&(u64, u64, Vec<String>)> =
            self.recent.iter().filter(|r| r.1 > start).collect();
        let mut target: Vec<String> = Vec::new();
        let mut free = 0;
        for (i, (s, e, words)) in overlap.iter().enumerate() {
            if i == 0 && *s < start {
                // Roughly this many of its words lie before the window.
                let frac = (start - s) as f64 / (e - s).max(1) as f64;
                free = ((frac * words.len() as f64).ceil() as usize + 2).min(words.len());
            }
            target.extend(words.iter().cloned());
        }
        let decoded = text::Words::from_tokens(&self.tokenizer, tokens);
        let dw = &decoded.words;
        // cost[j]: fewest edits between some target[i..] (i <= free) and dw[..j].
        let mut best: Option<(usize, usize, usize)> = None; // (cost, j, matched length)
        for i in 0..=free.min(target.len()) {
            let t = &target[i..];
            let row = text::edit_distance_to_prefixes(t, dw);
            for (j, &c) in row.iter().enumerate() {
                if best.is_none_or(|(bc, bj, _)| c < bc || (c == bc && j < bj)) {
                    best = Some((c, j, t.len()));
                }
            }
        }
        let (cost, j, matched) = best?;
        let k = decoded.token_index.get(j).copied().unwrap_or(tokens.len());
        let rest = &tokens[k..];
        // The timestamps just before the new part (the end of the previous segment and the start
        // of the next) are near the seek position when the alignment is right: that allows more
        // differences between the two decodings of the same words.
        let boundary_agrees = tokens[..k]
            .iter()
            .rev()
            .take_while(|&&t| self.tokenizer.is_timestamp(t))
            .any(|&t| {
                let ts = u64::from(t - self.tokenizer.timestamp_begin());
                (start + ts * SAMPLES_PER_TIMESTAMP).abs_diff(self.seek) <= u64::from(SAMPLE_RATE)
            });
        let share = if boundary_agrees { 0.5 } else { 0.3 };
        let allowed = ((matched as f64) * share).floor().max(1.0) as usize;
        if self.debug {
            eprintln!(
                "  look-back: {} emitted word(s) overlap, {} decoded; {} edit(s) at word {j}",
                target.len(),
                dw.len(),
                cost
            );
        }
        if !target.is_empty() && cost > allowed {
            return None;
        }
        let max_ts = (n as u64 / SAMPLES_PER_TIMESTAMP) as u32;
        let seek = self.seek;
        let emit = self
            .plausible(split_segments(&self.tokenizer, rest))
            .into_iter()
            .filter(|s| self.has_text(s) && s.start + END_SLACK < max_ts)
            .map(|s| {
                let at = |ts: u32| start + u64::from(ts) * SAMPLES_PER_TIMESTAMP;
                let begin = at(s.start).max(seek);
                Emit {
                    start: begin,
                    end: at(s.end.unwrap_or(max_ts)).max(begin),
                    tokens: s.tokens,
                    words: None,
                    word_list: Vec::new(),
                }
            })
            .collect();
        Some((emit, k))
    }

    /// Sets where the words of each segment of `emit` are, by aligning all the text of the
    /// window's decoded `tokens` with its audio (`n` samples from `window_start`) through the
    /// decoder's alignment heads. The segments are, in order, pieces of `tokens[from..]`.
    #[allow(clippy::too_many_arguments)]
    fn align_words(
        &self,
        cross: &CrossKv,
        language: Option<u32>,
        window_start: u64,
        n: usize,
        tokens: &[u32],
        from: usize,
        emit: &mut [Emit],
    ) {
        let heads = &self.alignment_heads;
        if heads.is_empty() || emit.is_empty() {
            return;
        }
        let is_text = |t: &&u32| self.tokenizer.is_text(**t);
        let text: Vec<u32> = tokens.iter().filter(is_text).copied().collect();
        if text.is_empty() || text.len() + 8 > self.decoder.n_text_ctx() {
            return;
        }
        let sp = self.tokenizer.special();
        let mut seq = vec![sp.sot];
        if self.tokenizer.is_multilingual() {
            seq.extend(language);
            let task = match self.options.task {
                Task::Transcribe => sp.transcribe,
                Task::Translate => sp.translate,
            };
            seq.extend(task);
        }
        let prefix = seq.len();
        seq.push(sp.no_timestamps);
        seq.extend_from_slice(&text);
        seq.push(sp.eot);
        let scores = self.decoder.cross_attention_scores(cross, &seq, heads);
        let positions = n / SAMPLES_PER_TIMESTAMP as usize;
        let Some(starts) = alignment::token_positions(&scores, prefix, text.len(), positions)
        else {
            return;
        };
        let at = |p: usize| window_start + p as u64 * SAMPLES_PER_TIMESTAMP;
        let mut cursor = tokens[..from.min(tokens.len())]
            .iter()
            .filter(is_text)
            .count();
        for e in emit.iter_mut() {
            let seg: Vec<u32> = e.tokens.iter().filter(is_text).copied().collect();
            if seg.is_empty() {
                continue;
            }
            let Some(i) = text[cursor.min(text.len())..]
                .windows(seg.len())
                .position(|w| w == seg.as_slice())
            else {
                continue;
            };
            let first = cursor + i;
            cursor = first + seg.len();
            // The end of the text is where <|endoftext|> takes over, which the attention places
            // late (it spreads over what follows); the timestamp is better there.
            let end = if cursor == text.len() {
                e.end
            } else {
                at(starts[cursor])
            };
            e.words = Some((at(starts[first]), end));
            e.word_list = self.words_of(&text[first..cursor], &starts[first..=cursor], &at, end);
            if self.debug {
                eprintln!(
                    "  words at {:.2}-{:.2} s (timestamps {:.2}-{:.2} s)",
                    at(starts[first]) as f64 / 16000.0,
                    at(starts[cursor]) as f64 / 16000.0,
                    e.start as f64 / 16000.0,
                    e.end as f64 / 16000.0
                );
            }
        }
    }

    /// Turns the chosen segments into [`Segment`]s of `out`, dropping one the previous window
    /// ended with already, and records them for the prompt.
    /// Returns where the first segment dropped with speech under it starts: the model said
    /// something other than what is there (usually the prompt again), so that audio is still to
    /// be transcribed.
    fn emit(
        &mut self,
        out: &mut WindowResult,
        emit: Vec<Emit>,
        result: &DecodeResult,
    ) -> Option<u64> {
        let window_end = out.start_sample + out.audio_samples as u64;
        let prev_words = self.last_words.clone();
        let mut emitted_words: Vec<String> = Vec::new();
        let mut untranscribed = None;
        let loud = self.loud_frames(out.start_sample, out.audio_samples);
        for s in emit {
            let text = self.tokenizer.decode(&s.tokens);
            let words: Vec<String> = text::Words::from_tokens(&self.tokenizer, &s.tokens).words;
            if words.is_empty() {
                continue;
            }
            // Said already at the end of the previous window.
            if out.segments.is_empty() && prev_words.ends_with(&words) {
                let speech = speech_seconds(&loud, out.start_sample, s.start, s.end.max(s.start));
                if speech > 0.5 && untranscribed.is_none() {
                    untranscribed = Some(s.start);
                }
                continue;
            }
            // The span by the timestamp tokens: what the decoding state (prompt, look-back)
            // follows, as the seek positions do.
            let span = |start: u64, end: u64, floor: u64| {
                let start = start.clamp(floor.min(window_end), window_end);
                let end = end.clamp(start, window_end);
                trim_to_speech(&loud, out.start_sample, start, end)
            };
            let (ts_start, ts_end) = span(s.start, s.end, self.seek);
            // The span shown: where the words are, when the alignment found them, not before the
            // text shown last ends.
            let (start, end) = match s.words.filter(|w| w.1 > w.0) {
                Some((a, b)) => span(a, b, self.seek.max(self.shown_until)),
                None => (ts_start, ts_end),
            };
            // Text over silence is the model talking to itself (often the prompt again): a
            // segment must have loud audio under it, enough for its words.
            // (Over the span the model gave: clamping to the seek may collapse it.)
            let speech = speech_seconds(&loud, out.start_sample, s.start, s.end.max(s.start));
            let judged = s.end > s.start; // a look-back segment may have no span of its own
            if judged && (words.len() as f64 > 10.0 * speech + 3.0 || speech == 0.0) {
                if self.debug {
                    eprintln!("dropped over {speech:.2} s of speech: {text:?}");
                }
                continue;
            }
            emitted_words.extend(words.iter().cloned());
            self.recent.push((ts_start, ts_end, words));
            self.history.push((ts_end, s.tokens.clone()));
            self.shown_until = end;
            out.segments.push(Segment {
                start_sample: start,
                end_sample: end,
                start: start as f64 / f64::from(SAMPLE_RATE),
                end: end as f64 / f64::from(SAMPLE_RATE),
                text,
                tokens: s.tokens,
                avg_logprob: result.avg_logprob,
                no_speech_prob: f64::from(result.no_speech_prob),
                compression_ratio: result.compression_ratio,
                temperature: result.temperature,
                language: out.language.clone(),
                words: s
                    .word_list
                    .into_iter()
                    .map(|w| {
                        let a = w.start_sample.clamp(start, end);
                        let b = w.end_sample.clamp(a, end);
                        let (start_sample, end_sample) =
                            loudest_island(&loud, out.start_sample, a, b);
                        Word {
                            start_sample,
                            end_sample,
                            text: w.text,
                        }
                    })
                    .collect(),
            });
        }
        if !emitted_words.is_empty() {
            self.last_words = emitted_words;
        }
        if !self.options.use_prompt || result.temperature > 0.5 {
            self.history.clear();
        }
        // Keep what a look-back could overlap.
        let horizon = window_end.saturating_sub(2 * WINDOW_SAMPLES as u64);
        self.recent.retain(|r| r.1 > horizon);
        untranscribed
    }

    /// Where the next window should start instead of `seek` when speech begins shortly before
    /// the end of this window (`n` samples from `start`) after a pause: half a second before that
    /// speech. Whisper often says nothing of words cut at a window's end (or judges the window
    /// silent), and moving on to the window's end would lose their beginning.
    fn stop_before_trailing_speech(&self, start: u64, n: usize, seek: u64) -> u64 {
        let loud = self.loud_frames(start, n);
        let Some(last_loud) = loud.iter().rposition(|&l| l) else {
            return seek;
        };
        // Speech must run up to the window's end (within 0.5 s) ...
        let frames_per_second = (u64::from(SAMPLE_RATE) / SAMPLES_PER_TIMESTAMP) as usize;
        if last_loud + frames_per_second / 2 < loud.len() {
            return seek;
        }
        // ... and start after a pause of at least 0.5 s.
        let pause = frames_per_second / 2;
        let mut onset = last_loud;
        let mut quiet = 0;
        for i in (0..last_loud).rev() {
            if loud[i] {
                onset = i;
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= pause {
                    break;
                }
            }
        }
        if quiet < pause {
            return seek; // speech all along
        }
        let at = (start + onset as u64 * SAMPLES_PER_TIMESTAMP)
            .saturating_sub(u64::from(SAMPLE_RATE) / 2);
        // Always move on by a second at least.
        if at < seek && at >= start + u64::from(SAMPLE_RATE) {
            if self.debug {
                eprintln!(
                    "  speech from {:.2} s runs into the window's end: next window from {:.2} s",
                    (start + onset as u64 * SAMPLES_PER_TIMESTAMP) as f64 / 16000.0,
                    at as f64 / 16000.0
                );
            }
            at
        } else {
            seek
        }
    }

    /// Splits aligned text tokens into words: a word starts at a token that begins with a space
    /// (or the first), and tokens without letters or digits stay with the word before them.
    /// `starts` has one more entry than `tokens` (where the last ends); the last word ends at `end`.
    fn words_of(
        &self,
        tokens: &[u32],
        starts: &[usize],
        at: &dyn Fn(usize) -> u64,
        end: u64,
    ) -> Vec<Word> {
        let mut words: Vec<(Vec<u8>, usize, usize)> = Vec::new(); // bytes, first token, end token
        for (i, &t) in tokens.iter().enumerate() {
            let bytes = self.tokenizer.token_bytes(t);
            let text = String::from_utf8_lossy(bytes);
            let new_word = text.starts_with(' ') && text.chars().any(char::is_alphanumeric);
            match words.last_mut() {
                Some(w) if !new_word => {
                    w.0.extend_from_slice(bytes);
                    w.2 = i + 1;
                }
                _ => words.push((bytes.to_vec(), i, i + 1)),
            }
        }
        words
            .into_iter()
            .map(|(bytes, a, b)| Word {
                text: String::from_utf8_lossy(&bytes).trim().to_string(),
                start_sample: at(starts[a]),
                end_sample: if b == tokens.len() {
                    end
                } else {
                    at(starts[b])
                },
            })
            .collect()
    }

    /// Whether the loudest 20 ms of the `n` samples from `start` are below the silence threshold.
    fn is_quiet(&self, start: u64, n: usize) -> bool {
        let Some(db) = self.options.silence_threshold_db else {
            return false;
        };
        let off = (start - self.buffer_start) as usize;
        let threshold = 10f64.powf(db / 20.0);
        let loudest = self.buffer[off..off + n]
            .chunks(SAMPLES_PER_TIMESTAMP as usize)
            .map(|c| {
                (c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / c.len() as f64)
                    .sqrt()
            })
            .fold(0.0, f64::max);
        loudest < threshold
    }

    /// For every 20 ms frame of the `n` samples from `start`: whether it is louder than the
    /// window's noise floor (its 10th percentile) by 12 dB, and than -55 dBFS.
    fn loud_frames(&self, start: u64, n: usize) -> Vec<bool> {
        let off = (start - self.buffer_start) as usize;
        let db: Vec<f64> = self.buffer[off..off + n]
            .chunks(SAMPLES_PER_TIMESTAMP as usize)
            .map(|c| {
                let ms =
                    c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / c.len() as f64;
                10.0 * ms.max(1e-12).log10()
            })
            .collect();
        let mut sorted = db.clone();
        sorted.sort_by(f64::total_cmp);
        let floor = sorted.get(sorted.len() / 10).copied().unwrap_or(-120.0);
        let threshold = (floor + 12.0).max(-55.0);
        db.iter().map(|&d| d > threshold).collect()
    }

    /// Segments that say more than a person can in their time are hallucinated: nothing from the
    /// first of them on is kept.
    fn plausible(&self, raw: Vec<RawSegment>) -> Vec<RawSegment> {
        let n = raw
            .iter()
            .position(|s| self.too_fast(s))
            .unwrap_or(raw.len());
        raw.into_iter().take(n).collect()
    }

    /// More than 10 words a second (plus slack) between the segment's timestamps.
    fn too_fast(&self, s: &RawSegment) -> bool {
        let Some(end) = s.end else {
            return false;
        };
        let words = text::Words::from_tokens(&self.tokenizer, &s.tokens)
            .words
            .len();
        let seconds = f64::from(end.saturating_sub(s.start)) * 0.02;
        words as f64 > 10.0 * seconds + 3.0
    }

    fn has_text(&self, s: &RawSegment) -> bool {
        s.tokens.iter().any(|&t| self.tokenizer.is_text(t))
    }

    fn lock_language(&mut self, language: Option<u32>) {
        if !self.language_fixed && language.is_some() {
            // Keep the language of the first window with speech.
            self.language = language;
            self.language_fixed = true;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn window_result(
        &self,
        index: u64,
        start: u64,
        n: usize,
        last: bool,
        result: &DecodeResult,
        failed: bool,
        language: Option<u32>,
    ) -> WindowResult {
        WindowResult {
            index,
            start_sample: start,
            audio_samples: n,
            next_seek: start + n as u64,
            segments: Vec::new(),
            no_speech: self.is_silence(result),
            no_speech_prob: f64::from(result.no_speech_prob),
            avg_logprob: result.avg_logprob,
            temperature: result.temperature,
            failed,
            language: language
                .and_then(|l| self.tokenizer.language_code(l))
                .map(str::to_string),
            last,
            timing: TranscribeTiming::default(),
        }
    }

    /// Which segments of a window decoded from the seek position to emit, and where the next
    /// window starts (timestamp units from the window start).
    fn select_segments(&self, tokens: &[u32], n: usize, last: bool) -> (Vec<RawSegment>, u32) {
        let raw = self.plausible(split_segments(&self.tokenizer, tokens));
        let max_ts = (n as u64 / SAMPLES_PER_TIMESTAMP) as u32;
        let margin = (self.options.edge_margin / 0.02).round() as u32;
        let with_text = |v: Vec<RawSegment>| -> Vec<RawSegment> {
            v.into_iter().filter(|s| self.has_text(s)).collect()
        };
        if last {
            // Not a segment starting at the very end of the audio (nothing can be in it).
            let v = with_text(raw)
                .into_iter()
                .filter(|s| s.start + END_SLACK < max_ts)
                .collect();
            return (v, max_ts);
        }
        let complete = |s: &&RawSegment| self.has_text(s) && s.end.is_some();
        // Complete segments that end clear of the window's end: emitted; the rest is decoded again
        // from the next window, which starts where the last of them ends.
        let inside: Vec<RawSegment> = raw
            .iter()
            .filter(complete)
            .filter(|s| s.end.is_some_and(|e| e + margin <= max_ts))
            .cloned()
            .collect();
        if let Some(end) = inside.last().and_then(|s| s.end) {
            return (inside, end.max(1));
        }
        match raw.iter().find(|s| self.has_text(s)) {
            // Nothing said: the whole window is used up.
            None => (Vec::new(), max_ts),
            // Speech starts a little into the window but runs past its end: start there.
            Some(first) if first.start > 0 => (Vec::new(), first.start),
            // Speech from the start to (nearly) the end of the window: emit the complete segments
            // (or the whole text if none is complete) and go on after them.
            Some(_) => {
                let done: Vec<RawSegment> = raw.iter().filter(complete).cloned().collect();
                match done.last().and_then(|s| s.end) {
                    Some(end) if end > 0 => (done, end),
                    _ => (with_text(raw), max_ts),
                }
            }
        }
    }

    /// Moves the seek position, keeping one window of audio before it (for the look-back of the
    /// last window).
    fn advance(&mut self, seek: u64) {
        self.seek = seek;
        let keep_from = seek
            .saturating_sub(WINDOW_SAMPLES as u64)
            .max(self.buffer_start);
        let drop = (keep_from - self.buffer_start) as usize;
        self.buffer.drain(..drop.min(self.buffer.len()));
        self.buffer_start += drop as u64;
    }
}

#[cfg(test)]
mod tests;

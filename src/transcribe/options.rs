//! What the transcriber is asked to do and what it gives: options, segments, words, window results
//! and errors.

use std::time::Duration;

use crate::model::ModelError;
use crate::npu;
use crate::window::SetupError;

pub use crate::mel::SAMPLES_PER_TIMESTAMP;

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
    /// Start and end in seconds of stream time (`sample /` [`SAMPLE_RATE`](crate::mel::SAMPLE_RATE)).
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
    /// Waiting for other streams' encoder batches (a shared encoder).
    pub encoder_wait: Duration,
    /// Windows in the last encoder batch (1: encoded alone).
    pub encoder_batch: usize,
    /// Language detection, decoding at every temperature tried.
    pub decoder: Duration,
    /// Tokens run through the decoder (all temperatures and hypotheses, prompts excluded).
    pub decoded_tokens: usize,
    /// Streams' token-by-token steps per decoder call, seen from this window's steps (1: all
    /// alone; more: run with other streams' steps, a shared decoder; 0: no step).
    pub decoder_batch: f64,
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

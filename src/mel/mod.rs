//! Whisper's log-mel front end.
//!
//! For `samples` at 16 kHz: periodic Hann window of `N_FFT` samples, hop `HOP_LENGTH`, centred
//! reflect padding (`N_FFT / 2` each side, numpy `'reflect'` mode), power spectrum of the
//! `N_FFT / 2 + 1` bins, mel filterbank (slaney scale and norm), last STFT frame dropped,
//! `log10(max(x, 1e-10))`, floored at `max - 8` over the whole call, then `(x + 4) / 4`.
//!
//! Everything up to the logarithm is computed in f64 (it costs little and keeps the output within
//! a few 1e-7 of a float64 reference). Two real frames are transformed with one complex FFT
//! (one in the real part, one in the imaginary part), and the filterbank is applied sparsely.
use std::sync::Arc;

use ndarray::{Array2, ArrayViewMut2};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

mod filterbank;

use filterbank::SparseFilterbank;
pub use filterbank::{hz_to_mel_slaney, mel_filterbank, mel_to_hz_slaney};

/// Samples per second of Whisper's input (OpenAI's `whisper/audio.py`: `SAMPLE_RATE`); the
/// element's sink caps ask for it.
pub const SAMPLE_RATE: u32 = 16_000;
pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Samples per timestamp token: two mel frames, because the encoder's second convolution has
/// stride 2 (`whisper/audio.py`: `N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2`).
pub const SAMPLES_PER_TIMESTAMP: u64 = 2 * HOP_LENGTH as u64;
/// Seconds per timestamp token (0.02 s: `<|0.00|>`, `<|0.02|>`, ...).
pub const TIMESTAMP_STEP: f64 = SAMPLES_PER_TIMESTAMP as f64 / SAMPLE_RATE as f64;
/// Mel frames in one window of the element (10.24 s).
pub const WINDOW_FRAMES: usize = 1024;
/// Audio samples in one window of the element.
pub const WINDOW_SAMPLES: usize = WINDOW_FRAMES * HOP_LENGTH;

/// Number of FFT bins kept (`N_FFT / 2 + 1`).
pub const N_BINS: usize = N_FFT / 2 + 1;
/// Power floor before the logarithm.
const LOG_CLAMP: f64 = 1e-10;
/// Dynamic range kept below the maximum, in log10 units.
const DYNAMIC_RANGE: f32 = 8.0;

/// Number of mel frames [`LogMel::compute`] gives for `n_samples` samples.
pub fn n_frames(n_samples: usize) -> usize {
    n_samples / HOP_LENGTH
}

/// Periodic Hann window of length `n`: `0.5 - 0.5 cos(2 pi i / n)`.
pub fn hann_window(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect()
}

/// Index into a signal of length `n` (> 0) for position `i` of its numpy-`'reflect'` extension
/// (mirror about the first and last samples, which are not repeated).
fn reflect_index(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let j = i.rem_euclid(period);
    if j < n as isize {
        j as usize
    } else {
        (period - j) as usize
    }
}

/// The `N_FFT` samples of frame `t` of the reflect-padded signal, in f64.
fn frame(samples: &[f32], t: usize) -> impl Iterator<Item = f64> + '_ {
    let (n, pad) = (samples.len(), N_FFT / 2);
    let start = t * HOP_LENGTH;
    // Inside the signal (all frames but the first and last few) the samples are read as they are.
    let inside =
        (start >= pad && start - pad + N_FFT <= n).then(|| &samples[start - pad..][..N_FFT]);
    (0..N_FFT).map(move |i| {
        let x = match inside {
            Some(s) => s[i],
            None => samples[reflect_index((start + i) as isize - pad as isize, n)],
        };
        f64::from(x)
    })
}

/// Computes log-mel spectrograms; keeps its FFT plan and scratch buffers between calls.
pub struct LogMel {
    n_mels: usize,
    window: Vec<f64>,
    filters: SparseFilterbank,
    fft: Arc<dyn Fft<f64>>,
    fft_buf: Vec<Complex<f64>>,
    fft_scratch: Vec<Complex<f64>>,
    power: [Vec<f64>; 2],
    mel: Vec<f64>,
    /// log10 mel energies, frame-major (`frames x n_mels`).
    log_mel: Vec<f32>,
}

impl LogMel {
    /// A front end with `n_mels` bands (80 for Whisper up to v2, 128 for large-v3).
    pub fn new(n_mels: usize) -> Self {
        let fft = FftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let scratch_len = fft.get_inplace_scratch_len();
        Self {
            n_mels,
            window: hann_window(N_FFT),
            filters: SparseFilterbank::from_dense(&mel_filterbank(n_mels, SAMPLE_RATE, N_FFT)),
            fft,
            fft_buf: vec![Complex::default(); N_FFT],
            fft_scratch: vec![Complex::default(); scratch_len],
            power: [vec![0.0; N_BINS], vec![0.0; N_BINS]],
            mel: vec![0.0; n_mels],
            log_mel: Vec::new(),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// `samples.len() / HOP_LENGTH` frames of `n_mels` bands: returns `n_mels x frames`.
    pub fn compute(&mut self, samples: &[f32]) -> Array2<f32> {
        let mut out = Array2::zeros((self.n_mels, n_frames(samples.len())));
        self.compute_into(samples, out.view_mut());
        out
    }

    /// As [`compute`](Self::compute), writing into `out`, which must be
    /// `n_mels x n_frames(samples.len())` (any layout). Allocates nothing once the internal
    /// buffers have grown to the input size.
    ///
    /// # Panics
    /// If `out` has the wrong shape.
    pub fn compute_into(&mut self, samples: &[f32], mut out: ArrayViewMut2<'_, f32>) {
        let frames = n_frames(samples.len());
        assert_eq!(
            out.dim(),
            (self.n_mels, frames),
            "LogMel::compute_into: output must be n_mels x (samples / HOP_LENGTH)"
        );
        if frames == 0 || self.n_mels == 0 {
            return;
        }
        let n_mels = self.n_mels;
        self.log_mel.resize(frames * n_mels, 0.0);
        let mut max = f32::NEG_INFINITY;
        for t in (0..frames).step_by(2) {
            let pair = if t + 1 < frames { 2 } else { 1 };
            self.power_spectra(samples, t, pair == 2);
            for p in 0..pair {
                self.filters.apply(&self.power[p], &mut self.mel);
                let dst = &mut self.log_mel[(t + p) * n_mels..(t + p + 1) * n_mels];
                for (d, &m) in dst.iter_mut().zip(&self.mel) {
                    let v = m.max(LOG_CLAMP).log10() as f32;
                    max = max.max(v);
                    *d = v;
                }
            }
        }

        let floor = max - DYNAMIC_RANGE;
        for (m, mut row) in out.outer_iter_mut().enumerate() {
            for (o, &v) in row.iter_mut().zip(self.log_mel[m..].iter().step_by(n_mels)) {
                *o = (v.max(floor) + 4.0) / 4.0;
            }
        }
    }

    /// Power spectra of frame `t` into `power[0]` and, if `both`, of frame `t + 1` into
    /// `power[1]`, with one complex FFT.
    /// The frames are read from `samples` reflect-padded by `N_FFT / 2` on both sides (as
    /// `torch.stft(center=True, pad_mode="reflect")`), without a padded copy of the signal: that
    /// copy in float64 was 1.3 MB per stream.
    fn power_spectra(&mut self, samples: &[f32], t: usize, both: bool) {
        let a = frame(samples, t);
        if both {
            let b = frame(samples, t + 1);
            for (((z, &w), x), y) in self.fft_buf.iter_mut().zip(&self.window).zip(a).zip(b) {
                *z = Complex::new(w * x, w * y);
            }
        } else {
            for ((z, &w), x) in self.fft_buf.iter_mut().zip(&self.window).zip(a) {
                *z = Complex::new(w * x, 0.0);
            }
        }
        self.fft
            .process_with_scratch(&mut self.fft_buf, &mut self.fft_scratch);

        // With z = fft(a + i b): A[k] = (Z[k] + conj(Z[-k])) / 2, B[k] = (Z[k] - conj(Z[-k])) / 2i.
        let z = &self.fft_buf;
        let [pa, pb] = &mut self.power;
        for k in 0..N_BINS {
            let zk = z[k];
            let zn = z[(N_FFT - k) % N_FFT];
            let (sr, di) = (zk.re + zn.re, zk.im - zn.im);
            pa[k] = 0.25 * (sr * sr + di * di);
            let (si, dr) = (zk.im + zn.im, zk.re - zn.re);
            pb[k] = 0.25 * (si * si + dr * dr);
        }
    }
}

#[cfg(test)]
mod tests;

//! Slaney-style mel filterbank, as `librosa.filters.mel(sr, n_fft, n_mels)` with `htk=False`,
//! `norm='slaney'`, `fmin=0`, `fmax=sr/2` (the filterbank Whisper ships in `mel_filters.npz`).
use ndarray::Array2;

/// Below this frequency the slaney mel scale is linear.
const MIN_LOG_HZ: f64 = 1000.0;
/// Hz per mel in the linear part of the slaney scale.
const F_SP: f64 = 200.0 / 3.0;
/// Mel value of `MIN_LOG_HZ`.
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

/// Step of the logarithmic part of the slaney scale (`ln(6.4) / 27`).
fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hz to mel on the slaney scale (librosa `hz_to_mel(htk=False)`).
pub fn hz_to_mel_slaney(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

/// Mel to Hz on the slaney scale (librosa `mel_to_hz(htk=False)`).
pub fn mel_to_hz_slaney(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// `numpy.linspace(start, stop, num)` (endpoint included, last element exactly `stop`).
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// Mel filterbank in float64, `n_mels x (n_fft / 2 + 1)`.
pub(crate) fn mel_filterbank_f64(n_mels: usize, sample_rate: u32, n_fft: usize) -> Array2<f64> {
    let n_bins = n_fft / 2 + 1;
    let sr = f64::from(sample_rate);
    let fft_freqs = linspace(0.0, sr / 2.0, n_bins);
    let mels = linspace(
        hz_to_mel_slaney(0.0),
        hz_to_mel_slaney(sr / 2.0),
        n_mels + 2,
    );
    let mel_f: Vec<f64> = mels.into_iter().map(mel_to_hz_slaney).collect();
    let fdiff: Vec<f64> = mel_f.windows(2).map(|w| w[1] - w[0]).collect();

    let mut weights = Array2::<f64>::zeros((n_mels, n_bins));
    for (i, mut row) in weights.outer_iter_mut().enumerate() {
        // Slaney normalisation: each triangle has unit area in Hz.
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for (w, &f) in row.iter_mut().zip(&fft_freqs) {
            let lower = -(mel_f[i] - f) / fdiff[i];
            let upper = (mel_f[i + 2] - f) / fdiff[i + 1];
            *w = lower.min(upper).max(0.0) * enorm;
        }
    }
    weights
}

/// Whisper's mel filterbank: `n_mels x (n_fft / 2 + 1)` triangular filters on the slaney mel
/// scale from 0 Hz to `sample_rate / 2`, with slaney (unit-area) normalisation, rounded to f32 —
/// the same numbers as `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)`
/// (80 bands for Whisper up to v2, 128 for large-v3).
pub fn mel_filterbank(n_mels: usize, sample_rate: u32, n_fft: usize) -> Array2<f32> {
    mel_filterbank_f64(n_mels, sample_rate, n_fft).mapv(|w| w as f32)
}

/// The filterbank stored sparsely: for each band, the first bin with a nonzero weight and the
/// weights of the contiguous run of bins it covers.
#[derive(Debug, Clone)]
pub(crate) struct SparseFilterbank {
    /// Per band: (first bin, offset into `weights`, number of bins).
    bands: Vec<(usize, usize, usize)>,
    weights: Vec<f64>,
}

impl SparseFilterbank {
    /// From a dense `n_mels x n_bins` filterbank; weights are taken as given (widened to f64).
    pub(crate) fn from_dense(dense: &Array2<f32>) -> Self {
        let mut bands = Vec::with_capacity(dense.nrows());
        let mut weights = Vec::new();
        for row in dense.outer_iter() {
            let first = row.iter().position(|&w| w != 0.0);
            let last = row.iter().rposition(|&w| w != 0.0);
            match (first, last) {
                (Some(first), Some(last)) => {
                    let offset = weights.len();
                    weights.extend(
                        row.iter()
                            .skip(first)
                            .take(last + 1 - first)
                            .map(|&w| f64::from(w)),
                    );
                    bands.push((first, offset, last + 1 - first));
                }
                _ => bands.push((0, weights.len(), 0)),
            }
        }
        Self { bands, weights }
    }

    /// Number of bands.
    #[cfg(test)]
    pub(crate) fn n_mels(&self) -> usize {
        self.bands.len()
    }

    /// Total number of stored weights (for tests).
    #[cfg(test)]
    pub(crate) fn nnz(&self) -> usize {
        self.weights.len()
    }

    /// `out[m] = sum_k filters[m, k] * power[k]`.
    #[inline]
    pub(crate) fn apply(&self, power: &[f64], out: &mut [f64]) {
        for (o, &(first, offset, len)) in out.iter_mut().zip(&self.bands) {
            let w = &self.weights[offset..offset + len];
            let p = &power[first..first + len];
            *o = w.iter().zip(p).map(|(w, p)| w * p).sum();
        }
    }
}

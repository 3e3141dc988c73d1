use super::*;

/// Straightforward reference: explicit padding, O(n^2) DFT, dense filterbank, all in f64.
fn reference(samples: &[f32], n_mels: usize) -> Array2<f32> {
    let n = samples.len();
    let frames = n / HOP_LENGTH;
    let pad = N_FFT / 2;
    let padded: Vec<f64> = (0..n + 2 * pad)
        .map(|j| f64::from(samples[reflect_index(j as isize - pad as isize, n)]))
        .collect();
    let window = hann_window(N_FFT);
    let filters = filterbank::mel_filterbank_f64(n_mels, SAMPLE_RATE, N_FFT);
    let mut log = Array2::<f64>::zeros((n_mels, frames));
    for t in 0..frames {
        let frame = &padded[t * HOP_LENGTH..t * HOP_LENGTH + N_FFT];
        let power: Vec<f64> = (0..N_BINS)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for (i, (&x, &w)) in frame.iter().zip(&window).enumerate() {
                    let ang = -2.0 * std::f64::consts::PI * ((k * i) % N_FFT) as f64 / N_FFT as f64;
                    re += x * w * ang.cos();
                    im += x * w * ang.sin();
                }
                re * re + im * im
            })
            .collect();
        for m in 0..n_mels {
            let e: f64 = filters.row(m).iter().zip(&power).map(|(f, p)| f * p).sum();
            log[[m, t]] = e.max(1e-10).log10();
        }
    }
    let max = log.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    log.mapv(|v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32)
}

/// Deterministic pseudo-random samples in [-amp, amp).
fn noise(n: usize, amp: f32, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn reflect_matches_numpy() {
    // np.pad([0, 1, 2, 3], 3, 'reflect') == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    let got: Vec<usize> = (-3..7).map(|i| reflect_index(i, 4)).collect();
    assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    // Pads longer than the signal keep reflecting (numpy does the same).
    // np.pad([0, 1, 2], 5, 'reflect')[:5] == [1, 0, 1, 2, 1]
    let got: Vec<usize> = (-5..0).map(|i| reflect_index(i, 3)).collect();
    assert_eq!(got, [1, 0, 1, 2, 1]);
    assert_eq!(reflect_index(-7, 1), 0);
}

#[test]
fn output_shape() {
    let mut mel = LogMel::new(80);
    for (n, frames) in [
        (0, 0),
        (1, 0),
        (159, 0),
        (160, 1),
        (170, 1),
        (1000, 6),
        (SAMPLE_RATE as usize, 100),
    ] {
        let out = mel.compute(&noise(n, 0.5, n as u64));
        assert_eq!(out.dim(), (80, frames), "{n} samples");
        assert!(out.iter().all(|v| v.is_finite()));
    }
    assert_eq!(LogMel::new(128).compute(&[0.0; 3200]).dim(), (128, 20));
}

#[test]
fn matches_naive_reference() {
    let mut mel = LogMel::new(80);
    // Odd frame count, length not a multiple of the hop, and very short inputs (pad > length).
    for (n, seed) in [(4321, 1), (1600, 2), (170, 3), (330, 4)] {
        let x = noise(n, 0.3, seed);
        let diff = max_abs_diff(&mel.compute(&x), &reference(&x, 80));
        assert!(diff <= 1e-5, "{n} samples: max abs diff {diff}");
    }
    let x = noise(2000, 0.3, 5);
    let diff = max_abs_diff(&LogMel::new(128).compute(&x), &reference(&x, 128));
    assert!(diff <= 1e-5, "128 bands: max abs diff {diff}");
}

#[test]
fn silence_is_constant() {
    let out = LogMel::new(80).compute(&vec![0.0; WINDOW_SAMPLES]);
    assert_eq!(out.dim(), (80, WINDOW_FRAMES));
    // log10(1e-10) = -10, (-10 + 4) / 4 = -1.5.
    assert!(out.iter().all(|&v| v == -1.5));
}

#[test]
fn tone_peaks_in_its_band() {
    let hz = 1000.0;
    let rate = f64::from(SAMPLE_RATE);
    let x: Vec<f32> = (0..SAMPLE_RATE)
        .map(|i| (0.5 * (2.0 * std::f64::consts::PI * hz * f64::from(i) / rate).sin()) as f32)
        .collect();
    let out = LogMel::new(80).compute(&x);
    let fb = mel_filterbank(80, SAMPLE_RATE, N_FFT);
    let bin = (hz / (f64::from(SAMPLE_RATE) / N_FFT as f64)).round() as usize; // 25
    let argmax = |v: ndarray::ArrayView1<f32>| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    let expected = argmax(fb.column(bin));
    // 1000 Hz is mel 15 on the slaney scale; of the 82 points from 0 to mel(8000) = 45.25 the
    // nearest is point 27, the peak of band 26.
    assert_eq!(expected, 26);
    for t in [10, 50, 90] {
        assert_eq!(argmax(out.column(t)), expected, "frame {t}");
    }
    assert!(out.column(50)[expected] > 0.5);
}

#[test]
fn compute_into_any_layout() {
    let x = noise(5000, 0.2, 7);
    let mut mel = LogMel::new(80);
    let expected = mel.compute(&x);
    let mut buf = Array2::<f32>::zeros((n_frames(x.len()), 80));
    mel.compute_into(&x, buf.view_mut().reversed_axes());
    assert_eq!(buf.t(), expected);
    // A second call reuses the buffers and gives the same result.
    assert_eq!(mel.compute(&x), expected);
}

#[test]
#[should_panic(expected = "output must be")]
fn compute_into_checks_shape() {
    let mut out = Array2::<f32>::zeros((80, 5));
    LogMel::new(80).compute_into(&[0.0; 1000], out.view_mut());
}

#[test]
fn mel_scale() {
    assert_eq!(hz_to_mel_slaney(0.0), 0.0);
    assert!((hz_to_mel_slaney(1000.0) - 15.0).abs() < 1e-12);
    assert!((hz_to_mel_slaney(500.0) - 7.5).abs() < 1e-12);
    for hz in [0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0] {
        assert!((mel_to_hz_slaney(hz_to_mel_slaney(hz)) - hz).abs() < 1e-9);
    }
}

#[test]
fn filterbank_structure() {
    for n_mels in [80, 128] {
        let fb = mel_filterbank(n_mels, SAMPLE_RATE, N_FFT);
        assert_eq!(fb.dim(), (n_mels, N_BINS));
        assert!(fb.iter().all(|&w| w >= 0.0));
        let sparse = SparseFilterbank::from_dense(&fb);
        assert_eq!(sparse.n_mels(), n_mels);
        // Each band is one contiguous run of nonzero weights, and there are few of them.
        assert_eq!(sparse.nnz(), fb.iter().filter(|&&w| w != 0.0).count());
        assert!(sparse.nnz() < 3 * N_BINS);
        // With 128 bands the lowest filters are narrower than a bin; at 80 every band has a weight.
        if n_mels == 80 {
            assert!(fb.outer_iter().all(|r| r.iter().any(|&w| w > 0.0)));
        }
    }
}

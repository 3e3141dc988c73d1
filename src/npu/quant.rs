//! The int8 split shared by every int8 backend: weights quantized once per output channel,
//! activations per row on the fly, an exact int8 x int8 -> int32 product, and a dequantization with
//! the two scales. Only the integer product differs between backends (CPU kernel, XDNA2 NPU);
//! since it is exact, every int8 backend gives bit-identical outputs, and this module's
//! [`gemm_i8_reference`] is the definition they are tested against.
//!
//! Symmetric quantization, as CTranslate2's int8: `scale = 127 / max|row|`, `q = round(v * scale)`
//! (half away from zero), and a row of zeros gets scale 1. Dequantization multiplies by the two
//! inverse scales: `y = acc * ((1 / x_scale) * (1 / w_scale)) + bias` ([`dequantize_value`]).
//!
//! The per-row functions [`quantize_row_into`] and [`dequantize_row`] have AVX-512 and AVX2
//! paths chosen at run time; they give bit-identical results to the scalar definitions
//! ([`row_scale`], [`quantize_value`], [`dequantize_value`]), which the tests check, so every
//! caller gets the same numbers on every CPU.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2};

/// A weight matrix quantized per output channel.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    pub n_out: usize,
    pub n_in: usize,
    /// n_out x n_in, row-major.
    pub data: Vec<i8>,
    /// One per output channel: `w ≈ data / scale`.
    pub scales: Vec<f32>,
    /// `1 / scale` per output channel (what the dequantization multiplies by).
    pub inv_scales: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// The scale that maps a row's largest magnitude to 127.
#[inline]
pub fn row_scale(row: impl IntoIterator<Item = f32>) -> f32 {
    let amax = row.into_iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 && amax.is_finite() {
        127.0 / amax
    } else {
        1.0
    }
}

#[inline]
pub fn quantize_value(v: f32, scale: f32) -> i8 {
    (v * scale).round().clamp(-127.0, 127.0) as i8
}

/// One output of the dequantization: `acc * ((1 / x_scale) * (1 / w_scale)) + bias`: the
/// integer product times the inverse of both scales (two multiplications per output instead of a
/// division; the inverses are computed once per row and once per channel).
#[inline]
pub fn dequantize_value(acc: i32, x_scale: f32, w_scale: f32, bias: Option<f32>) -> f32 {
    let v = acc as f32 * ((1.0 / x_scale) * (1.0 / w_scale));
    match bias {
        Some(b) => v + b,
        None => v,
    }
}

/// Which vector path the row functions take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    Avx512,
    Avx2,
    Scalar,
}

#[inline]
fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if is_x86_feature_detected!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Scalar
}

/// Quantizes one row: writes `out[i] = quantize_value(row[i], s)` and returns
/// `s = row_scale(row)`.
///
/// # Panics
/// If the lengths differ.
pub fn quantize_row_into(row: &[f32], out: &mut [i8]) -> f32 {
    quantize_row_with(simd(), row, out)
}

fn quantize_row_with(path: Simd, row: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(row.len(), out.len(), "quantize_row_into: lengths");
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when the CPU has AVX-512F.
        Simd::Avx512 => unsafe { x86::quantize_row_avx512(row, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when the CPU has AVX2.
        Simd::Avx2 => unsafe { x86::quantize_row_avx2(row, out) },
        _ => {
            let scale = row_scale(row.iter().copied());
            for (o, &v) in out.iter_mut().zip(row) {
                *o = quantize_value(v, scale);
            }
            scale
        }
    }
}

/// Dequantizes one row: `y[o] = dequantize_value(acc[o], x_scale, weight.scales[o], bias[o])`.
///
/// # Panics
/// If `acc` or `y` is not `weight.n_out` long.
pub fn dequantize_row(acc: &[i32], x_scale: f32, weight: &QuantizedWeight, y: &mut [f32]) {
    dequantize_row_with(simd(), acc, x_scale, weight, 0..weight.n_out, y)
}

/// [`dequantize_row`] for the output channels `cols` only: `acc` and `y` hold those channels.
///
/// # Panics
/// If `cols` is not within `0..weight.n_out`, or `acc` or `y` is not `cols.len()` long.
pub fn dequantize_row_cols(
    acc: &[i32],
    x_scale: f32,
    weight: &QuantizedWeight,
    cols: std::ops::Range<usize>,
    y: &mut [f32],
) {
    dequantize_row_with(simd(), acc, x_scale, weight, cols, y)
}

fn dequantize_row_with(
    path: Simd,
    acc: &[i32],
    x_scale: f32,
    weight: &QuantizedWeight,
    cols: std::ops::Range<usize>,
    y: &mut [f32],
) {
    let n = weight.n_out;
    assert!(
        cols.start <= cols.end && cols.end <= n,
        "dequantize_row: columns"
    );
    let len = cols.len();
    assert!(
        acc.len() == len && y.len() == len,
        "dequantize_row: lengths"
    );
    assert_eq!(weight.scales.len(), n, "dequantize_row: scales");
    assert_eq!(weight.inv_scales.len(), n, "dequantize_row: inverse scales");
    if let Some(b) = &weight.bias {
        assert_eq!(b.len(), n, "dequantize_row: bias");
    }
    let scales = &weight.scales[cols.clone()];
    let inv_scales = &weight.inv_scales[cols.clone()];
    let bias = weight.bias.as_deref().map(|b| &b[cols]);
    let inv_x = 1.0 / x_scale;
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when the CPU has AVX-512F; lengths checked above.
        Simd::Avx512 => unsafe { x86::dequantize_row_avx512(acc, inv_x, inv_scales, bias, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: chosen only when the CPU has AVX2; lengths checked above.
        Simd::Avx2 => unsafe { x86::dequantize_row_avx2(acc, inv_x, inv_scales, bias, y) },
        _ => {
            for o in 0..len {
                y[o] = dequantize_value(acc[o], x_scale, scales[o], bias.map(|b| b[o]));
            }
        }
    }
}

/// Quantizes a weight (n_out x n_in, the PyTorch/CTranslate2 layout) once, at load.
pub fn quantize_weight(weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> QuantizedWeight {
    let (n_out, n_in) = weight.dim();
    if let Some(b) = &bias {
        assert_eq!(b.len(), n_out, "bias length");
    }
    let mut data = Vec::with_capacity(n_out * n_in);
    let mut scales = Vec::with_capacity(n_out);
    for row in weight.rows() {
        let scale = row_scale(row.iter().copied());
        scales.push(scale);
        data.extend(row.iter().map(|&v| quantize_value(v, scale)));
    }
    QuantizedWeight {
        n_out,
        n_in,
        data,
        inv_scales: scales.iter().map(|&s| 1.0 / s).collect(),
        scales,
        bias: bias.map(|b| b.to_vec()),
    }
}

/// Quantizes activations per row (per position) into `q` (rows x n_in, row-major) and `scales`.
pub fn quantize_rows(x: ArrayView2<f32>, q: &mut [i8], scales: &mut [f32]) {
    let (rows, n_in) = x.dim();
    assert_eq!(q.len(), rows * n_in, "quantized buffer size");
    assert_eq!(scales.len(), rows, "scale buffer size");
    if n_in == 0 {
        scales.fill(1.0);
        return;
    }
    for ((row, out), scale) in x
        .rows()
        .into_iter()
        .zip(q.chunks_exact_mut(n_in))
        .zip(scales)
    {
        *scale = match row.as_slice() {
            Some(r) => quantize_row_into(r, out),
            None => {
                let s = row_scale(row.iter().copied());
                for (o, &v) in out.iter_mut().zip(row.iter()) {
                    *o = quantize_value(v, s);
                }
                s
            }
        };
    }
}

/// `acc[r][o] = sum_k a[r][k] * w[o][k]`: a is rows x k, w is n_out x k, both row-major.
/// The definition every int8 GEMM (CPU kernels, the NPU) must reproduce exactly.
pub fn gemm_i8_reference(a: &[i8], w: &[i8], rows: usize, k: usize, n_out: usize, acc: &mut [i32]) {
    assert_eq!(a.len(), rows * k);
    assert_eq!(w.len(), n_out * k);
    assert_eq!(acc.len(), rows * n_out);
    for r in 0..rows {
        let ar = &a[r * k..(r + 1) * k];
        for o in 0..n_out {
            let wr = &w[o * k..(o + 1) * k];
            acc[r * n_out + o] = ar.iter().zip(wr).map(|(&x, &y)| x as i32 * y as i32).sum();
        }
    }
}

/// `y = acc * ((1 / x_scale) * (1 / w_scale)) + bias` ([`dequantize_value`]), written into y
/// (rows x n_out).
pub fn dequantize(
    acc: &[i32],
    x_scales: &[f32],
    weight: &QuantizedWeight,
    mut y: ArrayViewMut2<f32>,
) {
    let (rows, n_out) = y.dim();
    assert_eq!(n_out, weight.n_out);
    assert_eq!(acc.len(), rows * n_out);
    assert_eq!(x_scales.len(), rows);
    for (r, mut yrow) in y.rows_mut().into_iter().enumerate() {
        let accr = &acc[r * n_out..(r + 1) * n_out];
        let xs = x_scales[r];
        match yrow.as_slice_mut() {
            Some(ys) => dequantize_row(accr, xs, weight, ys),
            None => {
                for (o, yv) in yrow.iter_mut().enumerate() {
                    let b = weight.bias.as_ref().map(|b| b[o]);
                    *yv = dequantize_value(accr[o], xs, weight.scales[o], b);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// Just below 0.5: `trunc(x + copysign(HALF_DOWN, x))` is `x.round()` (half away from zero)
    /// for every |x| < 2^23, and the values here are clamped to [-127, 127] first.
    const HALF_DOWN: f32 = 0.499_999_97;

    fn finish_scale(amax: f32) -> f32 {
        if amax > 0.0 && amax.is_finite() {
            127.0 / amax
        } else {
            1.0
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn q16(v: __m512, scale: __m512) -> __m512i {
        let x = _mm512_mul_ps(v, scale);
        // NaN -> 0, as `NaN as i8`.
        let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(x, x);
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-127.0)),
            _mm512_set1_ps(127.0),
        );
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let half = _mm512_castsi512_ps(_mm512_or_si512(
            sign,
            _mm512_castps_si512(_mm512_set1_ps(HALF_DOWN)),
        ));
        _mm512_maskz_mov_epi32(ord, _mm512_cvttps_epi32(_mm512_add_ps(x, half)))
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn quantize_row_avx512(row: &[f32], out: &mut [i8]) -> f32 {
        let n = row.len();
        let p = row.as_ptr();
        let mut m = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY (whole function): full loads/stores at i + 16 <= n, the tails masked to the
        // n - i valid elements; out.len() == n (checked by the caller).
        while i + 16 <= n {
            // max(|v|, m) returns m when v is NaN: NaN is skipped, as f32::max does.
            m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(p.add(i))), m);
            i += 16;
        }
        let tail = ((1u32 << (n - i)) - 1) as __mmask16;
        if i < n {
            m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(tail, p.add(i))), m);
        }
        let scale = finish_scale(_mm512_reduce_max_ps(m));
        let sv = _mm512_set1_ps(scale);
        let o = out.as_mut_ptr();
        let mut i = 0;
        while i + 16 <= n {
            let q = q16(_mm512_loadu_ps(p.add(i)), sv);
            _mm_storeu_si128(o.add(i) as *mut __m128i, _mm512_cvtepi32_epi8(q));
            i += 16;
        }
        if i < n {
            let q = q16(_mm512_maskz_loadu_ps(tail, p.add(i)), sv);
            _mm512_mask_cvtepi32_storeu_epi8(o.add(i), tail, q);
        }
        scale
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn q8(v: __m256, scale: __m256) -> __m256i {
        let x = _mm256_mul_ps(v, scale);
        let ord = _mm256_cmp_ps::<_CMP_ORD_Q>(x, x);
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let half = _mm256_or_ps(sign, _mm256_set1_ps(HALF_DOWN));
        let q = _mm256_cvttps_epi32(_mm256_add_ps(x, half));
        _mm256_and_si256(q, _mm256_castps_si256(ord))
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_row_avx2(row: &[f32], out: &mut [i8]) -> f32 {
        let n = row.len();
        let p = row.as_ptr();
        let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        let mut m = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY (whole function): loads/stores at i + 8 <= n; out.len() == n.
        while i + 8 <= n {
            m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(p.add(i)), absmask), m);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let amax = lanes
            .iter()
            .chain(&row[i..])
            .fold(0f32, |a, &v| a.max(v.abs()));
        let scale = finish_scale(amax);
        let sv = _mm256_set1_ps(scale);
        let o = out.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            let q = q8(_mm256_loadu_ps(p.add(i)), sv);
            let w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
            _mm_storel_epi64(o.add(i) as *mut __m128i, _mm_packs_epi16(w, w));
            i += 8;
        }
        for j in i..n {
            out[j] = quantize_value(row[j], scale);
        }
        scale
    }

    /// `y = acc * (inv_x * inv_w) + bias`: the same operations, in the same order, as
    /// [`dequantize_value`] (no fused multiply-add).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dequantize_row_avx512(
        acc: &[i32],
        inv_x: f32,
        inv_w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let n = y.len();
        let ixv = _mm512_set1_ps(inv_x);
        let (ap, wp, yp) = (acc.as_ptr(), inv_w.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        // SAFETY: acc, inv_w, bias and y have n elements (checked by the caller); the tail is
        // masked to the n - i valid ones.
        while i < n {
            let m = ((1u32 << (n - i).min(16)) - 1) as __mmask16;
            let a = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, ap.add(i)));
            let s = _mm512_mul_ps(ixv, _mm512_maskz_loadu_ps(m, wp.add(i)));
            let mut v = _mm512_mul_ps(a, s);
            if let Some(b) = bias {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)));
            }
            _mm512_mask_storeu_ps(yp.add(i), m, v);
            i += 16;
        }
    }

    /// The AVX2 version of [`dequantize_row_avx512`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn dequantize_row_avx2(
        acc: &[i32],
        inv_x: f32,
        inv_w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) {
        let n = y.len();
        let ixv = _mm256_set1_ps(inv_x);
        let mut i = 0;
        // SAFETY: acc, inv_w, bias and y have n elements (checked by the caller); i + 8 <= n.
        while i + 8 <= n {
            let a = _mm256_cvtepi32_ps(_mm256_loadu_si256(acc.as_ptr().add(i) as *const __m256i));
            let s = _mm256_mul_ps(ixv, _mm256_loadu_ps(inv_w.as_ptr().add(i)));
            let mut v = _mm256_mul_ps(a, s);
            if let Some(b) = bias {
                v = _mm256_add_ps(v, _mm256_loadu_ps(b.as_ptr().add(i)));
            }
            _mm256_storeu_ps(y.as_mut_ptr().add(i), v);
            i += 8;
        }
        for o in i..n {
            let v = acc[o] as f32 * (inv_x * inv_w[o]);
            y[o] = match bias {
                Some(b) => v + b[o],
                None => v,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    #[test]
    fn rows_are_scaled_to_127() {
        let w = array![[0.5f32, -1.0, 0.25], [0.0, 0.0, 0.0]];
        let q = quantize_weight(w.view(), None);
        assert_eq!(&q.data[..3], &[64, -127, 32]);
        assert_eq!(&q.data[3..], &[0, 0, 0]);
        assert_eq!(q.scales, vec![127.0, 1.0]);
    }

    fn paths() -> Vec<Simd> {
        let mut v = vec![Simd::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                v.push(Simd::Avx512);
            }
            if is_x86_feature_detected!("avx2") {
                v.push(Simd::Avx2);
            }
        }
        v
    }

    /// Values that probe the rounding: exact halves, their float neighbours, zeros, huge values,
    /// infinities and NaN.
    fn probe_row(n: usize, seed: u32, with_specials: bool) -> Vec<f32> {
        let mut st = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|i| {
                st ^= st << 13;
                st ^= st >> 17;
                st ^= st << 5;
                let r = (st % 100_000) as f32 / 100_000.0 * 2.0 - 1.0;
                match (with_specials, i % 11) {
                    (_, 0) => (((st >> 8) % 255) as f32 - 127.0 + 0.5) / 127.0,
                    (_, 1) => f32::from_bits(
                        ((((st >> 8) % 255) as f32 - 127.0 + 0.5) / 127.0).to_bits() + 1,
                    ),
                    (_, 2) => f32::from_bits(
                        ((((st >> 8) % 255) as f32 - 127.0 + 0.5) / 127.0)
                            .to_bits()
                            .wrapping_sub(1),
                    ),
                    (_, 3) => 0.0,
                    (_, 4) => -0.0,
                    (true, 5) => {
                        [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30][(st % 4) as usize]
                    }
                    _ => r * ((st >> 20) % 7 + 1) as f32,
                }
            })
            .collect()
    }

    #[test]
    fn vector_rows_match_the_scalar_definitions() {
        for path in paths() {
            for (n, specials) in [
                (1usize, false),
                (7, false),
                (16, true),
                (33, false),
                (384, true),
                (512, false),
                (1537, true),
                (2048, false),
            ] {
                for seed in 0..6 {
                    let row = probe_row(n, seed + n as u32, specials);
                    // Pin amax to 1 sometimes, so that the half-way probes are exact halves.
                    let mut row2 = row.clone();
                    if seed % 2 == 0 && !specials {
                        row2[0] = 1.0;
                    }
                    for row in [&row, &row2] {
                        let scale = row_scale(row.iter().copied());
                        let want: Vec<i8> = row.iter().map(|&v| quantize_value(v, scale)).collect();
                        let mut got = vec![99i8; n];
                        let s = quantize_row_with(path, row, &mut got);
                        assert_eq!(s.to_bits(), scale.to_bits(), "{path:?} scale n={n}");
                        assert_eq!(got, want, "{path:?} n={n} seed={seed}");
                    }
                }
                // Dequantization, with and without bias.
                let w = Array2::from_shape_fn((n, 3), |(i, j)| ((i * 7 + j) % 13) as f32 - 6.0);
                let b = ndarray::Array1::from_shape_fn(n, |i| i as f32 * 0.37 - 3.0);
                for bias in [None, Some(b.view())] {
                    let qw = quantize_weight(w.view(), bias);
                    let acc: Vec<i32> = (0..n as i32)
                        .map(|i| (i * 7919) % 200_001 - 100_000)
                        .collect();
                    let mut got = vec![0f32; n];
                    dequantize_row_with(path, &acc, 3.7, &qw, 0..n, &mut got);
                    for o in 0..n {
                        let want = dequantize_value(
                            acc[o],
                            3.7,
                            qw.scales[o],
                            qw.bias.as_ref().map(|b| b[o]),
                        );
                        assert_eq!(
                            got[o].to_bits(),
                            want.to_bits(),
                            "{path:?} dequantize n={n} o={o}"
                        );
                    }
                    // A range of the channels.
                    let (c0, c1) = (n / 3, n - n / 4);
                    let mut part = vec![0f32; c1 - c0];
                    dequantize_row_with(path, &acc[c0..c1], 3.7, &qw, c0..c1, &mut part);
                    assert!(part
                        .iter()
                        .zip(&got[c0..c1])
                        .all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            }
        }
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        let mut q = [0i8; 6];
        let s = quantize_row_into(&[127.0, 0.5, -0.5, 1.5, -2.5, 126.5], &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [127, 1, -1, 2, -3, 127]);
    }

    #[test]
    fn quantized_product_is_close_to_float() {
        let x = Array2::from_shape_fn((5, 64), |(i, j)| ((i * 7 + j * 13) % 17) as f32 / 8.0 - 1.0);
        let w = Array2::from_shape_fn((9, 64), |(i, j)| ((i * 5 + j * 3) % 11) as f32 / 5.0 - 1.0);
        let bias = ndarray::Array1::from_shape_fn(9, |i| i as f32 * 0.1);
        let qw = quantize_weight(w.view(), Some(bias.view()));
        let mut qx = vec![0i8; 5 * 64];
        let mut xs = vec![0f32; 5];
        quantize_rows(x.view(), &mut qx, &mut xs);
        let mut acc = vec![0i32; 5 * 9];
        gemm_i8_reference(&qx, &qw.data, 5, 64, 9, &mut acc);
        let mut y = Array2::zeros((5, 9));
        dequantize(&acc, &xs, &qw, y.view_mut());
        let exact = x.dot(&w.t()) + &bias;
        let err = (&y - &exact).mapv(|v| v * v).sum().sqrt() / exact.mapv(|v| v * v).sum().sqrt();
        assert!(err < 0.02, "relative error {err}");
    }
}

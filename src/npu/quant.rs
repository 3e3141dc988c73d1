//! The int8 split shared by every int8 backend: weights quantized once per output channel,
//! activations per row on the fly, an exact int8 x int8 -> int32 product, and a dequantization with
//! the two scales. Only the integer product differs between backends (CPU kernel, XDNA2 NPU);
//! since it is exact, every int8 backend gives bit-identical outputs, and this module's
//! [`gemm_i8_reference`] is the definition they are tested against.
//!
//! Symmetric quantization, as CTranslate2's int8: `scale = 127 / max|row|`, `q = round(v * scale)`
//! (half away from zero), and a row of zeros gets scale 1.

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
        scales,
        bias: bias.map(|b| b.to_vec()),
    }
}

/// Quantizes activations per row (per position) into `q` (rows x n_in, row-major) and `scales`.
pub fn quantize_rows(x: ArrayView2<f32>, q: &mut [i8], scales: &mut [f32]) {
    let (rows, n_in) = x.dim();
    assert_eq!(q.len(), rows * n_in, "quantized buffer size");
    assert_eq!(scales.len(), rows, "scale buffer size");
    for ((row, out), scale) in x
        .rows()
        .into_iter()
        .zip(q.chunks_exact_mut(n_in))
        .zip(scales)
    {
        *scale = row_scale(row.iter().copied());
        for (o, &v) in out.iter_mut().zip(row.iter()) {
            *o = quantize_value(v, *scale);
        }
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

/// `y = acc / (x_scale * w_scale) + bias`, written into y (rows x n_out).
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
        for (o, yv) in yrow.iter_mut().enumerate() {
            let v = accr[o] as f32 / (xs * weight.scales[o]);
            *yv = match &weight.bias {
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

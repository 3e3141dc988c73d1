//! Row and element-wise operations the encoder and the decoder share: layer norm (fused with
//! the residual add before it) and GELU, on the SIMD kernels of [`Math`].
use ndarray::Array1;
use rayon::prelude::*;

use super::{ModelError, WhisperModel};
use crate::npu::cpu_math::Math;

/// Elements per task of the element-wise passes (GELU): large enough to amortise a rayon task.
const EW_CHUNK: usize = 16 * 1024;

pub(crate) struct LayerNorm {
    gamma: Array1<f32>,
    beta: Array1<f32>,
}

impl LayerNorm {
    pub(crate) fn load(model: &WhisperModel, prefix: &str) -> Result<LayerNorm, ModelError> {
        let w = model.weights();
        let d = model.dims().d_model;
        Ok(LayerNorm {
            gamma: w.f32_1d(&format!("{prefix}/gamma"), d)?,
            beta: w.f32_1d(&format!("{prefix}/beta"), d)?,
        })
    }

    fn g(&self) -> &[f32] {
        self.gamma
            .as_slice()
            .expect("owned 1-d array is contiguous")
    }

    fn b(&self) -> &[f32] {
        self.beta.as_slice().expect("owned 1-d array is contiguous")
    }

    /// `out = LN(x)`, rows in parallel (row-major, contiguous, `d` per row).
    pub(crate) fn apply(&self, math: Math, d: usize, x: &[f32], out: &mut [f32]) {
        let (g, b) = (self.g(), self.b());
        if x.len() <= EW_CHUNK {
            // A decoder step's few rows: not worth a rayon task.
            for (x, o) in x.chunks(d).zip(out.chunks_mut(d)) {
                math.layer_norm(x, g, b, o);
            }
            return;
        }
        x.par_chunks(d)
            .zip(out.par_chunks_mut(d))
            .for_each(|(x, o)| math.layer_norm(x, g, b, o));
    }

    /// The residual add fused with the layer norm that follows it: `x += delta`, then
    /// `out = LN(x)`, one pass, rows in parallel.
    pub(crate) fn add_apply(
        &self,
        math: Math,
        d: usize,
        x: &mut [f32],
        delta: &[f32],
        out: &mut [f32],
    ) {
        let (g, b) = (self.g(), self.b());
        x.par_chunks_mut(d)
            .zip(delta.par_chunks(d))
            .zip(out.par_chunks_mut(d))
            .for_each(|((x, dl), o)| math.add_layer_norm(x, dl, g, b, o));
    }
}

/// `x = gelu(x)`, in parallel chunks when there is enough of it (a decoder step's 4d values are
/// not worth a rayon task).
pub(crate) fn par_gelu(math: Math, x: &mut [f32]) {
    if x.len() <= EW_CHUNK {
        math.gelu_inplace(x);
    } else {
        x.par_chunks_mut(EW_CHUNK)
            .for_each(|c| math.gelu_inplace(c));
    }
}

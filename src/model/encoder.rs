//! Whisper's audio encoder (float32 activations, linear layers on an [`Engine`]).
//!
//! ```text
//! mel (n_mels x T) -> conv1 (k 3, pad 1) -> GELU -> conv2 (k 3, pad 1, stride 2) -> GELU
//!   -> + position_encodings[0..T/2]
//!   -> n_layers x { x += out(attn(LN(x)));  x += fc2(GELU(fc1(LN(x)))) }
//!   -> LN -> (T/2) x d_model
//! ```
//!
//! Both convolutions are a prepared linear layer on im2col rows, so an engine accelerates them like
//! the other products; the im2col rows are overlapping views of a zero-padded, time-major copy of
//! the input (no copy per row). Attention (activation x activation products) runs here on the
//! CPU in float32 for both precisions (the fused AVX-512 or AVX2 kernel of [`cpu_attn`],
//! head-major tasks on the encoder's pool). Layer norms use eps 1e-5; GELU is the erf form with a vectorized erf
//! ([`crate::npu::cpu_math`], within 5e-7 of libm's).
//!
//! Fusion: each residual add is fused with the layer norm that follows it (one pass over the
//! rows), the softmax's normalisation with the attention output, the bias with the products (the
//! engines add it), GELU with conv1 and fc1 where the engine fuses it into the product
//! ([`Linear::forward_gelu`]: the float32 CPU engine does), GELU + position encodings after conv2
//! in one pass. Buffers start on 64-byte boundaries. Every buffer is kept from
//! window to window, and after the first window of a given length each pool thread's buffers are
//! grown to what any task needed, so later windows allocate nothing.
use std::sync::{Arc, Mutex};

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::ops::{par_gelu, LayerNorm};
use super::{Dims, ModelError, WhisperModel};
use crate::npu::cpu::{matmul, Parallel};
use crate::npu::cpu_attn::{self, AttnScratch, HeadView};
use crate::npu::cpu_math::Math;
use crate::npu::{Engine, Linear};

/// Query rows per attention block (the fused kernel's block; the generic path's task): a block's
/// scores (32 x 512 floats, 64 KiB) stay in L2 with the head's K and V.
const ATTN_BLOCK: usize = cpu_attn::BLOCK;
struct Layer {
    ln_attn: LayerNorm,
    /// Fused q, k, v: d -> 3d.
    qkv: Box<dyn Linear>,
    out: Box<dyn Linear>,
    ln_ffn: LayerNorm,
    fc1: Box<dyn Linear>,
    fc2: Box<dyn Linear>,
}

/// Everything read-only during a forward pass.
struct Weights {
    dims: Dims,
    /// conv1 as a linear layer on im2col rows `[k * n_mels + c]`: d x (3 n_mels).
    conv1: Box<dyn Linear>,
    /// conv2 likewise on `[k * d + c]`: d x 3d.
    conv2: Box<dyn Linear>,
    pos: Array2<f32>,
    layers: Vec<Layer>,
    ln_post: LayerNorm,
}

/// Buffers reused from window to window (grown on demand, never shrunk).
#[derive(Default)]
struct Scratch {
    /// The mel, time-major with a zero row before and after ((t + 2) x n_mels).
    mel_t: Vec<f32>,
    /// conv1's output with a zero row before and after ((t + 2) x d).
    h1: Vec<f32>,
    x: Vec<f32>,
    ln: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    ffn: Vec<f32>,
    /// Attention scores, one buffer per pool thread.
    scores: Vec<Mutex<AttnBuf>>,
}

/// One pool thread's attention buffers.
#[derive(Default)]
struct AttnBuf {
    /// Generic path: block x p scores and the block's row sums.
    scores: Vec<f32>,
    /// Fused kernel: one head's packed K and V, and the kernel's buffers.
    k: Vec<f32>,
    v: Vec<f32>,
    fast: AttnScratch,
}

/// Where the usable part of `buf` starts: its first 64-byte boundary, so that rows of 16-float
/// vectors do not straddle cache lines (a large `Vec` starts 16 bytes past one). The allocation
/// never moves once grown, so neither does the offset.
fn start(buf: &[f32]) -> usize {
    buf.as_ptr().align_offset(64).min(16)
}

/// `n` elements of `buf` from a 64-byte boundary, growing it if needed.
fn buf(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n + 16 {
        buf.resize(n + 16, 0.0);
    }
    let o = start(buf);
    &mut buf[o..o + n]
}

/// The `n` elements [`buf`] gave out (already grown).
fn part(buf: &[f32], n: usize) -> &[f32] {
    let o = start(buf);
    &buf[o..o + n]
}

/// The `n` elements [`buf`] gave out, to write.
fn part_mut(buf: &mut [f32], n: usize) -> &mut [f32] {
    let o = start(buf);
    &mut buf[o..o + n]
}

/// `rows x cols` view of [`buf`]'s elements.
fn mat(b: &mut Vec<f32>, rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), buf(b, rows * cols)).expect("buffer sized above")
}

/// The Whisper encoder, ready to run windows of log-mel frames.
pub struct Encoder {
    weights: Weights,
    math: Math,
    engine: Arc<dyn Engine>,
    /// The process's pool for this many threads ([`crate::shared::pool`]).
    pool: Arc<rayon::ThreadPool>,
    scratch: Scratch,
    /// Frames and windows per pass the per-thread buffers were last reserved for.
    reserved_for: (usize, usize),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("dims", &self.weights.dims)
            .field("backend", &self.engine.backend())
            .field("precision", &self.engine.precision())
            .field("threads", &self.pool.current_num_threads())
            .finish()
    }
}

impl Encoder {
    /// Converts the encoder's weights to f32 and prepares every linear layer on `engine`.
    /// `threads` names the process pool it runs on ([`crate::shared::pool`]); 0 means one thread per core
    /// (or `RAYON_NUM_THREADS`).
    pub fn new(
        model: &WhisperModel,
        engine: Arc<dyn Engine>,
        threads: usize,
    ) -> Result<Encoder, ModelError> {
        let dims = *model.dims();
        let w = model.weights();
        let (d, n_mels) = (dims.d_model, dims.n_mels);

        let conv = |name: &str, c_in: usize| -> Result<Box<dyn Linear>, ModelError> {
            let weight = w.f32_3d(&format!("{name}/weight"), d, c_in, 3)?;
            // [d, c, k] -> [d, k, c] -> [d, 3 c]: im2col rows then hold 3 contiguous time steps.
            let weight = weight
                .permuted_axes([0, 2, 1])
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order((d, 3 * c_in))
                .map_err(|e| ModelError::Malformed {
                    path: w.path().to_path_buf(),
                    reason: format!("{name}/weight: {e}"),
                })?;
            let bias = w.f32_1d(&format!("{name}/bias"), d)?;
            Ok(engine.prepare(weight.view(), Some(bias.view())))
        };
        let linear = |name: &str, n_out: usize, n_in: usize| {
            super::prepare_linear(w, engine.as_ref(), name, n_out, n_in)
        };

        let conv1 = conv("encoder/conv1", n_mels)?;
        let conv2 = conv("encoder/conv2", d)?;
        let pos = w.f32_2d("encoder/position_encodings/encodings", dims.n_audio_ctx, d)?;
        let mut layers = Vec::with_capacity(dims.n_encoder_layers);
        for l in 0..dims.n_encoder_layers {
            let p = format!("encoder/layer_{l}");
            layers.push(Layer {
                ln_attn: LayerNorm::load(model, &format!("{p}/self_attention/layer_norm"))?,
                qkv: linear(&format!("{p}/self_attention/linear_0"), 3 * d, d)?,
                out: linear(&format!("{p}/self_attention/linear_1"), d, d)?,
                ln_ffn: LayerNorm::load(model, &format!("{p}/ffn/layer_norm"))?,
                fc1: linear(&format!("{p}/ffn/linear_0"), 4 * d, d)?,
                fc2: linear(&format!("{p}/ffn/linear_1"), d, 4 * d)?,
            });
        }
        let ln_post = LayerNorm::load(model, "encoder/layer_norm")?;

        let pool = crate::shared::pool::shared_pool(threads)?;
        let scratch = Scratch {
            scores: (0..pool.current_num_threads())
                .map(|_| Mutex::new(AttnBuf::default()))
                .collect(),
            ..Scratch::default()
        };
        Ok(Encoder {
            math: Math::new(),
            weights: Weights {
                dims,
                conv1,
                conv2,
                pos,
                layers,
                ln_post,
            },
            engine,
            pool,
            scratch,
            reserved_for: (0, 0),
        })
    }

    pub fn dims(&self) -> &Dims {
        &self.weights.dims
    }

    pub fn d_model(&self) -> usize {
        self.weights.dims.d_model
    }

    pub fn n_mels(&self) -> usize {
        self.weights.dims.n_mels
    }

    /// Output positions for `frames` mel frames: `ceil(frames / 2)` (512 for 1024 frames).
    pub fn positions_for(frames: usize) -> usize {
        frames.div_ceil(2)
    }

    /// Most mel frames one call accepts: `2 n_audio_ctx` (3000, 30 s).
    pub fn max_frames(&self) -> usize {
        2 * self.weights.dims.n_audio_ctx
    }

    /// Threads of the encoder's pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Encodes `mel` (n_mels x frames, 1 <= frames <= [`max_frames`](Self::max_frames); Whisper
    /// uses an even count) into `positions_for(frames) x d_model`.
    ///
    /// # Panics
    /// If `mel` has the wrong shape; [`try_forward`](Self::try_forward) returns an error instead.
    pub fn forward(&mut self, mel: ArrayView2<f32>) -> Array2<f32> {
        match self.try_forward(mel) {
            Ok(out) => out,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`forward`](Self::forward) that reports a bad input shape as an error.
    pub fn try_forward(&mut self, mel: ArrayView2<f32>) -> Result<Array2<f32>, ModelError> {
        self.check_input(mel)?;
        let mut out = Array2::zeros((Self::positions_for(mel.ncols()), self.d_model()));
        self.forward_into(mel, out.view_mut())?;
        Ok(out)
    }

    /// Like [`try_forward`](Self::try_forward) but writes into `out`
    /// (`positions_for(frames) x d_model`, any strides). The scratch buffers are kept between
    /// calls, so a warmed-up call allocates next to nothing.
    pub fn forward_into(
        &mut self,
        mel: ArrayView2<f32>,
        out: ArrayViewMut2<f32>,
    ) -> Result<(), ModelError> {
        self.forward_batch_into(&[mel], &mut [out])
    }

    /// Encodes several windows of the same length in one pass (one per stream, say): the rows of
    /// every window go through each linear layer together, so each weight panel is read once for
    /// all of them; convolutions and attention stay per window. A window's output is the same as
    /// encoded alone: every output element of a product sums over its row's inputs in the same
    /// order whatever the other rows are (the kernels block the shared dimension alike for any
    /// number of rows, and int8 quantizes each row with its own scale), and every other step is
    /// row- or window-wise. `tests/encoder_batch.rs` checks it bit for bit.
    pub fn forward_batch(
        &mut self,
        mels: &[ArrayView2<f32>],
    ) -> Result<Vec<Array2<f32>>, ModelError> {
        let mut outs: Vec<Array2<f32>> = mels
            .iter()
            .map(|m| Array2::zeros((Self::positions_for(m.ncols()), self.d_model())))
            .collect();
        let mut views: Vec<ArrayViewMut2<f32>> = outs.iter_mut().map(|o| o.view_mut()).collect();
        self.forward_batch_into(mels, &mut views)?;
        Ok(outs)
    }

    /// [`forward_batch`](Self::forward_batch) into `outs` (one per window, any strides).
    pub fn forward_batch_into(
        &mut self,
        mels: &[ArrayView2<f32>],
        outs: &mut [ArrayViewMut2<f32>],
    ) -> Result<(), ModelError> {
        let Some(first) = mels.first() else {
            return Ok(());
        };
        let frames = first.ncols();
        for mel in mels {
            self.check_input(*mel)?;
            if mel.ncols() != frames {
                return Err(ModelError::InvalidInput(format!(
                    "windows of one batch have {frames} and {} frames",
                    mel.ncols()
                )));
            }
        }
        let expected = (Self::positions_for(frames), self.d_model());
        if outs.len() != mels.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} outputs for {} windows",
                outs.len(),
                mels.len()
            )));
        }
        if let Some(out) = outs.iter().find(|o| o.dim() != expected) {
            return Err(ModelError::InvalidInput(format!(
                "output is {:?}, expected {expected:?}",
                out.dim()
            )));
        }
        let (pool, weights, scratch) = (&self.pool, &self.weights, &mut self.scratch);
        let math = self.math;
        pool.install(|| weights.forward(math, scratch, mels, outs));
        let shape = (frames, mels.len());
        if shape != self.reserved_for {
            self.reserve_thread_buffers(Self::positions_for(frames));
            self.reserved_for = shape;
        }
        Ok(())
    }

    /// After a pass with a new input length: grows every pool thread's buffers (the CPU engines'
    /// per-thread scratch, the attention buffers) to what any task of that pass needed, so that
    /// the next windows allocate nothing, whichever thread runs which task. The shared buffers
    /// ([`Scratch`]) already have their size.
    fn reserve_thread_buffers(&mut self, p: usize) {
        self.pool.broadcast(|_| {
            crate::npu::cpu::reserve_thread_scratch();
            crate::npu::cpu_int8::reserve_thread_scratch();
        });
        let dh = self.weights.dims.d_head();
        for slot in &self.scratch.scores {
            let mut b = slot.lock().unwrap_or_else(|e| e.into_inner());
            let AttnBuf { scores, k, v, fast } = &mut *b;
            buf(scores, ATTN_BLOCK * p + ATTN_BLOCK);
            buf(k, p * dh);
            buf(v, p * dh);
            fast.reserve(p);
        }
    }

    fn check_input(&self, mel: ArrayView2<f32>) -> Result<(), ModelError> {
        let (m, t) = mel.dim();
        if m != self.n_mels() {
            return Err(ModelError::InvalidInput(format!(
                "mel has {m} bands, the model takes {}",
                self.n_mels()
            )));
        }
        if t == 0 || t > self.max_frames() {
            return Err(ModelError::InvalidInput(format!(
                "mel has {t} frames, the model takes 1 to {}",
                self.max_frames()
            )));
        }
        Ok(())
    }
}

impl Weights {
    /// Encodes the windows `mels` (same length) into `outs`: one pass, their rows stacked.
    fn forward(
        &self,
        math: Math,
        s: &mut Scratch,
        mels: &[ArrayView2<f32>],
        outs: &mut [ArrayViewMut2<f32>],
    ) {
        let (_, t) = mels[0].dim();
        let d = self.dims.d_model;
        let p = Encoder::positions_for(t);
        let rows = mels.len() * p;

        // The convolutions, window by window, into the window's rows of x.
        let mut x = mat(&mut s.x, rows, d);
        for (mel, x) in mels.iter().zip(x.axis_chunks_iter_mut(Axis(0), p)) {
            self.convolutions(math, &mut s.mel_t, &mut s.h1, *mel, x);
        }

        // Every layer: x += out(attn(LN(x))); x += fc2(GELU(fc1(LN(x)))). Each residual add
        // is fused with the layer norm that follows it (the next sub-layer's, or the final one).
        let x = part_mut(&mut s.x, rows * d);
        let ln = buf(&mut s.ln, rows * d);
        match self.layers.first() {
            Some(first) => first.ln_attn.apply(math, d, x, ln),
            None => ln.copy_from_slice(x),
        }
        // Whether s.proj holds the last layer's residual, still to be added.
        let mut pending = false;
        for (l, layer) in self.layers.iter().enumerate() {
            let ln = ArrayView2::from_shape((rows, d), part(&s.ln, rows * d)).expect("sized");
            let mut qkv = mat(&mut s.qkv, rows, 3 * d);
            layer.qkv.forward(ln, qkv.view_mut());
            let mut attn = mat(&mut s.attn, rows, d);
            for (qkv, attn) in qkv
                .axis_chunks_iter(Axis(0), p)
                .zip(attn.axis_chunks_iter_mut(Axis(0), p))
            {
                self.attention(math, qkv, attn, &s.scores);
            }
            let mut proj = mat(&mut s.proj, rows, d);
            layer.out.forward(attn.view(), proj.view_mut());
            layer.ln_ffn.add_apply(
                math,
                d,
                x,
                part(&s.proj, rows * d),
                buf(&mut s.ln, rows * d),
            );

            let ln = ArrayView2::from_shape((rows, d), part(&s.ln, rows * d)).expect("sized");
            let mut ffn = mat(&mut s.ffn, rows, 4 * d);
            // GELU in the product's epilogue where the engine fuses it, else a second pass.
            if !layer.fc1.forward_gelu(ln, ffn.view_mut()) {
                layer.fc1.forward(ln, ffn.view_mut());
                par_gelu(math, buf(&mut s.ffn, rows * 4 * d));
            }
            let ffn =
                ArrayView2::from_shape((rows, 4 * d), part(&s.ffn, rows * 4 * d)).expect("sized");
            let mut proj = mat(&mut s.proj, rows, d);
            layer.fc2.forward(ffn, proj.view_mut());
            match self.layers.get(l + 1) {
                Some(next) => next.ln_attn.add_apply(
                    math,
                    d,
                    x,
                    part(&s.proj, rows * d),
                    buf(&mut s.ln, rows * d),
                ),
                None => pending = true,
            }
        }

        // The final layer norm, fused with the last residual add, straight into each window's
        // output when it is contiguous.
        let ln_post = &self.ln_post;
        let delta = part(&s.proj, rows * d);
        for ((out, x), delta) in outs
            .iter_mut()
            .zip(x.chunks_exact_mut(p * d))
            .zip(delta.chunks_exact(p * d))
        {
            let mut finish = |o: &mut [f32]| match pending {
                true => ln_post.add_apply(math, d, x, delta, o),
                false => ln_post.apply(math, d, x, o),
            };
            match out.as_slice_mut() {
                Some(o) => finish(o),
                None => {
                    let tmp = buf(&mut s.attn, p * d);
                    finish(tmp);
                    out.assign(&ArrayView2::from_shape((p, d), &*tmp).expect("sized"));
                }
            }
        }
    }

    /// One window's front of the encoder: `GELU(conv2(GELU(conv1(mel)))) + positions` into `x`
    /// (p x d, contiguous), with `mel_t` and `h1` as scratch.
    ///
    /// Both convolutions (kernel 3, padding 1) read their im2col rows as overlapping views of
    /// a time-major buffer with a zero row before and after: row o of conv1's input is
    /// [mel[:, o-1], mel[:, o], mel[:, o+1]], 3 consecutive rows of the transposed mel; row o
    /// of conv2's (stride 2) is rows 2o-1, 2o, 2o+1 of conv1's output. No im2col copy.
    fn convolutions(
        &self,
        math: Math,
        mel_t: &mut Vec<f32>,
        h1: &mut Vec<f32>,
        mel: ArrayView2<f32>,
        mut x: ArrayViewMut2<f32>,
    ) {
        let (n_mels, t) = mel.dim();
        let d = self.dims.d_model;
        let p = Encoder::positions_for(t);
        let mel_t = buf(mel_t, (t + 2) * n_mels);
        mel_t[..n_mels].fill(0.0);
        mel_t[(t + 1) * n_mels..].fill(0.0);
        mel_t[n_mels..(t + 1) * n_mels]
            .par_chunks_mut(64 * n_mels)
            .enumerate()
            .for_each(|(c, rows)| {
                for (i, row) in rows.chunks_exact_mut(n_mels).enumerate() {
                    for (dst, &v) in row.iter_mut().zip(mel.column(c * 64 + i)) {
                        *dst = v;
                    }
                }
            });
        let cols1 = ArrayView2::from_shape((t, 3 * n_mels).strides((n_mels, 1)), &*mel_t)
            .expect("(t + 2) x n_mels holds the overlapping rows");
        let h1_pad = buf(h1, (t + 2) * d);
        h1_pad[..d].fill(0.0);
        h1_pad[(t + 1) * d..].fill(0.0);
        let mut h1 = ArrayViewMut2::from_shape((t, d), &mut h1_pad[d..(t + 1) * d]).expect("sized");
        if !self.conv1.forward_gelu(cols1, h1.view_mut()) {
            self.conv1.forward(cols1, h1.view_mut());
            par_gelu(math, h1.into_slice().expect("scratch is contiguous"));
        }
        let cols2 = ArrayView2::from_shape((p, 3 * d).strides((2 * d, 1)), &*h1_pad)
            .expect("(t + 2) x d holds the overlapping rows");
        self.conv2.forward(cols2, x.view_mut());
        let pos = self.pos.slice(s![..p, ..]);
        let pos = pos.as_slice().expect("position encodings are contiguous");
        let x = x.as_slice_mut().expect("x rows of a window are contiguous");
        x.par_chunks_mut(d)
            .zip(pos.par_chunks(d))
            .for_each(|(x, pe)| math.gelu_add(x, pe));
    }

    /// Full (non-causal) multi-head attention: `qkv` is p x 3d (q | k | v), `out` p x d, both
    /// row-major and contiguous.
    ///
    /// With AVX-512 or AVX2 and heads of 64 (every Whisper model), the fused kernel of [`cpu_attn`], in
    /// head-major tasks (below). Otherwise one rayon task per block of [`ATTN_BLOCK`] query rows,
    /// all heads: scores `S = Q K^T` (block x p) through `matmul`,
    /// `E = exp((S - max) / sqrt(dh))` row by row, and `out = (E V) / rowsum(E)`: the
    /// normalisation is applied to the block x dh result instead of the block x p probabilities.
    fn attention(
        &self,
        math: Math,
        qkv: ArrayView2<f32>,
        mut out: ArrayViewMut2<f32>,
        scores: &[Mutex<AttnBuf>],
    ) {
        let d = self.dims.d_model;
        let n_heads = self.dims.n_heads;
        let dh = d / n_heads;
        let p = qkv.nrows();
        let scale = 1.0 / (dh as f32).sqrt();
        let qkv_flat = qkv.as_slice().expect("qkv scratch is contiguous");
        let slot = || rayon::current_thread_index().unwrap_or(0) % scores.len().max(1);

        if dh == cpu_attn::HEAD && cpu_attn::available() {
            // Head-major tasks: a task takes one head's rows r0.. (all of them when there are
            // enough heads to keep every thread busy), packs that head's K and V once into its
            // thread's buffers and runs the kernel block by block, so K and V (2 x p x 64 floats,
            // 256 KiB at p = 512) stay in L2 across the blocks.
            let chunks = (2 * rayon::current_num_threads()).div_ceil(n_heads).max(1);
            let rows_per = p.div_ceil(chunks).next_multiple_of(ATTN_BLOCK);
            out.axis_chunks_iter_mut(Axis(1), dh)
                .into_par_iter()
                .enumerate()
                .for_each(|(h, mut head_out)| {
                    head_out
                        .axis_chunks_iter_mut(Axis(0), rows_per)
                        .into_par_iter()
                        .enumerate()
                        .for_each(|(c, mut part)| {
                            // Each pool thread has its own buffers; nothing inside runs rayon, so
                            // the lock is never contended nor re-entered.
                            let mut guard =
                                scores[slot()].lock().unwrap_or_else(|e| e.into_inner());
                            let AttnBuf { k, v, fast, .. } = &mut *guard;
                            let (k, v) = (buf(k, p * dh), buf(v, p * dh));
                            cpu_attn::pack_head(
                                qkv_flat,
                                3 * d,
                                d + h * dh,
                                2 * d + h * dh,
                                p,
                                k,
                                v,
                            );
                            let view = HeadView {
                                q: &qkv_flat[h * dh..],
                                q_ld: 3 * d,
                                k,
                                v,
                                p,
                            };
                            let r0 = c * rows_per;
                            for (b, blk) in
                                part.axis_chunks_iter_mut(Axis(0), ATTN_BLOCK).enumerate()
                            {
                                cpu_attn::attention_block(view, r0 + b * ATTN_BLOCK, blk, fast);
                            }
                        });
                });
            return;
        }

        out.axis_chunks_iter_mut(Axis(0), ATTN_BLOCK)
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut block_out)| {
                let r0 = b * ATTN_BLOCK;
                let rows = block_out.nrows();
                // Each pool thread has its own buffers: the lock is never contended.
                let mut guard = scores[slot()].lock().unwrap_or_else(|e| e.into_inner());
                let bufs = &mut *guard;
                let (sc_buf, sums) = buf(&mut bufs.scores, rows * p + rows).split_at_mut(rows * p);
                for h in 0..n_heads {
                    let q = qkv.slice(s![r0..r0 + rows, h * dh..(h + 1) * dh]);
                    let k = qkv.slice(s![.., d + h * dh..d + (h + 1) * dh]);
                    let v = qkv.slice(s![.., 2 * d + h * dh..2 * d + (h + 1) * dh]);
                    let mut sc = ArrayViewMut2::from_shape((rows, p), &mut *sc_buf).expect("sized");
                    matmul(q, k.t(), sc.view_mut(), false, Parallel::None);
                    for (row, sum) in sc_buf.chunks_exact_mut(p).zip(sums.iter_mut()) {
                        let max = math.max(row);
                        *sum = math.exp_shifted_sum(row, max, scale);
                    }
                    let sc = ArrayView2::from_shape((rows, p), &*sc_buf).expect("sized");
                    let mut o = block_out.slice_mut(s![.., h * dh..(h + 1) * dh]);
                    matmul(sc, v, o.view_mut(), false, Parallel::None);
                    for (mut row, &sum) in o.rows_mut().into_iter().zip(sums.iter()) {
                        let inv = 1.0 / sum;
                        row.mapv_inplace(|v| v * inv);
                    }
                }
            });
    }
}

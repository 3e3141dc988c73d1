//! Whisper's text decoder with a key/value cache.
//!
//! ```text
//! tokens -> embeddings[token] + position_encodings[position]
//!   -> n_layers x { x += out(self_attn(LN(x)))       causal, keys/values cached per token
//!                   x += out(cross_attn(LN(x), enc))  keys/values of the window computed once
//!                   x += fc2(GELU(fc1(LN(x)))) }
//!   -> LN -> logits = x embeddings^T                  (projection tied to the embeddings)
//! ```
//!
//! A [`KvCache`] holds a batch of hypotheses (beam search, best-of sampling) that share one window:
//! the prompt is run once for a batch of one, [`KvCache::repeat`] copies it to the batch, and
//! [`KvCache::reorder`] follows the beams as they are chosen. Linear layers are prepared once on an
//! [`Engine`]; attention runs here on the CPU, one rayon task per head.
//!
//! Memory: a transcriber keeps one [`KvCache`] (with the activations of a call) and one
//! [`CrossKv`] from window to window, the cache reserved at start for the largest batch it will
//! decode ([`KvCache::reserve_batch`]). Allocating them per window (tens of MiB at a best-of-5
//! fallback) let glibc keep that memory in its arenas after the first fallback: a long
//! transcription's resident memory stepped up minutes into the run instead of at start.
use std::sync::{Arc, Mutex};

use ndarray::{
    s, Array1, Array2, ArrayBase, ArrayView1, ArrayView2, ArrayViewMut2, Axis, DataMut, Ix2,
};
use rayon::prelude::*;

use super::ops::{par_gelu, LayerNorm};
use super::{Dims, ModelError, WhisperModel};
use crate::npu::cpu::{matmul, Parallel};
use crate::npu::cpu_math::Math;
use crate::npu::{Engine, Linear};

pub mod batch;
mod embedding;

use batch::StepBatcher;
use embedding::TokenEmbeddings;

struct Layer {
    ln_self: LayerNorm,
    /// Fused q, k, v: d -> 3d.
    qkv: Box<dyn Linear>,
    out_self: Box<dyn Linear>,
    ln_cross: LayerNorm,
    q_cross: Box<dyn Linear>,
    /// Fused k, v of the encoder output: d -> 2d.
    kv_cross: Box<dyn Linear>,
    out_cross: Box<dyn Linear>,
    ln_ffn: LayerNorm,
    fc1: Box<dyn Linear>,
    fc2: Box<dyn Linear>,
}

/// Cross-attention keys and values of one window's encoder output, one `positions x 2d` matrix
/// (keys | values) per layer.
#[derive(Default)]
pub struct CrossKv {
    kv: Vec<Array2<f32>>,
}

impl CrossKv {
    /// Encoder positions attended to.
    pub fn positions(&self) -> usize {
        self.kv.first().map_or(0, |a| a.nrows())
    }
}

fn slice(a: &Array2<f32>) -> &[f32] {
    a.as_slice().expect("owned row-major array")
}

fn slice_mut<S: DataMut<Elem = f32>>(a: &mut ArrayBase<S, Ix2>) -> &mut [f32] {
    a.as_slice_mut().expect("owned row-major array")
}

/// Cross-attention scores of chosen heads, filled in as the layers run.
struct CrossCapture<'a> {
    heads: &'a [(usize, usize)],
    scores: Vec<Array2<f32>>,
}

impl CrossCapture<'_> {
    /// The deepest layer with a head of interest.
    fn last_layer(&self) -> Option<usize> {
        self.heads.iter().map(|&(l, _)| l).max()
    }

    /// Records layer `layer`'s heads of interest from its queries and the window's keys.
    fn record(&mut self, layer: usize, q: ArrayView2<f32>, k: ArrayView2<f32>, dh: usize) {
        let scale = 1.0 / (dh as f32).sqrt();
        for (&(l, h), out) in self.heads.iter().zip(self.scores.iter_mut()) {
            if l != layer || (h + 1) * dh > q.ncols() {
                continue;
            }
            let cols = h * dh..(h + 1) * dh;
            let mut sc = Array2::<f32>::zeros((q.nrows(), k.nrows()));
            matmul(
                q.slice(s![.., cols.clone()]),
                k.slice(s![.., cols]).t(),
                sc.view_mut(),
                false,
                Parallel::None,
            );
            sc *= scale;
            *out = sc;
        }
    }
}

/// Self-attention keys and values of a batch of token sequences of equal length.
#[derive(Clone)]
pub struct KvCache {
    batch: usize,
    len: usize,
    capacity: usize,
    d: usize,
    /// Per layer, `batch x capacity x d`.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Where [`Self::reorder`] builds a layer's new batch before swapping it in, so that following
    /// the hypotheses allocates nothing.
    spare: Vec<f32>,
    /// The activations of a decoder call on this cache.
    scratch: Scratch,
}

/// The activations of one decoder call (`rows x` d, 3d, d, d and 4d), kept with the cache, so
/// that a call allocates no more than its input and output once the largest has run.
#[derive(Clone, Default)]
struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    ffn: Vec<f32>,
}

impl Scratch {
    /// `h`, `qkv`, `att`, `proj` and `ffn` for `rows` rows of a `d`-wide model (their values are
    /// stale: every one is written before it is read).
    fn views(&mut self, rows: usize, d: usize) -> [ArrayViewMut2<'_, f32>; 5] {
        fn view(buf: &mut Vec<f32>, rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
            buf.resize(rows * cols, 0.0);
            ArrayViewMut2::from_shape((rows, cols), buf.as_mut_slice()).expect("rows x cols")
        }
        let Scratch {
            h,
            qkv,
            att,
            proj,
            ffn,
        } = self;
        [
            view(h, rows, d),
            view(qkv, rows, 3 * d),
            view(att, rows, d),
            view(proj, rows, d),
            view(ffn, rows, 4 * d),
        ]
    }
}

impl KvCache {
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens seen so far (the same for every sequence of the batch).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most tokens a sequence can have (at most the model's text context, 448).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every token, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the tokens after the first `len` (a draft the decoder did not confirm).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// An empty batch of one again, for the next window, keeping the buffers (and their memory)
    /// of the largest batch seen.
    pub fn reset(&mut self) {
        self.len = 0;
        self.resize_batch(1);
    }

    /// Takes the memory of a batch of `n` now (written, so resident), and the activations of a
    /// call on the whole capacity, so that decoding with up to `n` hypotheses and prompts of any
    /// length later allocates nothing here: a long run's memory is then reached at start instead
    /// of at its first temperature fallback, beam search or longest prompt, and stays there.
    pub fn reserve_batch(&mut self, n: usize) {
        self.reserve(n, self.capacity.max(n));
    }

    /// [`Self::reserve_batch`] for calls of at most `rows` rows (batch times tokens): a cache
    /// whose largest call is known holds no more activations than it needs. A batch of one needs
    /// no spare buffer (it is never reordered).
    pub fn reserve(&mut self, n: usize, rows: usize) {
        let batch = self.batch;
        self.resize_batch(n.max(batch));
        if n > 1 {
            self.spare.resize(self.k.first().map_or(0, Vec::len), 0.0);
        }
        self.resize_batch(batch);
        self.scratch.views(rows, self.d);
    }

    fn resize_batch(&mut self, batch: usize) {
        let n = batch * self.capacity * self.d;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.resize(n, 0.0);
        }
        self.batch = batch;
    }

    /// A batch of one becomes `n` copies of it.
    ///
    /// # Panics
    /// If the batch is not of one.
    pub fn repeat(&mut self, n: usize) {
        assert_eq!(self.batch, 1, "KvCache::repeat needs a batch of one");
        self.resize_batch(n.max(1));
        let (len, stride) = (self.len * self.d, self.capacity * self.d);
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            let (first, rest) = buf.split_at_mut(stride);
            for r in rest.chunks_mut(stride) {
                r[..len].copy_from_slice(&first[..len]);
            }
        }
    }

    /// Sequence `i` of the new batch is sequence `sources[i]` of the old one (the batch size
    /// becomes `sources.len()`).
    ///
    /// # Panics
    /// If a source index is out of range.
    pub fn reorder(&mut self, sources: &[usize]) {
        assert!(
            sources.iter().all(|&s| s < self.batch),
            "source out of range"
        );
        if sources.iter().enumerate().all(|(i, &s)| i == s) && sources.len() == self.batch {
            return;
        }
        let (len, stride) = (self.len * self.d, self.capacity * self.d);
        let new_batch = sources.len();
        let spare = &mut self.spare;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            spare.resize(new_batch.max(1) * stride, 0.0);
            for (i, &src) in sources.iter().enumerate() {
                spare[i * stride..i * stride + len]
                    .copy_from_slice(&buf[src * stride..src * stride + len]);
            }
            std::mem::swap(buf, spare);
        }
        self.batch = new_batch;
    }
}

/// One cache's share of a decoder call.
struct Part<'a> {
    cache: &'a mut KvCache,
    cross: &'a CrossKv,
    tokens: &'a [u32],
}

/// A stream's token-by-token step, queued for a batch: the borrows of its [`Decoder::step`] call,
/// as pointers (the batch may run on another stream's thread while this one waits).
pub struct StepJob {
    cache: *mut KvCache,
    cross: *const CrossKv,
    tokens: *const [u32],
    logits: *mut Array2<f32>,
}

// SAFETY: a job is only dereferenced by the batch that runs it, while the stream that queued it
// waits for that batch to finish (see `Decoder::run_steps`).
unsafe impl Send for StepJob {}

/// The Whisper decoder, weights prepared on an engine.
pub struct Decoder {
    dims: Dims,
    embeddings: TokenEmbeddings,
    pos: Array2<f32>,
    layers: Vec<Layer>,
    ln: LayerNorm,
    /// Logits: the embedding matrix as an n_vocab x d linear layer.
    proj: Box<dyn Linear>,
    /// The process's pool for this many threads ([`crate::shared::pool`]).
    pool: Arc<rayon::ThreadPool>,
    math: Math,
    /// Where the token-by-token steps of the streams sharing this decoder meet ([`batch`]).
    steps: StepBatcher<StepJob>,
    /// The activations of a batch of steps (one batch runs at a time).
    step_scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("dims", &self.dims)
            .field("threads", &self.pool.current_num_threads())
            .finish()
    }
}

impl Decoder {
    /// Converts the decoder's weights to f32 and prepares its linear layers on `engine`;
    /// `threads` names the process pool it runs on ([`crate::shared::pool`]; 0: one per core).
    pub fn new(
        model: &WhisperModel,
        engine: Arc<dyn Engine>,
        threads: usize,
    ) -> Result<Decoder, ModelError> {
        let dims = *model.dims();
        let w = model.weights();
        let d = dims.d_model;
        let linear = |name: &str, n_out: usize, n_in: usize| {
            // Run token by token: the engine may keep the weight compact (Engine::prepare_streamed).
            let (weight, bias) = super::linear_weights(w, name, n_out, n_in)?;
            Ok::<_, ModelError>(
                engine.prepare_streamed(weight.view(), bias.as_ref().map(|b| b.view())),
            )
        };
        if !d.is_multiple_of(dims.n_decoder_heads) {
            return Err(ModelError::Malformed {
                path: w.path().to_path_buf(),
                reason: format!(
                    "d_model {d} is not a multiple of decoder/num_heads {}",
                    dims.n_decoder_heads
                ),
            });
        }
        let embeddings = w.f32_2d("decoder/embeddings/weight", dims.n_vocab, d)?;
        let pos = w.f32_2d("decoder/position_encodings/encodings", dims.n_text_ctx, d)?;
        let mut layers = Vec::with_capacity(dims.n_decoder_layers);
        for l in 0..dims.n_decoder_layers {
            let p = format!("decoder/layer_{l}");
            layers.push(Layer {
                ln_self: LayerNorm::load(model, &format!("{p}/self_attention/layer_norm"))?,
                qkv: linear(&format!("{p}/self_attention/linear_0"), 3 * d, d)?,
                out_self: linear(&format!("{p}/self_attention/linear_1"), d, d)?,
                ln_cross: LayerNorm::load(model, &format!("{p}/attention/layer_norm"))?,
                q_cross: linear(&format!("{p}/attention/linear_0"), d, d)?,
                kv_cross: linear(&format!("{p}/attention/linear_1"), 2 * d, d)?,
                out_cross: linear(&format!("{p}/attention/linear_2"), d, d)?,
                ln_ffn: LayerNorm::load(model, &format!("{p}/ffn/layer_norm"))?,
                fc1: linear(&format!("{p}/ffn/linear_0"), 4 * d, d)?,
                fc2: linear(&format!("{p}/ffn/linear_1"), d, 4 * d)?,
            });
        }
        let ln = LayerNorm::load(model, "decoder/layer_norm")?;
        let proj = engine.prepare_streamed(embeddings.view(), None);
        let embeddings = TokenEmbeddings::new(embeddings);
        let pool = crate::shared::pool::shared_pool(threads)?;
        Ok(Decoder {
            dims,
            embeddings,
            pos,
            layers,
            ln,
            proj,
            pool,
            math: Math::new(),
            steps: StepBatcher::default(),
            step_scratch: Mutex::new(Scratch::default()),
        })
    }

    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    pub fn n_vocab(&self) -> usize {
        self.dims.n_vocab
    }

    /// Most tokens in a sequence (448).
    pub fn n_text_ctx(&self) -> usize {
        self.dims.n_text_ctx
    }

    /// An empty cache for a batch of one.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_for(self.dims.n_text_ctx)
    }

    /// An empty cache for a batch of one and sequences of at most `tokens` tokens (at most the
    /// text context): a run of known length needs no more.
    pub fn new_cache_for(&self, tokens: usize) -> KvCache {
        let n = self.dims.n_decoder_layers;
        let capacity = tokens.min(self.dims.n_text_ctx);
        let size = capacity * self.dims.d_model;
        KvCache {
            batch: 1,
            len: 0,
            capacity,
            d: self.dims.d_model,
            k: vec![vec![0.0; size]; n],
            v: vec![vec![0.0; size]; n],
            spare: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Cross-attention keys and values of an encoder output (`positions x d_model`).
    ///
    /// # Panics
    /// If the encoder output is not d_model wide.
    pub fn cross_kv(&self, encoded: ArrayView2<f32>) -> CrossKv {
        let mut out = CrossKv::default();
        self.cross_kv_into(encoded, &mut out);
        out
    }

    /// [`Self::cross_kv`] into `out`, in its memory: a transcriber keeps one from window to
    /// window, so that a window allocates nothing here.
    ///
    /// # Panics
    /// If the encoder output is not d_model wide.
    pub fn cross_kv_into(&self, encoded: ArrayView2<f32>, out: &mut CrossKv) {
        assert_eq!(encoded.ncols(), self.dims.d_model, "encoder output width");
        let shape = (encoded.nrows(), 2 * self.dims.d_model);
        out.kv
            .resize_with(self.layers.len(), || Array2::zeros((0, 0)));
        self.pool.install(|| {
            for (l, kv) in self.layers.iter().zip(out.kv.iter_mut()) {
                if kv.dim() != shape {
                    let (mut buf, _) = std::mem::take(kv).into_raw_vec_and_offset();
                    buf.clear();
                    buf.resize(shape.0 * shape.1, 0.0);
                    *kv = Array2::from_shape_vec(shape, buf).expect("positions x 2d values");
                }
                l.kv_cross.forward(encoded, kv.view_mut());
            }
        });
    }

    /// Runs `t` new tokens per sequence (`tokens` is `batch x t`, row-major) and returns the final
    /// hidden states (after the last layer norm), `batch * t` rows of d_model.
    ///
    /// # Panics
    /// If `tokens.len()` is not `cache.batch() * t`, a token is out of the vocabulary or the
    /// sequences would exceed the text context.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        cross: &CrossKv,
        tokens: &[u32],
        t: usize,
    ) -> Array2<f32> {
        self.forward_one(cache, cross, tokens, t, None)
    }

    /// Runs one token sequence from the start (a fresh cache) and returns, for each `(layer, head)`
    /// of `heads`, its cross-attention scores before the softmax: `q k^T / sqrt(d_head)`,
    /// `tokens.len() x positions`. Heads the model does not have are left empty (0 x 0).
    /// This is what word alignment reads (OpenAI's `find_alignment`).
    pub fn cross_attention_scores(
        &self,
        cross: &CrossKv,
        tokens: &[u32],
        heads: &[(usize, usize)],
    ) -> Vec<Array2<f32>> {
        let mut cache = self.new_cache_for(tokens.len());
        self.cross_attention_scores_in(&mut cache, cross, tokens, heads)
    }

    /// [`Self::cross_attention_scores`] on `cache` (reset first, and left empty: the layers after
    /// the last head's do not run), in its memory: a transcriber runs it on the cache it decodes
    /// with.
    pub fn cross_attention_scores_in(
        &self,
        cache: &mut KvCache,
        cross: &CrossKv,
        tokens: &[u32],
        heads: &[(usize, usize)],
    ) -> Vec<Array2<f32>> {
        cache.reset();
        let mut capture = CrossCapture {
            heads,
            scores: vec![Array2::zeros((0, 0)); heads.len()],
        };
        self.forward_one(cache, cross, tokens, tokens.len(), Some(&mut capture));
        capture.scores
    }

    /// The layers over `parts`, each `t` new tokens per sequence of its cache, as one call: the
    /// linear layers run once on all the parts' rows (the weights read once), attention runs per
    /// part on its own cache and window. Returns the final hidden states, the parts' rows in
    /// order. `capture` needs a single part.
    fn forward_impl(
        &self,
        parts: &mut [Part<'_>],
        t: usize,
        scratch: &mut Scratch,
        mut capture: Option<&mut CrossCapture<'_>>,
    ) -> Array2<f32> {
        assert!(capture.is_none() || parts.len() == 1, "capture of one part");
        let d = self.dims.d_model;
        // Each part's first row in the call.
        let mut first_row = Vec::with_capacity(parts.len());
        let mut rows = 0;
        for part in parts.iter() {
            let b = part.cache.batch;
            assert_eq!(part.tokens.len(), b * t, "tokens must be batch x t");
            assert!(
                part.cache.len + t <= part.cache.capacity,
                "text context exceeded"
            );
            first_row.push(rows);
            rows += b * t;
        }
        let mut x = Array2::<f32>::zeros((rows, d));
        for (part, &r0) in parts.iter().zip(&first_row) {
            for (r, &tok) in part.tokens.iter().enumerate() {
                let tok = tok as usize;
                assert!(tok < self.dims.n_vocab, "token {tok} out of the vocabulary");
                let p = part.cache.len + r % t;
                self.embeddings
                    .add_row(tok, self.pos.row(p), x.row_mut(r0 + r));
            }
        }
        self.pool.install(|| {
            let [mut h, mut qkv, mut att, mut proj, mut ffn] = scratch.views(rows, d);
            for (li, layer) in self.layers.iter().enumerate() {
                // Causal self-attention over each part's cache and its new tokens.
                layer
                    .ln_self
                    .apply(self.math, d, slice(&x), slice_mut(&mut h));
                layer.qkv.forward(h.view(), qkv.view_mut());
                for (part, &r0) in parts.iter_mut().zip(&first_row) {
                    let cache = &mut *part.cache;
                    let (b, p0) = (cache.batch, cache.len);
                    let (kc, vc) = (&mut cache.k[li], &mut cache.v[li]);
                    let stride = cache.capacity * d;
                    for bi in 0..b {
                        for i in 0..t {
                            let row = qkv.row(r0 + bi * t + i);
                            let off = bi * stride + (p0 + i) * d;
                            kc[off..off + d].copy_from_slice(
                                row.slice(s![d..2 * d]).as_slice().expect("contiguous row"),
                            );
                            vc[off..off + d].copy_from_slice(
                                row.slice(s![2 * d..]).as_slice().expect("contiguous row"),
                            );
                        }
                    }
                    for bi in 0..b {
                        let n_keys = p0 + t;
                        let k =
                            ArrayView2::from_shape((n_keys, d), &kc[bi * stride..][..n_keys * d])
                                .expect("cache slice");
                        let v =
                            ArrayView2::from_shape((n_keys, d), &vc[bi * stride..][..n_keys * d])
                                .expect("cache slice");
                        let rows = r0 + bi * t..r0 + (bi + 1) * t;
                        let q = qkv.slice(s![rows.clone(), ..d]);
                        let out = att.slice_mut(s![rows, ..]);
                        self.attend(q, k, v, Some(p0), out);
                    }
                }
                layer.out_self.forward(att.view(), proj.view_mut());
                x += &proj;

                // Cross-attention on each part's window.
                layer
                    .ln_cross
                    .apply(self.math, d, slice(&x), slice_mut(&mut h));
                let mut q = qkv.slice_mut(s![.., ..d]);
                layer.q_cross.forward(h.view(), q.view_mut());
                for (part, &r0) in parts.iter().zip(&first_row) {
                    let kv = &part.cross.kv[li];
                    let rows = r0..r0 + part.cache.batch * t;
                    self.attend(
                        qkv.slice(s![rows.clone(), ..d]),
                        kv.slice(s![.., ..d]),
                        kv.slice(s![.., d..]),
                        None,
                        att.slice_mut(s![rows, ..]),
                    );
                }
                if let Some(cap) = capture.as_deref_mut() {
                    let dh = d / self.dims.n_decoder_heads;
                    let kv = &parts[0].cross.kv[li];
                    cap.record(li, qkv.slice(s![.., ..d]), kv.slice(s![.., ..d]), dh);
                    // Nothing after the last head's scores changes them: the rest of the layers
                    // would only make hidden states no one reads (base: the last layer's
                    // feed-forward, a tenth of the pass; tiny.en: its last layer too).
                    if cap.last_layer() == Some(li) {
                        parts[0].cache.clear();
                        return Array2::zeros((0, d));
                    }
                }
                layer.out_cross.forward(att.view(), proj.view_mut());
                x += &proj;

                // Feed-forward.
                layer
                    .ln_ffn
                    .apply(self.math, d, slice(&x), slice_mut(&mut h));
                layer.fc1.forward(h.view(), ffn.view_mut());
                par_gelu(self.math, slice_mut(&mut ffn));
                layer.fc2.forward(ffn.view(), proj.view_mut());
                x += &proj;
            }
            let mut out = Array2::<f32>::zeros((rows, d));
            self.ln.apply(self.math, d, slice(&x), slice_mut(&mut out));
            for part in parts.iter_mut() {
                part.cache.len += t;
            }
            out
        })
    }

    /// [`Self::forward_impl`] on one cache, with the cache's own activations.
    fn forward_one(
        &self,
        cache: &mut KvCache,
        cross: &CrossKv,
        tokens: &[u32],
        t: usize,
        capture: Option<&mut CrossCapture<'_>>,
    ) -> Array2<f32> {
        let mut scratch = std::mem::take(&mut cache.scratch);
        let out = self.forward_impl(
            &mut [Part {
                cache: &mut *cache,
                cross,
                tokens,
            }],
            t,
            &mut scratch,
            capture,
        );
        cache.scratch = scratch;
        out
    }

    /// One token per sequence of `cache` (`tokens`, one per sequence) and the logits that follow
    /// (`batch x n_vocab`): a token-by-token step. Streams in a token loop
    /// ([`Self::stepping`]) that step at the same time run as one call ([`batch`]); a stream's
    /// logits are bit for bit those of its step alone (every row of the call is computed as it
    /// would be alone: the linear layers' kernels give a row the same sums whatever rows come
    /// with it, and attention runs per part; `tests/decoder_batch.rs`).
    ///
    /// # Panics
    /// As [`Self::forward`]; also if the batch this step ran in panicked in another stream.
    pub fn step(&self, cache: &mut KvCache, cross: &CrossKv, tokens: &[u32]) -> Array2<f32> {
        let mut logits = Array2::zeros((0, 0));
        let job = StepJob {
            cache,
            cross,
            tokens,
            logits: &mut logits,
        };
        self.steps.run(job, |jobs| self.run_steps(jobs));
        logits
    }

    /// Marks the calling stream as in a token loop until the guard is dropped: the steps of other
    /// streams wait for its steps (a moment at most, [`batch::GRACE`]) to run with them.
    pub fn stepping(&self) -> batch::Stepping<'_, StepJob> {
        self.steps.enter()
    }

    /// The token-by-token steps run so far by this decoder, and the batches they ran in.
    pub fn step_counts(&self) -> batch::BatchCounts {
        self.steps.counts()
    }

    /// Runs the steps of several streams as one call and hands each its logits.
    fn run_steps(&self, jobs: &mut [StepJob]) {
        // SAFETY: each job's pointers come from the borrows of a `step` call that stays blocked
        // in `StepBatcher::run` until this batch is finished, so they are valid, and no one else
        // uses them meanwhile; two jobs never share a cache (a stream has one step queued at a
        // time, and a cache is borrowed mutably by its one stream).
        let mut parts: Vec<Part<'_>> = jobs
            .iter()
            .map(|j| unsafe {
                Part {
                    cache: &mut *j.cache,
                    cross: &*j.cross,
                    tokens: &*j.tokens,
                }
            })
            .collect();
        let rows: Vec<usize> = parts.iter().map(|p| p.cache.batch).collect();
        let mut scratch = self.step_scratch.lock().unwrap_or_else(|e| e.into_inner());
        let h = self.forward_impl(&mut parts, 1, &mut scratch, None);
        drop(scratch);
        let logits = self.logits(h.view());
        if let [job] = jobs {
            // Alone (the usual case): the logits are all its own.
            // SAFETY: as above.
            unsafe { *job.logits = logits };
            return;
        }
        let mut r0 = 0;
        for (job, n) in jobs.iter().zip(rows) {
            // SAFETY: as above.
            unsafe { *job.logits = logits.slice(s![r0..r0 + n, ..]).to_owned() };
            r0 += n;
        }
    }

    /// Logits (`rows x n_vocab`) of final hidden states.
    pub fn logits(&self, hidden: ArrayView2<f32>) -> Array2<f32> {
        let mut out = Array2::zeros((hidden.nrows(), self.dims.n_vocab));
        self.pool
            .install(|| self.proj.forward(hidden, out.view_mut()));
        out
    }

    /// Logits of one hidden state.
    pub fn logits_row(&self, hidden: ArrayView1<f32>) -> Array1<f32> {
        self.logits(hidden.insert_axis(Axis(0)))
            .index_axis_move(Axis(0), 0)
    }

    /// Multi-head attention of `q` (rows x d) on `k`, `v` (keys x d) into `out` (rows x d).
    /// With `causal = Some(p0)`, query row `i` is at position `p0 + i` and sees keys `0..=p0 + i`.
    fn attend(
        &self,
        q: ArrayView2<f32>,
        k: ArrayView2<f32>,
        v: ArrayView2<f32>,
        causal: Option<usize>,
        mut out: ArrayViewMut2<f32>,
    ) {
        let d = self.dims.d_model;
        let heads = self.dims.n_decoder_heads;
        let dh = d / heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let (rows, n_keys) = (q.nrows(), k.nrows());
        let chunks: Vec<_> = out.axis_chunks_iter_mut(Axis(1), dh).enumerate().collect();
        let work = |(h, head_out): (usize, ArrayViewMut2<f32>)| {
            let cols = h * dh..(h + 1) * dh;
            let qh = q.slice(s![.., cols.clone()]);
            let kh = k.slice(s![.., cols.clone()]);
            let vh = v.slice(s![.., cols]);
            let mut sc = Array2::<f32>::zeros((rows, n_keys));
            matmul(qh, kh.t(), sc.view_mut(), false, Parallel::None);
            for (i, mut row) in sc.rows_mut().into_iter().enumerate() {
                let visible = causal.map_or(n_keys, |p0| (p0 + i + 1).min(n_keys));
                let max = row
                    .slice(s![..visible])
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0.0f32;
                for (j, v) in row.iter_mut().enumerate() {
                    if j < visible {
                        *v = ((*v - max) * scale).exp();
                        sum += *v;
                    } else {
                        *v = 0.0;
                    }
                }
                let inv = 1.0 / sum;
                row.mapv_inplace(|v| v * inv);
            }
            matmul(sc.view(), vh, head_out, false, Parallel::None);
        };
        if rows * n_keys >= 4096 {
            chunks.into_par_iter().for_each(work);
        } else {
            chunks.into_iter().for_each(work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(batch: usize, len: usize) -> KvCache {
        let (cap, d) = (4, 2);
        let mut c = KvCache {
            batch: 1,
            len,
            capacity: cap,
            d,
            k: vec![vec![0.0; cap * d]],
            v: vec![vec![0.0; cap * d]],
            spare: Vec::new(),
            scratch: Scratch::default(),
        };
        c.resize_batch(batch);
        for (i, x) in c.k[0].iter_mut().enumerate() {
            *x = i as f32;
        }
        c
    }

    #[test]
    fn cache_repeat_and_reorder() {
        let mut c = cache(1, 2);
        c.repeat(3);
        assert_eq!(c.batch(), 3);
        // The first len * d values of every sequence equal those of sequence 0.
        for b in 0..3 {
            assert_eq!(&c.k[0][b * 8..b * 8 + 4], &[0.0, 1.0, 2.0, 3.0]);
        }
        let mut c = cache(3, 2);
        c.reorder(&[2, 2, 0]);
        assert_eq!(&c.k[0][0..4], &[16.0, 17.0, 18.0, 19.0]);
        assert_eq!(&c.k[0][8..12], &[16.0, 17.0, 18.0, 19.0]);
        assert_eq!(&c.k[0][16..20], &[0.0, 1.0, 2.0, 3.0]);
        c.reorder(&[1]);
        assert_eq!(c.batch(), 1);
        assert_eq!(&c.k[0][0..4], &[16.0, 17.0, 18.0, 19.0]);
    }

    #[test]
    fn a_reserved_cache_follows_its_batches_without_allocating() {
        let buffers = |c: &KvCache| -> Vec<*const f32> {
            let mut p: Vec<_> =
                c.k.iter()
                    .chain(&c.v)
                    .chain([&c.spare])
                    .map(|b| b.as_ptr())
                    .collect();
            p.sort();
            p
        };
        let mut c = cache(1, 2);
        c.reserve_batch(3);
        let reserved = buffers(&c);
        c.repeat(3);
        c.reorder(&[2, 0]);
        c.reset();
        assert_eq!((c.batch(), c.len()), (1, 0));
        c.repeat(3);
        c.reorder(&[1, 1, 0]);
        assert_eq!(buffers(&c), reserved);
    }
}

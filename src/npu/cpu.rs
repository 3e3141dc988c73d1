//! Float32 CPU engine.
//!
//! With AVX-512F or AVX2 + FMA, linear layers run on [`super::cpu_gemm`]: the weight is packed
//! once at load into the kernel's panels, the rows of a call are split into one block per thread, one rayon task
//! per block (in the caller's pool), each running the single-threaded kernel; calls with few rows
//! (the decoder's token-by-token products) split the output columns instead. GELU can run in the
//! kernel's epilogue ([`Linear::forward_gelu`]). Without either, and for the generic attention
//! path's activation x activation products ([`matmul`]), the `gemm` crate runs them (it
//! allocates bookkeeping on every call: a warm encoder is allocation-free only on the kernels).
//!
//! Why this kernel and not `gemm` or ndarray's `dot`: the measurements are in `benches/README.md`.
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::cpu_gemm::{self, PackedWeight};
use super::{BackendKind, Engine, Linear, Precision};

/// Float32 engine on the CPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuF32Engine {
    packed: bool,
}

impl Default for CpuF32Engine {
    fn default() -> Self {
        CpuF32Engine::new()
    }
}

impl CpuF32Engine {
    /// The engine with the fastest kernel of this CPU.
    pub fn new() -> CpuF32Engine {
        CpuF32Engine {
            packed: cpu_gemm::available(),
        }
    }

    /// The engine on the `gemm` crate only (no packed kernel), e.g. to compare them.
    pub fn portable() -> CpuF32Engine {
        CpuF32Engine { packed: false }
    }
}

impl Engine for CpuF32Engine {
    fn backend(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    fn prepare(&self, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Box<dyn Linear> {
        self.prepare_packed(weight, bias, |n, k, w| PackedWeight::new(n, k, w))
    }

    /// Half-float panels where every weight is one ([`PackedWeight::compact`]; the model's fp16
    /// weights are): a token-by-token step reads half the bytes for the same products.
    fn prepare_streamed(
        &self,
        weight: ArrayView2<f32>,
        bias: Option<ArrayView1<f32>>,
    ) -> Box<dyn Linear> {
        self.prepare_packed(weight, bias, |n, k, w| PackedWeight::compact(n, k, w))
    }
}

impl CpuF32Engine {
    /// A linear layer on the packed kernel, its weight packed by `pack`, or on `gemm`.
    fn prepare_packed(
        &self,
        weight: ArrayView2<f32>,
        bias: Option<ArrayView1<f32>>,
        pack: impl FnOnce(usize, usize, &dyn Fn(usize, usize) -> f32) -> PackedWeight,
    ) -> Box<dyn Linear> {
        let (n_out, n_in) = weight.dim();
        if let Some(b) = &bias {
            assert_eq!(
                b.len(),
                n_out,
                "bias length {} for {n_out} outputs",
                b.len()
            );
        }
        let bias = bias.map(|b| b.to_owned());
        if self.packed {
            Box::new(CpuF32Linear::Packed {
                w: pack(n_out, n_in, &|o, i| weight[[o, i]]),
                bias,
            })
        } else {
            Box::new(CpuF32Linear::Gemm {
                // Row-major n_out x n_in: the rhs W^T of `x W^T` is then read with unit stride
                // along k, which gemm packs efficiently.
                weight: weight.as_standard_layout().into_owned(),
                bias,
            })
        }
    }
}

enum CpuF32Linear {
    Packed {
        w: PackedWeight,
        bias: Option<Array1<f32>>,
    },
    Gemm {
        weight: Array2<f32>,
        bias: Option<Array1<f32>>,
    },
}

thread_local! {
    /// Per thread: the packed rows of cpu_gemm, and staging copies for strided inputs/outputs.
    static SCRATCH: RefCell<[Vec<f32>; 3]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// The largest size each per-thread buffer has needed so far (any thread, any layer).
static HIGH_WATER: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

/// Grows `v` to `n` values, noting `n` as a high-water mark of buffer `i`.
fn grow_noted(i: usize, v: &mut Vec<f32>, n: usize) {
    HIGH_WATER[i].fetch_max(n, Ordering::Relaxed);
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Grows the calling thread's buffers to the largest sizes any call has needed so far. Run on
/// every thread of a pool after a first pass (`ThreadPool::broadcast`), it makes the following
/// passes with the same shapes allocation-free whichever thread runs which block.
pub fn reserve_thread_scratch() {
    SCRATCH.with(|s| {
        for (i, v) in s.borrow_mut().iter_mut().enumerate() {
            let n = HIGH_WATER[i].load(Ordering::Relaxed);
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
    });
}

/// Whether a product of `rows` rows splits its rows between the threads (else its output
/// columns: few rows, as in the decoder's token-by-token products, would leave threads idle).
fn split_rows(rows: usize) -> bool {
    rows >= 2 * cpu_gemm::MR * rayon::current_num_threads().max(1)
}

/// `y = x w^T + bias` for the output columns of `panels` (y holds just those columns), on this
/// thread.
fn packed_block(
    w: &PackedWeight,
    bias: Option<&[f32]>,
    panels: std::ops::Range<usize>,
    x: ArrayView2<f32>,
    mut y: ArrayViewMut2<f32>,
    gelu: bool,
) {
    let rows = x.nrows();
    let n_in = w.k;
    let n_cols = y.ncols();
    debug_assert_eq!(
        n_cols,
        w.n.min(panels.end * cpu_gemm::NR) - panels.start * cpu_gemm::NR
    );
    SCRATCH.with(|s| {
        let [pack, xs, ys] = &mut *s.borrow_mut();
        // Unit column stride and a non-negative row stride: read in place (rows may overlap, as
        // the encoder's convolution inputs do); else stage a copy. The output also needs rows
        // that do not overlap.
        let x_direct = rows <= 1 && (n_in <= 1 || x.strides()[1] == 1)
            || x.strides()[1] == 1 && x.strides()[0] >= 0;
        let direct = |strides: &[isize], cols: usize| {
            rows <= 1 && (cols <= 1 || strides[1] == 1)
                || strides[1] == 1 && strides[0] >= cols as isize
        };
        let (a, lda) = if x_direct {
            (x.as_ptr(), x.strides()[0].max(0) as usize)
        } else {
            grow_noted(1, xs, rows * n_in);
            for (d, &v) in xs.iter_mut().zip(x.iter()) {
                *d = v;
            }
            (xs.as_ptr(), n_in)
        };
        let y_direct = direct(y.strides(), n_cols);
        let (c, ldc) = if y_direct {
            (y.as_mut_ptr(), y.strides()[0].max(0) as usize)
        } else {
            grow_noted(2, ys, rows * n_cols);
            (ys.as_mut_ptr(), n_cols)
        };
        grow_noted(0, pack, cpu_gemm::pack_len(rows, n_in));
        // SAFETY: a kernel of cpu_gemm runs here (the engine packs only then); `a` points to `rows` rows of
        // n_in values with row stride lda (the view's own memory, or the staged copy), `c` to
        // `rows` rows of the panels' n_cols columns with row stride ldc that only this task
        // writes (its own block of y, or the staging buffer); the bias has n values (checked at
        // prepare); `panels` is within the weight's panels (the caller's split).
        unsafe {
            cpu_gemm::gemm_raw(
                a,
                lda,
                rows,
                w,
                bias,
                panels,
                c,
                ldc.max(n_cols),
                pack,
                gelu,
            )
        };
        if !y_direct {
            let src = ArrayView2::from_shape((rows, n_cols), &ys[..rows * n_cols]).expect("sized");
            y.assign(&src);
        }
    });
}

impl Linear for CpuF32Linear {
    fn n_in(&self) -> usize {
        match self {
            CpuF32Linear::Packed { w, .. } => w.k,
            CpuF32Linear::Gemm { weight, .. } => weight.ncols(),
        }
    }

    fn n_out(&self) -> usize {
        match self {
            CpuF32Linear::Packed { w, .. } => w.n,
            CpuF32Linear::Gemm { weight, .. } => weight.nrows(),
        }
    }

    fn forward(&self, x: ArrayView2<f32>, y: ArrayViewMut2<f32>) {
        self.run(x, y, false);
    }

    fn forward_gelu(&self, x: ArrayView2<f32>, y: ArrayViewMut2<f32>) -> bool {
        match self {
            CpuF32Linear::Packed { .. } => {
                self.run(x, y, true);
                true
            }
            CpuF32Linear::Gemm { .. } => false,
        }
    }
}

impl CpuF32Linear {
    /// `y = x w^T + bias`, then GELU if `gelu` (the packed kernel only).
    fn run(&self, x: ArrayView2<f32>, mut y: ArrayViewMut2<f32>, gelu: bool) {
        let (rows, n_in) = x.dim();
        assert_eq!(n_in, self.n_in(), "input width");
        assert_eq!(y.dim(), (rows, self.n_out()), "output shape");
        match self {
            CpuF32Linear::Packed { w, bias } => {
                if rows == 0 || w.n == 0 {
                    return;
                }
                let bias = bias.as_ref().map(|b| b.as_slice().expect("owned bias"));
                let all = 0..w.panels();
                let threads = rayon::current_num_threads().max(1);
                if split_rows(rows) {
                    // One block of rows per thread, each task running all the output columns:
                    // every panel of the weight (streamed from L3 or memory) then serves as many
                    // row tiles as it can, and every row is packed once. Measured per window
                    // against a quarter of the rows per task: 6-8% faster; against each block
                    // split again into two column halves (two tasks per thread, for stealing,
                    // but every row packed twice): 2-3% faster.
                    let block = rows.div_ceil(threads);
                    x.axis_chunks_iter(Axis(0), block)
                        .into_par_iter()
                        .zip(y.axis_chunks_iter_mut(Axis(0), block).into_par_iter())
                        .for_each(|(xb, yb)| packed_block(w, bias, all.clone(), xb, yb, gelu));
                } else if threads > 1 && w.panels() > 1 {
                    // Few rows: split the output columns, a few panels per task.
                    let per = w.panels().div_ceil(4 * threads);
                    y.axis_chunks_iter_mut(Axis(1), per * cpu_gemm::NR)
                        .into_par_iter()
                        .enumerate()
                        .for_each(|(i, yb)| {
                            let panels = i * per..((i + 1) * per).min(w.panels());
                            packed_block(w, bias, panels, x, yb, gelu)
                        });
                } else {
                    packed_block(w, bias, all, x, y, gelu);
                }
            }
            CpuF32Linear::Gemm { weight, bias } => match bias {
                _ if gelu => unreachable!("the gemm path fuses no GELU"),
                Some(b) => {
                    y.rows_mut().into_iter().for_each(|mut r| r.assign(b));
                    matmul(x, weight.t(), y, true, Parallel::Pool);
                }
                None => matmul(x, weight.t(), y, false, Parallel::Pool),
            },
        }
    }
}

/// How [`matmul`] may use threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallel {
    /// Single-threaded (e.g. inside an already parallel loop).
    None,
    /// All threads of the current rayon pool.
    Pool,
}

/// `c = a b` (or `c += a b` with `accumulate`), any strides, through `gemm`.
///
/// # Panics
/// If the shapes do not agree.
pub fn matmul(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    mut c: ArrayViewMut2<f32>,
    accumulate: bool,
    parallel: Parallel,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "inner dimensions");
    assert_eq!(c.dim(), (m, n), "output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let parallelism = match parallel {
        Parallel::Pool if rayon::current_num_threads() > 1 => {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => gemm::Parallelism::None,
    };
    let [a_rs, a_cs] = [a.strides()[0], a.strides()[1]];
    let [b_rs, b_cs] = [b.strides()[0], b.strides()[1]];
    let [c_rs, c_cs] = [c.strides()[0], c.strides()[1]];
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were checked
    // above to be m x k, k x n and m x n; `c` is a unique (mutable) view, so it does not alias
    // `a` or `b`. gemm reads `c` only when `accumulate` is set (it has been initialised either way).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npu::test_data::pseudo;
    use ndarray::{s, Array2, ShapeBuilder};

    fn naive(x: &ArrayView2<f32>, w: &Array2<f32>, b: Option<&Array1<f32>>) -> Array2<f32> {
        let mut y = Array2::zeros((x.nrows(), w.nrows()));
        for i in 0..x.nrows() {
            for j in 0..w.nrows() {
                let mut acc = 0f64;
                for k in 0..x.ncols() {
                    acc += x[[i, k]] as f64 * w[[j, k]] as f64;
                }
                y[[i, j]] = (acc + b.map_or(0.0, |b| b[j] as f64)) as f32;
            }
        }
        y
    }

    #[test]
    fn linear_matches_naive() {
        for e in [CpuF32Engine::new(), CpuF32Engine::portable()] {
            linear_matches_naive_with(e);
        }
    }

    fn linear_matches_naive_with(e: CpuF32Engine) {
        assert_eq!(e.backend().nick(), "cpu");
        assert_eq!(e.precision().nick(), "f32");
        let w = pseudo(37, 53, 1);
        let b = pseudo(1, 37, 2).row(0).to_owned();
        let x_big = pseudo(90, 60, 3);
        // A strided, offset view as input.
        // Strided, offset and reversed views as inputs.
        for x in [
            x_big.slice(s![5..;2, 3..56]),
            x_big.slice(s![..;-3, 3..56;-1]),
        ] {
            for bias in [None, Some(&b)] {
                let lin = e.prepare(w.view(), bias.map(|b| b.view()));
                assert_eq!((lin.n_in(), lin.n_out()), (53, 37));
                let r = naive(&x, &w, bias);
                let mut y = Array2::from_elem((x.nrows(), 37), f32::NAN);
                lin.forward(x, y.view_mut());
                let err = (&y - &r).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(err < 1e-4, "max error {err}");
                // A transposed (column-major) output, inside a 2-thread pool.
                let mut yt = Array2::from_elem((37, x.nrows()), f32::NAN);
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap();
                pool.install(|| lin.forward(x, yt.view_mut().reversed_axes()));
                let err = (&yt.t() - &r).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(err < 1e-4, "max error {err} (transposed output)");
            }
        }
        // Overlapping input rows (row stride 7 < 53 columns), as the encoder's convolutions read.
        let flat = pseudo(1, 7 * 60 + 53, 9).into_raw_vec_and_offset().0;
        let x = ArrayView2::from_shape((61, 53).strides((7, 1)), &flat[..]).unwrap();
        let lin = e.prepare(w.view(), Some(b.view()));
        let mut y = Array2::from_elem((61, 37), f32::NAN);
        lin.forward(x, y.view_mut());
        let r = naive(&x, &w, Some(&b));
        let err = (&y - &r).iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(err < 1e-4, "max error {err} (overlapping rows)");
        // Many rows (split between threads) and a single row (columns split), 1 to 3 threads.
        let w = pseudo(100, 70, 4);
        let b = pseudo(1, 100, 5).row(0).to_owned();
        let lin = e.prepare(w.view(), Some(b.view()));
        for rows in [1usize, 7, 130] {
            let x = pseudo(rows, 70, 6 + rows as u32);
            let r = naive(&x.view(), &w, Some(&b));
            for threads in 1..=3 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut y = Array2::from_elem((rows, 100), f32::NAN);
                pool.install(|| lin.forward(x.view(), y.view_mut()));
                let err = (&y - &r).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    err < 1e-4,
                    "{rows} rows, {threads} threads: max error {err}"
                );
            }
        }
    }

    #[test]
    fn gelu_epilogue_matches_separate_pass() {
        let w = pseudo(70, 45, 11);
        let b = pseudo(1, 70, 12).row(0).to_owned();
        let math = crate::npu::cpu_math::Math::new();
        for e in [CpuF32Engine::new(), CpuF32Engine::portable()] {
            let lin = e.prepare(w.view(), Some(b.view()));
            for rows in [1usize, 5, 16, 100] {
                let x = pseudo(rows, 45, 13 + rows as u32);
                let mut want = Array2::from_elem((rows, 70), f32::NAN);
                lin.forward(x.view(), want.view_mut());
                math.gelu_inplace(want.as_slice_mut().unwrap());
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = Array2::from_elem((rows, 70), f32::NAN);
                    let fused = pool.install(|| lin.forward_gelu(x.view(), got.view_mut()));
                    // The packed kernel fuses it; the gemm path leaves it to the caller.
                    assert_eq!(fused, e.packed, "{rows} rows");
                    if fused {
                        // Same products, same GELU: the same bits as the two passes.
                        assert_eq!(got, want, "{rows} rows, {threads} threads");
                    } else {
                        assert!(got.iter().all(|v| v.is_nan()), "y touched though not fused");
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_accumulates() {
        let a = pseudo(4, 3, 4);
        let b = pseudo(3, 5, 5);
        let mut c = Array2::from_elem((4, 5), 1.0f32);
        matmul(a.view(), b.view(), c.view_mut(), true, Parallel::None);
        let r = a.dot(&b) + 1.0;
        assert!((&c - &r).iter().all(|v| v.abs() < 1e-5));
    }
}

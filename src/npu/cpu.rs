//! Float32 CPU engine.
//!
//! Matrix products go through the `gemm` crate with `Parallelism::Rayon(n)`, n being the thread
//! count of the rayon pool the caller runs in (the encoder's own pool).
//!
//! Why gemm: measured on the base encoder's shapes (512 x 512 times 512 -> 2048 / 1536 / 512) on
//! the 2-core build machine (Xeon, AVX2 kernels): gemm ~105 GFLOPS on one thread and ~200 on two,
//! ndarray's `dot` (matrixmultiply; its threading feature is off) ~97 on one thread only. With
//! gemm's optional `x86-v4` feature (AVX-512 kernels, dispatched at run time) gemm reaches ~165 on
//! one thread and the base encoder goes from ~190 to ~150 ms per 10.24 s window.
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2};

use super::{BackendKind, Engine, Linear, Precision};

/// Float32 engine on the CPU: weights kept as f32, products through `gemm`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuF32Engine;

impl CpuF32Engine {
    pub fn new() -> CpuF32Engine {
        CpuF32Engine
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
        let n_out = weight.nrows();
        if let Some(b) = &bias {
            assert_eq!(
                b.len(),
                n_out,
                "bias length {} for {n_out} outputs",
                b.len()
            );
        }
        Box::new(CpuF32Linear {
            // Row-major n_out x n_in: the rhs W^T of `x W^T` is then read with unit stride along
            // k, which gemm packs efficiently.
            weight: weight.as_standard_layout().into_owned(),
            bias: bias.map(|b| b.to_owned()),
        })
    }
}

struct CpuF32Linear {
    weight: Array2<f32>,
    bias: Option<Array1<f32>>,
}

impl Linear for CpuF32Linear {
    fn n_in(&self) -> usize {
        self.weight.ncols()
    }

    fn n_out(&self) -> usize {
        self.weight.nrows()
    }

    fn forward(&self, x: ArrayView2<f32>, mut y: ArrayViewMut2<f32>) {
        let (rows, n_in) = x.dim();
        assert_eq!(n_in, self.n_in(), "input width");
        assert_eq!(y.dim(), (rows, self.n_out()), "output shape");
        match &self.bias {
            Some(b) => {
                y.rows_mut().into_iter().for_each(|mut r| r.assign(b));
                matmul(x, self.weight.t(), y, true, Parallel::Pool);
            }
            None => matmul(x, self.weight.t(), y, false, Parallel::Pool),
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
    use ndarray::{s, Array2};

    fn pseudo(rows: usize, cols: usize, seed: u32) -> Array2<f32> {
        let mut st = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        Array2::from_shape_fn((rows, cols), |_| {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            (st % 2001) as f32 / 1000.0 - 1.0
        })
    }

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
        let e = CpuF32Engine::new();
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
                let mut y = Array2::from_elem((x.nrows(), 37), f32::NAN);
                lin.forward(x, y.view_mut());
                let r = naive(&x, &w, bias);
                let err = (&y - &r).iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(err < 1e-4, "max error {err}");
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

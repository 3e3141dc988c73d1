//! Int8 CPU engine: the quantize / integer GEMM / dequantize split of [`quant`], with the integer
//! product in `std::arch` kernels.
//!
//! At [`Engine::prepare`] each weight is quantized once per output channel
//! ([`quant::quantize_weight`]) and re-laid-out for the kernel. [`Linear::forward`] splits the
//! rows into one rayon task per block; a task quantizes its rows ([`quant::quantize_row_into`],
//! one scale per row), multiplies them exactly into int32 and dequantizes them
//! ([`quant::dequantize_row`]). The integer product is exact, so every kernel here gives the same
//! bits as [`quant::gemm_i8_reference`] followed by [`quant::dequantize`], and as any other
//! backend that uses `quant` (the XDNA2 engine).
//!
//! Kernels, picked at run time ([`Int8Kernel::detect`]):
//! - [`Int8Kernel::Avx512Vnni`]: `vpdpbusd` on zmm (u8 x s8, 4 products per int32 lane). The
//!   activations are made unsigned by adding 128 (`q ^ 0x80`), and `128 * sum_k w[o][k]`, kept per
//!   output channel, is subtracted at the end: still exact. 12 rows x 32 columns per tile.
//! - [`Int8Kernel::AvxVnni`]: the same on ymm with the VEX encoding (CPUs with AVX-VNNI but no
//!   AVX-512), 6 rows x 16 columns.
//! - [`Int8Kernel::Avx2`]: values sign-extended to int16 and `vpmaddwd` (int16 x int16, pairs
//!   summed into int32): no saturation, unlike `vpmaddubsw`. 6 rows x 16 columns.
//! - [`Int8Kernel::Portable`]: the reference product, [`quant::gemm_i8_reference`].
//!
//! The weight tiles are packed so that a kernel reads them strictly sequentially: for VNNI,
//! panels of 32 output channels, and in a panel, for every group of 4 inputs, the 32 channels'
//! 4 bytes (128 bytes, two zmm); for AVX2, panels of 16 channels and groups of 2 inputs as int16.
//! The activations of a block are packed likewise, by tiles of rows: for every input group, the
//! rows' 4 bytes (VNNI) or 2 int16 (AVX2) side by side, so that a tile's broadcasts all come from
//! one pointer.
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::quant::{self, QuantizedWeight};
use super::{BackendKind, Engine, Linear, Precision};

/// The integer GEMM kernel of the int8 engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Kernel {
    /// AVX-512 VNNI (`vpdpbusd` zmm).
    Avx512Vnni,
    /// AVX-VNNI (`vpdpbusd` ymm, VEX).
    AvxVnni,
    /// AVX2 (`vpmaddwd` on sign-extended values).
    Avx2,
    /// [`quant::gemm_i8_reference`].
    Portable,
}

impl Int8Kernel {
    /// Every kernel this CPU can run, fastest first; the last is always `Portable`.
    pub fn available() -> Vec<Int8Kernel> {
        [
            Int8Kernel::Avx512Vnni,
            Int8Kernel::AvxVnni,
            Int8Kernel::Avx2,
            Int8Kernel::Portable,
        ]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn detect() -> Int8Kernel {
        Int8Kernel::available()[0]
    }

    /// Whether this CPU has the instructions of the kernel.
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Int8Kernel::Avx512Vnni => {
                    is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vnni")
                }
                Int8Kernel::AvxVnni => {
                    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
                }
                Int8Kernel::Avx2 => is_x86_feature_detected!("avx2"),
                Int8Kernel::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Int8Kernel::Portable
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::AvxVnni => "avx-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Portable => "portable",
        }
    }

    /// Rows of a tile.
    fn mr(self) -> usize {
        match self {
            Int8Kernel::Avx512Vnni => 12,
            Int8Kernel::AvxVnni | Int8Kernel::Avx2 => 6,
            Int8Kernel::Portable => 1,
        }
    }

    /// Output channels of a packed weight panel.
    fn nr(self) -> usize {
        match self {
            Int8Kernel::Avx512Vnni | Int8Kernel::AvxVnni => 32,
            Int8Kernel::Avx2 => 16,
            Int8Kernel::Portable => 1,
        }
    }

    /// Inputs per 32-bit lane: 4 int8 (VNNI), 2 int16 (AVX2).
    fn kgroup(self) -> usize {
        match self {
            Int8Kernel::Avx2 => 2,
            _ => 4,
        }
    }
}

/// Int8 engine on the CPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuInt8Engine {
    kernel: Int8Kernel,
}

impl Default for CpuInt8Engine {
    fn default() -> Self {
        CpuInt8Engine::new()
    }
}

impl CpuInt8Engine {
    /// The engine with the fastest kernel of this CPU.
    pub fn new() -> CpuInt8Engine {
        CpuInt8Engine {
            kernel: Int8Kernel::detect(),
        }
    }

    /// The engine with a given kernel, if this CPU runs it (tests force each one).
    pub fn with_kernel(kernel: Int8Kernel) -> Option<CpuInt8Engine> {
        kernel.is_available().then_some(CpuInt8Engine { kernel })
    }

    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }
}

impl Engine for CpuInt8Engine {
    fn backend(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn precision(&self) -> Precision {
        Precision::Int8
    }

    fn prepare(&self, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Box<dyn Linear> {
        Box::new(CpuInt8Linear::new(self.kernel, weight, bias))
    }
}

/// A linear layer quantized for one kernel.
pub struct CpuInt8Linear {
    kernel: Int8Kernel,
    /// Scales and bias (and, for the portable kernel only, the int8 weight itself).
    q: QuantizedWeight,
    n_in: usize,
    n_out: usize,
    /// Inputs padded to the kernel's group (4 or 2); the padding is zero in `packed`.
    k_pad: usize,
    /// Outputs padded to the panel width.
    n_pad: usize,
    /// The packed weight: int8 (VNNI) or int16 (AVX2) values, as bytes.
    packed: Vec<u8>,
    /// VNNI: `128 * sum_k w[o][k]` per output channel (n_pad long); zeros otherwise.
    corr: Vec<i32>,
}

impl CpuInt8Linear {
    fn new(kernel: Int8Kernel, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Self {
        let (n_out, n_in) = weight.dim();
        if let Some(b) = &bias {
            assert_eq!(
                b.len(),
                n_out,
                "bias length {} for {n_out} outputs",
                b.len()
            );
        }
        let mut q = quant::quantize_weight(weight, bias);
        let (kg, nr) = (kernel.kgroup(), kernel.nr());
        let k_pad = n_in.div_ceil(kg) * kg;
        let n_pad = n_out.div_ceil(nr) * nr;
        let w = |o: usize, k: usize| -> i8 {
            if o < n_out && k < n_in {
                q.data[o * n_in + k]
            } else {
                0
            }
        };
        let mut packed = Vec::new();
        let mut corr = vec![0i32; n_pad];
        match kernel {
            Int8Kernel::Avx512Vnni | Int8Kernel::AvxVnni => {
                packed.reserve(n_pad * k_pad);
                for p in 0..n_pad / nr {
                    for kk in 0..k_pad / 4 {
                        for c in 0..nr {
                            for j in 0..4 {
                                packed.push(w(p * nr + c, kk * 4 + j) as u8);
                            }
                        }
                    }
                }
                for (o, c) in corr.iter_mut().enumerate().take(n_out) {
                    *c = 128
                        * q.data[o * n_in..(o + 1) * n_in]
                            .iter()
                            .map(|&v| v as i32)
                            .sum::<i32>();
                }
            }
            Int8Kernel::Avx2 => {
                packed.reserve(2 * n_pad * k_pad);
                for p in 0..n_pad / nr {
                    for kk in 0..k_pad / 2 {
                        for c in 0..nr {
                            for j in 0..2 {
                                let v = w(p * nr + c, kk * 2 + j) as i16;
                                packed.extend_from_slice(&v.to_le_bytes());
                            }
                        }
                    }
                }
            }
            Int8Kernel::Portable => {}
        }
        if kernel != Int8Kernel::Portable {
            // Only the packed copy is used from now on.
            q.data = Vec::new();
        }
        CpuInt8Linear {
            kernel,
            q,
            n_in,
            n_out,
            k_pad,
            n_pad,
            packed,
            corr,
        }
    }

    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// One block of rows, on the current thread, for the output channels of `panels` (y holds
    /// just those channels; the portable kernel takes every channel).
    fn block(
        &self,
        panels: std::ops::Range<usize>,
        x: ArrayView2<f32>,
        mut y: ArrayViewMut2<f32>,
        s: &mut Scratch,
    ) {
        let rows = x.nrows();
        let (k, n_out) = (self.n_in, self.n_out);
        grow(5, &mut s.xs, rows);
        if self.kernel == Int8Kernel::Portable {
            grow(1, &mut s.tmp, rows * k);
            grow(4, &mut s.acc, rows * n_out);
            quant::quantize_rows(x, &mut s.tmp[..rows * k], &mut s.xs[..rows]);
            quant::gemm_i8_reference(
                &s.tmp[..rows * k],
                &self.q.data,
                rows,
                k,
                n_out,
                &mut s.acc[..rows * n_out],
            );
            quant::dequantize(&s.acc[..rows * n_out], &s.xs[..rows], &self.q, y);
            return;
        }

        let (mr, nr, kgs) = (self.kernel.mr(), self.kernel.nr(), self.kernel.kgroup());
        let kg = self.k_pad / kgs;
        // This task's channels c0..c1, padded to whole panels in acc (row stride ld).
        let (c0, c1) = (panels.start * nr, n_out.min(panels.end * nr));
        let ld = panels.len() * nr;
        debug_assert_eq!(y.ncols(), c1 - c0);
        grow(0, &mut s.a, rows * kg);
        grow(1, &mut s.tmp, self.k_pad);
        grow(2, &mut s.row, k);
        grow(4, &mut s.acc, rows * ld);

        // Quantize and pack the rows: tile t (rows t*mr ..) holds, for every input group, its
        // rows' groups side by side.
        let vnni = self.kernel != Int8Kernel::Avx2;
        for (r, xr) in x.rows().into_iter().enumerate() {
            let xr = match xr.as_slice() {
                Some(sl) => sl,
                None => {
                    for (d, &v) in s.row.iter_mut().zip(xr.iter()) {
                        *d = v;
                    }
                    &s.row[..k]
                }
            };
            s.xs[r] = quant::quantize_row_into(xr, &mut s.tmp[..k]);
            s.tmp[k..self.k_pad].fill(0);
            let (t, i) = (r / mr, r % mr);
            let w = mr.min(rows - t * mr);
            let base = t * mr * kg;
            let dst = &mut s.a[base..base + w * kg];
            if vnni {
                for (kk, g) in s.tmp[..self.k_pad].chunks_exact(4).enumerate() {
                    // +128 on every byte: the unsigned operand of vpdpbusd.
                    let v = u32::from_le_bytes([g[0] as u8, g[1] as u8, g[2] as u8, g[3] as u8]);
                    dst[kk * w + i] = v ^ 0x8080_8080;
                }
            } else {
                for (kk, g) in s.tmp[..self.k_pad].chunks_exact(2).enumerate() {
                    let (lo, hi) = (g[0] as i16 as u16 as u32, g[1] as i16 as u16 as u32);
                    dst[kk * w + i] = lo | (hi << 16);
                }
            }
        }

        // Tiles: panels outer (a panel stays in L1/L2 for all the block's tiles), rows inner.
        let acc = &mut s.acc[..rows * ld];
        for p in panels.clone() {
            let panel = &self.packed[p * nr * self.k_pad * (4 / kgs)..];
            let corr = &self.corr[p * nr..];
            for t in 0..rows.div_ceil(mr) {
                let w = mr.min(rows - t * mr);
                let a = &s.a[t * mr * kg..];
                let c = &mut acc[t * mr * ld + (p - panels.start) * nr..];
                // SAFETY: `a` holds w * kg groups of this tile, `panel` nr * k_pad values,
                // `corr` nr values, and `c` w rows of ld (>= (p - start) * nr + nr) int32 from the
                // tile's first column; the kernel's features were checked when it was chosen.
                unsafe { tile(self.kernel, w, a, panel, kg, corr, c, ld) };
            }
        }

        let n = c1 - c0;
        for (r, mut yr) in y.axis_iter_mut(Axis(0)).enumerate() {
            let accr = &acc[r * ld..r * ld + n];
            match yr.as_slice_mut() {
                Some(ys) => quant::dequantize_row_cols(accr, s.xs[r], &self.q, c0..c1, ys),
                None => {
                    grow(3, &mut s.out, n);
                    quant::dequantize_row_cols(accr, s.xs[r], &self.q, c0..c1, &mut s.out[..n]);
                    for (d, &v) in yr.iter_mut().zip(&s.out[..n]) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// Per-thread buffers, grown on demand and kept (rayon's threads live as long as their pool).
#[derive(Default)]
struct Scratch {
    a: Vec<u32>,
    tmp: Vec<i8>,
    row: Vec<f32>,
    out: Vec<f32>,
    acc: Vec<i32>,
    xs: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The largest size each per-thread buffer has needed so far (any thread, any layer), by the
/// buffer's address in [`Scratch`] order: a, tmp, row, out, acc, xs.
static HIGH_WATER: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];

/// Grows `v` to `n` values, noting `n` as the high-water mark `i`.
fn grow<T: Default + Clone>(i: usize, v: &mut Vec<T>, n: usize) {
    HIGH_WATER[i].fetch_max(n, Ordering::Relaxed);
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Grows the calling thread's buffers to the largest sizes any call has needed so far. Run on
/// every thread of a pool after a first pass (`ThreadPool::broadcast`), it makes the following
/// passes with the same shapes allocation-free whichever thread runs which block.
pub fn reserve_thread_scratch() {
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let hw = |i: usize| HIGH_WATER[i].load(Ordering::Relaxed);
        grow(0, &mut s.a, hw(0));
        grow(1, &mut s.tmp, hw(1));
        grow(2, &mut s.row, hw(2));
        grow(3, &mut s.out, hw(3));
        grow(4, &mut s.acc, hw(4));
        grow(5, &mut s.xs, hw(5));
    });
}

impl Linear for CpuInt8Linear {
    fn n_in(&self) -> usize {
        self.n_in
    }

    fn n_out(&self) -> usize {
        self.n_out
    }

    fn forward(&self, x: ArrayView2<f32>, mut y: ArrayViewMut2<f32>) {
        let (rows, n_in) = x.dim();
        assert_eq!(n_in, self.n_in, "input width");
        assert_eq!(y.dim(), (rows, self.n_out), "output shape");
        if rows == 0 || self.n_out == 0 {
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        let nr = self.kernel.nr();
        let panels = self.n_pad / nr;
        let all = 0..panels;
        let run = |p: std::ops::Range<usize>, xb: ArrayView2<f32>, yb: ArrayViewMut2<f32>| {
            SCRATCH.with(|s| self.block(p, xb, yb, &mut s.borrow_mut()))
        };
        if rows >= 2 * self.kernel.mr() * threads || self.kernel == Int8Kernel::Portable {
            // About four blocks per thread: enough to balance, few enough that each block reuses
            // a weight panel over many rows.
            let block = rows.div_ceil(4 * threads).clamp(1, 96);
            if block >= rows {
                return run(all, x, y);
            }
            x.axis_chunks_iter(Axis(0), block)
                .into_par_iter()
                .zip(y.axis_chunks_iter_mut(Axis(0), block).into_par_iter())
                .for_each(|(xb, yb)| run(all.clone(), xb, yb));
        } else if threads > 1 && panels > 1 {
            // Few rows (the decoder's tokens): split the output channels, a few panels per task.
            let per = panels.div_ceil(4 * threads);
            y.axis_chunks_iter_mut(Axis(1), per * nr)
                .into_par_iter()
                .enumerate()
                .for_each(|(i, yb)| run(i * per..((i + 1) * per).min(panels), x, yb));
        } else {
            run(all, x, y);
        }
    }
}

/// One tile: `c[i][0..nr] = sum_g a[g][i] . panel[g][0..nr] - corr[0..nr]` for the tile's `w`
/// rows, `c` with row stride `ldc`.
///
/// # Safety
/// The kernel's instructions must be available; `a` must hold `w * kg` groups, `panel`
/// `nr * kg` groups, `corr` `nr` values and `c` `(w - 1) * ldc + nr` values.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    kernel: Int8Kernel,
    w: usize,
    a: &[u32],
    panel: &[u8],
    kg: usize,
    corr: &[i32],
    c: &mut [i32],
    ldc: usize,
) {
    let nr = kernel.nr();
    debug_assert!(a.len() >= w * kg);
    debug_assert!(panel.len() >= nr * kg * 4);
    debug_assert!(corr.len() >= nr && c.len() >= (w - 1) * ldc + nr);
    let (a, b, cr, cp) = (a.as_ptr(), panel.as_ptr(), corr.as_ptr(), c.as_mut_ptr());
    macro_rules! by_rows {
        ($f:ident, $b:expr, $cr:expr, $cp:expr; $($m:literal)*) => {
            match w {
                $($m => $f::<$m>(a, $b, kg, $cr, $cp, ldc),)*
                _ => unreachable!("tile rows {w}"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    match kernel {
        Int8Kernel::Avx512Vnni => by_rows!(vnni512, b, cr, cp; 1 2 3 4 5 6 7 8 9 10 11 12),
        Int8Kernel::AvxVnni => {
            by_rows!(avxvnni, b, cr, cp; 1 2 3 4 5 6);
            by_rows!(avxvnni, b.add(64), cr.add(16), cp.add(16); 1 2 3 4 5 6)
        }
        Int8Kernel::Avx2 => by_rows!(avx2, b, cr, cp; 1 2 3 4 5 6),
        Int8Kernel::Portable => unreachable!("the portable kernel has no tiles"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("only the portable kernel exists here");
}

/// AVX-512 VNNI tile: MR rows x 32 columns; per input group 4 bytes of each row (u8, +128) and
/// 128 bytes of the panel (32 columns x 4 int8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni512<const MR: usize>(
    a: *const u32,
    b: *const u8,
    kg: usize,
    corr: *const i32,
    c: *mut i32,
    ldc: usize,
) {
    let mut acc0 = [_mm512_setzero_si512(); MR];
    let mut acc1 = [_mm512_setzero_si512(); MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kg {
        let b0 = _mm512_loadu_si512(b as *const _);
        let b1 = _mm512_loadu_si512(b.add(64) as *const _);
        for i in 0..MR {
            let av = _mm512_set1_epi32(*a.add(i) as i32);
            acc0[i] = _mm512_dpbusd_epi32(acc0[i], av, b0);
            acc1[i] = _mm512_dpbusd_epi32(acc1[i], av, b1);
        }
        a = a.add(MR);
        b = b.add(128);
    }
    let c0 = _mm512_loadu_si512(corr as *const _);
    let c1 = _mm512_loadu_si512(corr.add(16) as *const _);
    for i in 0..MR {
        let row = c.add(i * ldc);
        _mm512_storeu_si512(row as *mut _, _mm512_sub_epi32(acc0[i], c0));
        _mm512_storeu_si512(row.add(16) as *mut _, _mm512_sub_epi32(acc1[i], c1));
    }
}

/// AVX-VNNI half tile: MR rows x 16 columns (the first or second half of a 32-column panel,
/// `b` pointing at its first 64 bytes; groups are 128 bytes apart).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avxvnni<const MR: usize>(
    a: *const u32,
    b: *const u8,
    kg: usize,
    corr: *const i32,
    c: *mut i32,
    ldc: usize,
) {
    let mut acc0 = [_mm256_setzero_si256(); MR];
    let mut acc1 = [_mm256_setzero_si256(); MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kg {
        let b0 = _mm256_loadu_si256(b as *const __m256i);
        let b1 = _mm256_loadu_si256(b.add(32) as *const __m256i);
        for i in 0..MR {
            let av = _mm256_set1_epi32(*a.add(i) as i32);
            acc0[i] = _mm256_dpbusd_avx_epi32(acc0[i], av, b0);
            acc1[i] = _mm256_dpbusd_avx_epi32(acc1[i], av, b1);
        }
        a = a.add(MR);
        b = b.add(128);
    }
    let c0 = _mm256_loadu_si256(corr as *const __m256i);
    let c1 = _mm256_loadu_si256(corr.add(8) as *const __m256i);
    for i in 0..MR {
        let row = c.add(i * ldc);
        _mm256_storeu_si256(row as *mut __m256i, _mm256_sub_epi32(acc0[i], c0));
        _mm256_storeu_si256(row.add(8) as *mut __m256i, _mm256_sub_epi32(acc1[i], c1));
    }
}

/// AVX2 tile: MR rows x 16 columns of int16 products; per input pair 2 int16 of each row and
/// 64 bytes of the panel (16 columns x 2 int16). `corr` is zero (signed operands).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<const MR: usize>(
    a: *const u32,
    b: *const u8,
    kg: usize,
    _corr: *const i32,
    c: *mut i32,
    ldc: usize,
) {
    let mut acc0 = [_mm256_setzero_si256(); MR];
    let mut acc1 = [_mm256_setzero_si256(); MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kg {
        let b0 = _mm256_loadu_si256(b as *const __m256i);
        let b1 = _mm256_loadu_si256(b.add(32) as *const __m256i);
        for i in 0..MR {
            let av = _mm256_set1_epi32(*a.add(i) as i32);
            acc0[i] = _mm256_add_epi32(acc0[i], _mm256_madd_epi16(av, b0));
            acc1[i] = _mm256_add_epi32(acc1[i], _mm256_madd_epi16(av, b1));
        }
        a = a.add(MR);
        b = b.add(64);
    }
    for i in 0..MR {
        let row = c.add(i * ldc);
        _mm256_storeu_si256(row as *mut __m256i, acc0[i]);
        _mm256_storeu_si256(row.add(8) as *mut __m256i, acc1[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npu::test_data::pseudo;
    use ndarray::{s, Array2, ShapeBuilder};

    /// The quant.rs definition: quantize, reference GEMM, dequantize.
    fn reference(
        x: ArrayView2<f32>,
        w: ArrayView2<f32>,
        b: Option<ArrayView1<f32>>,
    ) -> Array2<f32> {
        let (rows, k) = x.dim();
        let qw = quant::quantize_weight(w, b);
        let mut qx = vec![0i8; rows * k];
        let mut xs = vec![0f32; rows];
        quant::quantize_rows(x, &mut qx, &mut xs);
        let mut acc = vec![0i32; rows * qw.n_out];
        quant::gemm_i8_reference(&qx, &qw.data, rows, k, qw.n_out, &mut acc);
        let mut y = Array2::zeros((rows, qw.n_out));
        quant::dequantize(&acc, &xs, &qw, y.view_mut());
        y
    }

    fn assert_bits_eq(a: &Array2<f32>, b: &Array2<f32>, what: &str) {
        assert_eq!(a.dim(), b.dim(), "{what}: shape");
        for ((i, &x), &y) in a.indexed_iter().zip(b.iter()) {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "{what}: element {i:?}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn every_kernel_matches_the_reference_bit_for_bit() {
        let kernels = Int8Kernel::available();
        assert_eq!(*kernels.last().unwrap(), Int8Kernel::Portable);
        println!("int8 kernels on this CPU: {kernels:?}");
        let shapes = [
            (1usize, 1usize, 1usize),
            (3, 5, 7),
            (13, 17, 33),
            (12, 64, 32),
            (25, 240, 96),
            (37, 130, 65),
            (100, 512, 48),
            (7, 1537, 31),
            (64, 2048, 40),
        ];
        for (si, &(rows, k, n)) in shapes.iter().enumerate() {
            let x = pseudo(rows, k, si as u32 * 3 + 1);
            // Outliers in some rows and channels, so the scales differ a lot.
            let mut w = pseudo(n, k, si as u32 * 3 + 2);
            w[[n / 2, k / 3]] = 9.0;
            let mut x = x;
            x[[rows / 2, 0]] = -40.0;
            let bias = pseudo(1, n, si as u32 * 3 + 3).row(0).to_owned();
            for b in [None, Some(bias.view())] {
                let want = reference(x.view(), w.view(), b);
                for &kern in &kernels {
                    let e = CpuInt8Engine::with_kernel(kern).unwrap();
                    let lin = e.prepare(w.view(), b);
                    assert_eq!((lin.n_in(), lin.n_out()), (k, n));
                    let mut y = Array2::from_elem((rows, n), f32::NAN);
                    lin.forward(x.view(), y.view_mut());
                    assert_bits_eq(&y, &want, &format!("{kern:?} {rows}x{k}x{n}"));
                    // Inside a 2-thread pool too (blocks of rows in parallel).
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(2)
                        .build()
                        .unwrap();
                    let mut y2 = Array2::from_elem((rows, n), f32::NAN);
                    pool.install(|| lin.forward(x.view(), y2.view_mut()));
                    assert_bits_eq(&y2, &want, &format!("{kern:?} {rows}x{k}x{n} pool"));
                }
            }
        }
    }

    #[test]
    fn random_shapes_and_strided_views() {
        let mut st = 12345u32;
        let mut next = |m: u32| {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            st % m
        };
        for case in 0..24 {
            let rows = 1 + next(70) as usize;
            let k = 1 + next(300) as usize;
            let n = 1 + next(80) as usize;
            let big = pseudo(2 * rows + 3, k + 5, case);
            // A strided view (every other row, offset columns) and a transposed-layout one.
            let x = big.slice(s![1..2 * rows + 1;2, 2..k + 2]);
            let xt = x.t().to_owned();
            let xt = xt.t();
            let w = pseudo(n, k, case + 100);
            let want = reference(x, w.view(), None);
            for kern in Int8Kernel::available() {
                let lin = CpuInt8Engine::with_kernel(kern)
                    .unwrap()
                    .prepare(w.view(), None);
                for xv in [x, xt] {
                    let mut yb = Array2::from_elem((n, rows), f32::NAN);
                    // Output as a transposed (column-major) view.
                    lin.forward(xv, yb.view_mut().reversed_axes());
                    assert_bits_eq(
                        &yb.t().to_owned(),
                        &want,
                        &format!("{kern:?} case {case}: {rows}x{k}x{n}"),
                    );
                }
            }
        }
    }

    #[test]
    fn overlapping_input_rows() {
        // Row stride 5 < 40 columns, as the encoder's convolutions read their input.
        let flat = pseudo(1, 5 * 70 + 40, 77).into_raw_vec_and_offset().0;
        let x = ArrayView2::from_shape((71, 40).strides((5, 1)), &flat[..]).unwrap();
        let w = pseudo(50, 40, 78);
        let want = reference(x, w.view(), None);
        for kern in Int8Kernel::available() {
            let lin = CpuInt8Engine::with_kernel(kern)
                .unwrap()
                .prepare(w.view(), None);
            let mut y = Array2::from_elem((71, 50), f32::NAN);
            lin.forward(x, y.view_mut());
            assert_bits_eq(&y, &want, &format!("{kern:?} overlapping rows"));
        }
    }

    #[test]
    fn zero_width_and_zero_rows() {
        for kern in Int8Kernel::available() {
            let e = CpuInt8Engine::with_kernel(kern).unwrap();
            let w = Array2::<f32>::zeros((5, 0));
            let b = ndarray::arr1(&[1.0f32, 2.0, 3.0, 4.0, 5.0]);
            let lin = e.prepare(w.view(), Some(b.view()));
            let x = Array2::<f32>::zeros((3, 0));
            let mut y = Array2::from_elem((3, 5), f32::NAN);
            lin.forward(x.view(), y.view_mut());
            assert!(y.rows().into_iter().all(|r| r == b), "{kern:?}");
            let x = Array2::<f32>::zeros((0, 0));
            let mut y = Array2::<f32>::zeros((0, 5));
            lin.forward(x.view(), y.view_mut());
        }
    }

    #[test]
    fn engine_reports_cpu_int8() {
        let e = CpuInt8Engine::new();
        assert_eq!(e.backend(), BackendKind::Cpu);
        assert_eq!(e.precision(), Precision::Int8);
        assert!(e.kernel().is_available());
    }
}

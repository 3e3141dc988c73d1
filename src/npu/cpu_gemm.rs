//! Float32 GEMM with a pre-packed right-hand side, AVX-512F: `c = a w^T (+ bias)` for the
//! encoder's linear layers, whose weights are fixed.
//!
//! The weight (n x k) is packed once, at load, into panels of [`NR`] = 32 output columns: for every
//! input index, the panel's 32 weights side by side (two zmm). The microkernel keeps a tile of
//! up to 12 rows x 32 columns in 24 zmm accumulators, broadcasting the rows' values from a packed
//! copy (by groups of 16 inputs, each row's 16 values contiguous: the packing is plain 64-byte
//! copies, and with the kernel unrolled by 16 every broadcast is one pointer plus a constant, so
//! no address arithmetic competes with the FMAs) against the panel's two vectors. Blocking: [`KC`] inputs at
//! a time, so the panel's slice (KC x 32 floats, 32 KiB) stays in L1 while the kernel walks down
//! all the rows of the call; the output tile is written once per KC block (initialised with the
//! bias in the first).
//!
//! [`gemm`] is single-threaded; callers split the rows between threads (each thread then streams
//! the whole weight, which costs little next to the products: a 512 x 2048 weight is 4 MiB per
//! 128 rows x 1 GFLOP).
//!
//! Why not the `gemm` crate for these products: it packs both operands on every call; with the
//! weights pre-packed, and the bias folded into the first store, this kernel spends its time in
//! FMAs. [`super::cpu`] measures and documents the choice.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Output columns per packed panel.
pub const NR: usize = 32;
/// Rows per microkernel tile.
pub const MR: usize = 12;
/// Inputs per cache block.
pub const KC: usize = 256;
/// Inputs per group of the packed rows (and the kernel's unrolling).
const KU: usize = 16;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight `n x k` packed into panels of [`NR`] columns.
#[derive(Clone, Debug)]
pub struct PackedWeight {
    pub n: usize,
    pub k: usize,
    /// `panels x k x NR`, zero in the padding columns.
    data: Vec<f32>,
}

impl PackedWeight {
    /// Packs `w[o][i]` (n x k, any strides, through the accessor).
    pub fn new(n: usize, k: usize, w: impl Fn(usize, usize) -> f32) -> PackedWeight {
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for p in 0..panels {
            for c in 0..NR.min(n - p * NR) {
                let o = p * NR + c;
                for i in 0..k {
                    data[(p * k + i) * NR + c] = w(o, i);
                }
            }
        }
        PackedWeight { n, k, data }
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// The length of the scratch [`gemm`] needs for `m` rows of `k` inputs.
pub fn pack_len(m: usize, k: usize) -> usize {
    m * KC.min(k.max(1)).next_multiple_of(KU)
}

/// `c[r][o] = sum_i a[r][i] w[o][i] + bias[o]` for rows `0..m`, single-threaded. `a` is
/// row-major with row stride `lda` (unit column stride), `c` likewise with `ldc`; `scratch`
/// holds the packed rows (grown on demand).
///
/// For every block of [`KC`] inputs, the rows' slices are packed tile by tile (12 rows
/// interleaved per input), then for every panel the kernel walks down the tiles: the panel's
/// KC x 32 slice stays in L1, the packed rows in L2.
///
/// # Panics
/// If the CPU lacks AVX-512F, or a slice is too short for the shapes.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    scratch: &mut Vec<f32>,
) {
    assert!(available(), "cpu_gemm needs AVX-512F");
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && (m - 1) * lda + k <= a.len(), "a too small");
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "c too small");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias length");
    }
    // SAFETY: AVX-512F checked; the shapes of a, c and bias were checked above.
    unsafe {
        gemm_raw(
            a.as_ptr(),
            lda,
            m,
            w,
            bias,
            0..w.panels(),
            c.as_mut_ptr(),
            ldc,
            scratch,
        )
    }
}

/// [`gemm`] on raw pointers, for the output columns of `panels` only (panel `p` holds columns
/// `32 p .. 32 p + 32`); `c` points to the first of them (column `32 panels.start`).
///
/// # Safety
/// AVX-512F must be available; `a` must point to `m` rows of `w.k` readable values (row stride
/// `lda`), `c` to `m` rows of the panels' columns (up to column `w.n`), writable, with row stride
/// `ldc`, that nothing else accesses during the call; `bias`, if any, must hold `w.n` values;
/// `panels` must lie within `0..w.panels()`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_raw(
    a: *const f32,
    lda: usize,
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    scratch: &mut Vec<f32>,
) {
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 || panels.is_empty() {
        return;
    }
    // Packed rows: per KC block, tile after tile, each tile as [16-input group][row][16].
    let need = pack_len(m, k);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (ap, cp, wp, sp) = (a, c, w.data.as_ptr(), scratch.as_mut_ptr());
        let mut k0 = 0;
        loop {
            let kc = KC.min(k - k0);
            let kcp = kc.next_multiple_of(KU);
            let first = k0 == 0;
            // Pack: tile t (rows r = t*MR ..) at sp + r*kcp; in it, group g (inputs 16g ..) holds
            // the tile's rows one after the other, 16 values each (zero past kc): plain 64-byte
            // copies, and the kernel finds a[i][16g + u] at a fixed offset (16 i + u).
            let mut r = 0;
            while r < m {
                let rows = MR.min(m - r);
                let dst = sp.add(r * kcp);
                for g in 0..kcp / KU {
                    let n_in = KU.min(kc - g * KU);
                    for i in 0..rows {
                        let src = ap.add((r + i) * lda + k0 + g * KU);
                        let d = dst.add((g * rows + i) * KU);
                        std::ptr::copy_nonoverlapping(src, d, n_in);
                        std::ptr::write_bytes(d.add(n_in), 0, KU - n_in);
                    }
                }
                r += rows;
            }
            for p in panels.clone() {
                let cols = NR.min(n - p * NR);
                let masks = col_masks(cols);
                let panel = wp.add((p * k + k0) * NR);
                let bias_p = bias.map(|b| b.as_ptr().add(p * NR));
                let init = if first {
                    Init::Bias(bias_p)
                } else {
                    Init::Load
                };
                let mut r = 0;
                while r < m {
                    let rows = MR.min(m - r);
                    tile(
                        rows,
                        sp.add(r * kcp),
                        panel,
                        kc,
                        cp.add(r * ldc + (p - panels.start) * NR),
                        ldc,
                        init,
                        masks,
                    );
                    r += rows;
                }
            }
            k0 += kc;
            if k0 >= k {
                break;
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Init {
    /// First K block: start from the bias (or zero).
    Bias(Option<*const f32>),
    /// Later blocks: start from what c holds.
    Load,
}

#[cfg(target_arch = "x86_64")]
fn col_masks(cols: usize) -> [__mmask16; 2] {
    let bits = |c: usize| -> __mmask16 {
        if c >= 16 {
            0xffff
        } else {
            ((1u32 << c) - 1) as __mmask16
        }
    };
    [bits(cols), bits(cols.saturating_sub(16))]
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile(
    rows: usize,
    a: *const f32,
    b: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
    masks: [__mmask16; 2],
) {
    macro_rules! go {
        ($($m:literal)*) => {
            match rows {
                $($m => kernel::<$m>(a, b, kc, c, ldc, init, masks),)*
                _ => unreachable!("tile rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// R rows x 32 columns over `kc` inputs; `a` is the packed tile (groups of 16 inputs, in each the
/// R rows' 16 values one row after the other).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize>(
    a: *const f32,
    b: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
    masks: [__mmask16; 2],
) {
    let [m0, m1] = masks;
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    match init {
        Init::Bias(Some(bias)) => {
            let b0 = _mm512_maskz_loadu_ps(m0, bias);
            let b1 = _mm512_maskz_loadu_ps(m1, bias.add(16));
            for i in 0..R {
                acc0[i] = b0;
                acc1[i] = b1;
            }
        }
        Init::Bias(None) => {}
        Init::Load => {
            for i in 0..R {
                acc0[i] = _mm512_maskz_loadu_ps(m0, c.add(i * ldc));
                acc1[i] = _mm512_maskz_loadu_ps(m1, c.add(i * ldc + 16));
            }
        }
    }
    // a: groups of KU inputs, [row][KU] each; b: one NR-wide row per input.
    let (mut ap, mut bp) = (a, b);
    for _ in 0..kc / KU {
        for u in 0..KU {
            let b0 = _mm512_loadu_ps(bp.add(u * NR));
            let b1 = _mm512_loadu_ps(bp.add(u * NR + 16));
            for i in 0..R {
                let av = _mm512_set1_ps(*ap.add(i * KU + u));
                acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
                acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
            }
        }
        ap = ap.add(R * KU);
        bp = bp.add(KU * NR);
    }
    for u in 0..kc % KU {
        let b0 = _mm512_loadu_ps(bp.add(u * NR));
        let b1 = _mm512_loadu_ps(bp.add(u * NR + 16));
        for i in 0..R {
            let av = _mm512_set1_ps(*ap.add(i * KU + u));
            acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
        }
    }
    for i in 0..R {
        _mm512_mask_storeu_ps(c.add(i * ldc), m0, acc0[i]);
        _mm512_mask_storeu_ps(c.add(i * ldc + 16), m1, acc1[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        if !available() {
            eprintln!("no AVX-512F: cpu_gemm not tested here");
            return;
        }
        let mut st = 7u32;
        let mut rnd = || {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            (st % 20001) as f32 / 10000.0 - 1.0
        };
        for &(m, k, n) in &[
            (1usize, 1usize, 1usize),
            (5, 3, 40),
            (13, 300, 33),
            (24, 256, 64),
            (30, 513, 95),
            (100, 1000, 17),
        ] {
            let lda = k + 3;
            let ldc = n + 5;
            let a: Vec<f32> = (0..m * lda).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let pw = PackedWeight::new(n, k, |o, i| w[o * k + i]);
            let mut scratch = Vec::new();
            for with_bias in [false, true] {
                let mut c = vec![f32::NAN; m * ldc];
                let b = with_bias.then_some(&bias[..]);
                gemm(&a, lda, m, &pw, b, &mut c, ldc, &mut scratch);
                for r in 0..m {
                    for o in 0..n {
                        let want: f64 = (0..k)
                            .map(|i| a[r * lda + i] as f64 * w[o * k + i] as f64)
                            .sum::<f64>()
                            + if with_bias { bias[o] as f64 } else { 0.0 };
                        let got = c[r * ldc + o] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{m}x{k}x{n} r={r} o={o}: {got} vs {want}"
                        );
                    }
                    // The padding between rows is untouched.
                    for o in n..ldc.min(n + 5) {
                        if r + 1 < m {
                            assert!(c[r * ldc + o].is_nan(), "wrote past the columns");
                        }
                    }
                }
            }
        }
    }
}

//! Float32 GEMM with a pre-packed right-hand side, AVX-512F (here) or AVX2 + FMA ([`avx2`]):
//! `c = a w^T (+ bias)` for the encoder's linear layers, whose weights are fixed.
//!
//! The weight (n x k) is packed once, at load, into panels of [`NR`] = 32 output columns: for every
//! input index, the panel's 32 weights side by side (two zmm), from a 64-byte boundary. The
//! microkernel keeps a tile of up to 12 rows x 32 columns in 24 zmm accumulators, broadcasting
//! the rows' values from a packed copy (by groups of 16 inputs, each row's 16 values contiguous:
//! the packing is one 64-byte load and store per row and group) against the panel's two vectors.
//! Blocking: [`KC`] inputs at a time, so the panel's slice (KC x 32 floats, 32 KiB) stays in L1
//! while the kernel walks down all the rows of the call; the output tile is written once per KC
//! block (initialised with the bias in the first; GELU applied in the last, if asked).
//!
//! The weights are read once per window each, so they come from L3 or memory: while the kernel
//! walks a panel, it prefetches the next panel's slice into L2, a few lines between its FMAs.
//! Without that, the first row tile of every panel waited for its lines (products ~25% slower
//! than with warm weights; with the prefetch, within ~5-10%).
//!
//! [`gemm`] is single-threaded; callers split the rows between threads (each thread then streams
//! the whole weight, which costs little next to the products: a 512 x 2048 weight is 4 MiB per
//! 256 rows x 2 GFLOP).
//!
//! Why not the `gemm` crate for these products: it packs both operands on every call; with the
//! weights pre-packed, and the bias folded into the first store, this kernel spends its time in
//! FMAs. The measurements behind the choice are in `benches/README.md`.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

mod avx2;
mod prefetch;

use super::cpu_math::{self, Isa};
use prefetch::{Prefetch, LINE};

/// Output columns per packed panel.
pub const NR: usize = 32;
/// Rows per microkernel tile.
pub const MR: usize = 12;
/// Inputs per cache block.
pub const KC: usize = 256;
/// Inputs per group of the packed rows (and the kernel's unrolling).
const KU: usize = 16;

/// Whether this CPU runs one of the kernels (AVX-512F, or AVX2 + FMA: the element-wise
/// kernels' instruction sets, [`cpu_math::isa`]).
pub fn available() -> bool {
    cpu_math::isa() != Isa::Scalar
}

/// Whether the AVX-512 kernel runs here (else the AVX2 one).
fn has_avx512() -> bool {
    cpu_math::isa() == Isa::Avx512
}

/// Whether the AVX2 + FMA kernel can run here (on an AVX-512 CPU too, as the tests force it).
#[cfg(test)]
fn has_avx2() -> bool {
    cpu_math::supports(Isa::Avx2)
}

/// A weight `n x k` packed into panels of [`NR`] columns.
#[derive(Clone, Debug)]
pub struct PackedWeight {
    pub n: usize,
    pub k: usize,
    /// `panels x k x NR` values, zero in the padding columns.
    panels: Panels,
}

/// How a packed weight's values are stored.
#[derive(Clone, Debug)]
enum Panels {
    /// As f32, from `data[off]`: the first 64-byte boundary. A large `Vec` starts 16 bytes past
    /// one (malloc's header), and then every 64-byte load of the kernel would straddle two cache
    /// lines (~3% of the kernel's rate).
    F32 { data: Vec<f32>, off: usize },
    /// As IEEE half floats (bits), from `data[off]` (a 64-byte boundary): only for weights whose
    /// every value is a half float exactly, which the model's fp16 weights are. The kernel widens
    /// them to f32 as it loads them (exact), so the products are bit for bit those of the f32
    /// panels with half the bytes to read.
    F16 { data: Vec<u16>, off: usize },
}

impl PackedWeight {
    /// Packs `w[o][i]` (n x k, any strides, through the accessor) as f32.
    pub fn new(n: usize, k: usize, w: impl Fn(usize, usize) -> f32) -> PackedWeight {
        let (data, off) = pack(n, k, 16, 0.0, w);
        PackedWeight {
            n,
            k,
            panels: Panels::F32 { data, off },
        }
    }

    /// Packs `w` as half floats when this CPU widens them in the kernel (F16C) and every value
    /// is one exactly, else as f32 ([`Self::new`]): the same products from half the memory,
    /// for weights whose products are bound by reading them (few rows a call, as the decoder's
    /// token-by-token steps).
    pub fn compact(n: usize, k: usize, w: impl Fn(usize, usize) -> f32) -> PackedWeight {
        if !has_f16c() {
            return PackedWeight::new(n, k, w);
        }
        // One pass: pack the half floats, noting any value that is not one.
        let inexact = std::cell::Cell::new(false);
        let (data, off) = pack(n, k, 32, 0u16, |o, i| {
            let v = w(o, i);
            let h = half::f16::from_f32(v);
            if h.to_f32().to_bits() != v.to_bits() {
                inexact.set(true);
            }
            h.to_bits()
        });
        if inexact.get() {
            return PackedWeight::new(n, k, w);
        }
        PackedWeight {
            n,
            k,
            panels: Panels::F16 { data, off },
        }
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Whether the values are stored as half floats ([`Self::compact`]).
    pub fn is_half(&self) -> bool {
        matches!(self.panels, Panels::F16 { .. })
    }

    /// The f32 panels; `None` for half floats.
    fn f32_ptr(&self) -> Option<*const f32> {
        match &self.panels {
            Panels::F32 { data, off } => Some(data[*off..].as_ptr()),
            Panels::F16 { .. } => None,
        }
    }

    /// The half-float panels (bits); `None` for f32.
    fn f16_ptr(&self) -> Option<*const u16> {
        match &self.panels {
            Panels::F16 { data, off } => Some(data[*off..].as_ptr()),
            Panels::F32 { .. } => None,
        }
    }
}

/// Packs `w[o][i]` into panels of [`NR`] columns (`panels x k x NR`, `zero` in the padding
/// columns) from the first 64-byte boundary of the returned vector (at most `slack` values in).
fn pack<T: Copy>(
    n: usize,
    k: usize,
    slack: usize,
    zero: T,
    w: impl Fn(usize, usize) -> T,
) -> (Vec<T>, usize) {
    let panels = n.div_ceil(NR);
    let len = panels * k * NR;
    let mut data = vec![zero; len + slack];
    let off = data.as_ptr().align_offset(64).min(slack);
    for p in 0..panels {
        for c in 0..NR.min(n - p * NR) {
            let o = p * NR + c;
            for i in 0..k {
                data[off + (p * k + i) * NR + c] = w(o, i);
            }
        }
    }
    (data, off)
}

/// Whether this CPU runs the AVX2 kernel on half-float panels (AVX2 + FMA + F16C).
fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu_math::supports(Isa::Avx2) && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of the next tile when `left` rows remain: [`MR`], except that a last tile of under
/// MR / 2 rows is avoided by splitting the last MR + a few rows in two (e.g. 16 as 8 + 8): a
/// 4-row tile has only 8 accumulators, too few to hide the FMA latency.
#[inline]
fn tile_rows(left: usize) -> usize {
    if left > MR && left < MR + MR / 2 {
        left.div_ceil(2)
    } else {
        left.min(MR)
    }
}

/// Tiles [`tile_rows`] cuts `m` rows into.
fn n_tiles(m: usize) -> usize {
    let (mut r, mut t) = (0, 0);
    while r < m {
        r += tile_rows(m - r);
        t += 1;
    }
    t
}

/// The length of the scratch [`gemm`] needs for `m` rows of `k` inputs.
pub fn pack_len(m: usize, k: usize) -> usize {
    // + 16: room to start the packed rows on a 64-byte boundary.
    m * KC.min(k.max(1)).next_multiple_of(KU) + 16
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
/// If the CPU has neither AVX-512F nor AVX2 + FMA, or a slice is too short for the shapes.
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
    assert!(available(), "cpu_gemm needs AVX-512F or AVX2 + FMA");
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && (m - 1) * lda + k <= a.len(), "a too small");
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "c too small");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias length");
    }
    // SAFETY: a kernel's instructions checked; the shapes of a, c and bias were checked above.
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
            false,
        )
    }
}

/// [`gemm`] on raw pointers, for the output columns of `panels` only (panel `p` holds columns
/// `32 p .. 32 p + 32`); `c` points to the first of them (column `32 panels.start`).
///
/// # Safety
/// [`available`] must hold; `a` must point to `m` rows of `w.k` readable values (row stride
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
    gelu: bool,
) {
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 || panels.is_empty() {
        return;
    }
    let Some(wp) = w.f32_ptr().filter(|_| has_avx512()) else {
        // SAFETY: `available` holds (the caller's contract) without AVX-512: AVX2 + FMA; half
        // floats are only packed where F16C is there too ([`PackedWeight::compact`]).
        return avx2::gemm_raw(a, lda, m, w, bias, panels, c, ldc, scratch, gelu);
    };
    // Packed rows: per KC block, tile after tile, each tile as [16-input group][row][16].
    let need = pack_len(m, k);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    #[cfg(target_arch = "x86_64")]
    {
        // 64-byte aligned, so that the packing's stores do not straddle cache lines.
        let sp = scratch.as_mut_ptr();
        let sp = sp.add(sp.align_offset(64).min(16));
        let cp = c;
        let tiles = n_tiles(m);
        let mut k0 = 0;
        loop {
            let kc = KC.min(k - k0);
            let kcp = kc.next_multiple_of(KU);
            let first = k0 == 0;
            // GELU, if asked, on the last K block's results, in registers before the store: no
            // second pass over the output.
            let gelu = gelu && k0 + kc >= k;
            pack_rows(a, lda, m, k0, kc, sp);
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
                // The weight streams from L3 or memory (each layer's is used once per window):
                // the first row tile of a panel would wait for every line of it (~25% of the
                // product's time, measured with cold weights). So the next panel's slice (or the
                // next K block's first) is prefetched into L2, a share by each row tile's kernel.
                let (next_at, next_kc) = next_slice(&panels, p, k, k0, kc);
                let next = wp.add(next_at).cast::<u8>();
                let lines = next_kc * NR * std::mem::size_of::<f32>() / LINE;
                let mut r = 0;
                for t in 0..tiles {
                    let pf = Prefetch::share(next, lines, t, tiles);
                    let rows = tile_rows(m - r);
                    tile(
                        rows,
                        sp.add(r * kcp),
                        panel,
                        kc,
                        cp.add(r * ldc + (p - panels.start) * NR),
                        ldc,
                        init,
                        masks,
                        pf,
                        gelu,
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

/// What to prefetch while panel `p` of the K block `k0 .. k0 + kc` is walked: the next panel's
/// slice of the block, or else the next block's first panel's; as its offset (in values) in the
/// packed weight and its inputs (0 when nothing is left).
fn next_slice(
    panels: &std::ops::Range<usize>,
    p: usize,
    k: usize,
    k0: usize,
    kc: usize,
) -> (usize, usize) {
    if p + 1 < panels.end {
        (((p + 1) * k + k0) * NR, kc)
    } else if k0 + kc < k {
        ((panels.start * k + k0 + kc) * NR, KC.min(k - k0 - kc))
    } else {
        (0, 0)
    }
}

/// Packs inputs `k0 .. k0 + kc` of the `m` rows of `a` into `dst`: tile t (rows r = t*MR ..) at
/// `dst + r * kcp`; in it, group g (inputs 16g ..) holds the tile's rows one after the other, 16
/// values each (zero past kc), so the kernel finds `a[i][16g + u]` at a fixed offset (16 i + u).
/// One 64-byte load and store per row and group (a `copy_nonoverlapping` of a variable length
/// was a call to memmove each, ~2% of the encoder).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_rows(a: *const f32, lda: usize, m: usize, k0: usize, kc: usize, dst: *mut f32) {
    let kcp = kc.next_multiple_of(KU);
    let groups = kcp / KU;
    let tail: __mmask16 = if kc.is_multiple_of(KU) {
        0xffff
    } else {
        ((1u32 << (kc % KU)) - 1) as __mmask16
    };
    let mut r = 0;
    while r < m {
        let rows = tile_rows(m - r);
        let d = dst.add(r * kcp);
        for i in 0..rows {
            let src = a.add((r + i) * lda + k0);
            for g in 0..groups {
                let mask = if g + 1 == groups { tail } else { 0xffff };
                let v = _mm512_maskz_loadu_ps(mask, src.add(g * KU));
                _mm512_storeu_ps(d.add((g * rows + i) * KU), v);
            }
        }
        r += rows;
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
    pf: Prefetch,
    gelu: bool,
) {
    macro_rules! go {
        ($($m:literal)*) => {
            match rows {
                $($m => kernel::<$m>(a, b, kc, c, ldc, init, masks, pf, gelu),)*
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
    pf: Prefetch,
    gelu: bool,
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
    let groups = kc / KU;
    let mut pf = pf.spread(groups);
    for g in 0..groups {
        pf.before_group(g);
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
    pf.rest();
    for u in 0..kc % KU {
        let b0 = _mm512_loadu_ps(bp.add(u * NR));
        let b1 = _mm512_loadu_ps(bp.add(u * NR + 16));
        for i in 0..R {
            let av = _mm512_set1_ps(*ap.add(i * KU + u));
            acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
        }
    }
    if gelu {
        for i in 0..R {
            acc0[i] = crate::npu::cpu_math::gelu512(acc0[i]);
            acc1[i] = crate::npu::cpu_math::gelu512(acc1[i]);
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
        assert!(
            available(),
            "every x86-64 CPU this project supports has AVX2 + FMA"
        );
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
            // Tails split in two (16 = 8 + 8, 256 = 20 x 12 + 8 + 8).
            (16, 37, 64),
            (256, 20, 40),
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
                // The AVX2 kernel (the same as `gemm` without AVX-512) gives the same bits.
                let mut c2 = vec![f32::NAN; m * ldc];
                if has_avx2() {
                    // SAFETY: AVX2 + FMA checked just above; the shapes are those `gemm` checked.
                    unsafe {
                        avx2::gemm_raw(
                            a.as_ptr(),
                            lda,
                            m,
                            &pw,
                            b,
                            0..pw.panels(),
                            c2.as_mut_ptr(),
                            ldc,
                            &mut scratch,
                            false,
                        )
                    };
                    let same = c.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "{m}x{k}x{n}: the AVX2 kernel differs from the dispatched one"
                    );
                }
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

    /// Half-float panels give the f32 panels' products bit for bit, for every tile shape and
    /// with a bias; a weight that is not all half floats stays f32.
    #[test]
    fn half_float_panels_give_the_same_bits() {
        let mut st = 11u32;
        let mut rnd = || {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            (st % 20001) as f32 / 10000.0 - 1.0
        };
        let to_half = |v: f32| half::f16::from_f32(v).to_f32();
        for &(m, k, n) in &[
            (1usize, 512usize, 1000usize),
            (3, 37, 64),
            (13, 300, 33),
            (108, 512, 96),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| to_half(rnd())).collect();
            let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let full = PackedWeight::new(n, k, |o, i| w[o * k + i]);
            let compact = PackedWeight::compact(n, k, |o, i| w[o * k + i]);
            assert_eq!(
                compact.is_half(),
                has_f16c(),
                "{m}x{k}x{n}: packed as half floats"
            );
            let mut scratch = Vec::new();
            let mut want = vec![0f32; m * n];
            let mut got = vec![0f32; m * n];
            gemm(&a, k, m, &full, Some(&bias), &mut want, n, &mut scratch);
            gemm(&a, k, m, &compact, Some(&bias), &mut got, n, &mut scratch);
            if let Some(i) = (0..m * n).find(|&i| want[i].to_bits() != got[i].to_bits()) {
                panic!(
                    "{m}x{k}x{n}: row {} column {}: {} (half) vs {} (f32)",
                    i / n,
                    i % n,
                    got[i],
                    want[i]
                );
            }
        }
        let not_half = PackedWeight::compact(2, 3, |o, i| if (o, i) == (1, 2) { 0.1 } else { 0.5 });
        assert!(
            !not_half.is_half(),
            "0.1 is no half float: the weight stays f32"
        );
    }
}

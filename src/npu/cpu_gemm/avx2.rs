//! The AVX2 + FMA kernel of [`super::gemm_raw`], for CPUs without AVX-512 (AMD Zen 2 and 3,
//! Intel client cores before Ice Lake and after Alder Lake).
//!
//! Same packed weights and packed rows as the AVX-512 kernel ([`super::PackedWeight`], panels of
//! 32 columns; row tiles of up to 12 rows by groups of 16 inputs), so one packing serves both.
//! With 16 ymm registers a 12 x 32 tile does not fit: the kernel walks each row tile as sub-tiles
//! of up to [`SUB_ROWS`] rows and each panel as two halves of 16 columns, with 6 x 2 ymm
//! accumulators (the classic 6 x 16 register block: 12 FMAs per 8 loads).
//!
//! Every output element is its bias plus the products of its row and column added one input
//! after the other, in the same order as the AVX-512 kernel, so both give the same bits, and a
//! row's result does not depend on the other rows of the call (what batching across streams
//! relies on). Like the AVX-512 kernel, it prefetches the next panel's slice into L2 while it
//! walks a panel, a few lines between its FMAs, spread over all the panel's sub-tiles.
//!
//! It also runs on half-float panels ([`PackedWeight::compact`]), widening each weight to f32 as
//! it loads it (F16C): the same products, bit for bit, from half the bytes.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::{n_tiles, next_slice, pack_len, tile_rows, Init, PackedWeight, KC, KU, NR};
use super::{Prefetch, LINE};

/// Rows per register sub-tile.
const SUB_ROWS: usize = 6;
/// Columns per half panel (two ymm).
const HALF: usize = NR / 2;

/// [`super::gemm_raw`] with AVX2 + FMA.
///
/// # Safety
/// As [`super::gemm_raw`], with AVX2 and FMA available instead of AVX-512F, and F16C if `w`
/// holds half floats.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_raw(
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
    match (w.f32_ptr(), w.f16_ptr()) {
        (Some(wp), _) => gemm_on::<f32>(a, lda, m, w, wp, bias, panels, c, ldc, scratch, gelu),
        (None, Some(wp)) => gemm_half(a, lda, m, w, wp, bias, panels, c, ldc, scratch, gelu),
        (None, None) => unreachable!("a packed weight is f32 or half floats"),
    }
}

/// [`gemm_on`] for half-float panels, with F16C enabled.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_half(
    a: *const f32,
    lda: usize,
    m: usize,
    w: &PackedWeight,
    wp: *const u16,
    bias: Option<&[f32]>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    scratch: &mut Vec<f32>,
    gelu: bool,
) {
    gemm_on::<u16>(a, lda, m, w, wp, bias, panels, c, ldc, scratch, gelu)
}

/// A packed weight's value type: f32, or a half float's bits (u16), widened as loaded.
pub(super) trait Weight: Copy {
    /// Eight consecutive weights from `p`, as f32.
    ///
    /// # Safety
    /// `p` must point to 8 readable values; AVX (and F16C for half floats) must be available.
    unsafe fn load8(p: *const Self) -> __m256;
}

#[cfg(target_arch = "x86_64")]
impl Weight for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

#[cfg(target_arch = "x86_64")]
impl Weight for u16 {
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_on<W: Weight>(
    a: *const f32,
    lda: usize,
    m: usize,
    w: &PackedWeight,
    wp: *const W,
    bias: Option<&[f32]>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    scratch: &mut Vec<f32>,
    gelu: bool,
) {
    let (n, k) = (w.n, w.k);
    let need = pack_len(m, k);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let sp = scratch.as_mut_ptr();
    let sp = sp.add(sp.align_offset(32).min(8));
    let tiles = n_tiles(m);
    let sub_tiles = sub_tile_count(m);
    let mut k0 = 0;
    loop {
        let kc = KC.min(k - k0);
        let kcp = kc.next_multiple_of(KU);
        let first = k0 == 0;
        let gelu = gelu && k0 + kc >= k;
        pack_rows(a, lda, m, k0, kc, sp);
        for p in panels.clone() {
            let cols = NR.min(n - p * NR);
            let panel = wp.add((p * k + k0) * NR);
            // The weight streams from L3 or memory (each layer's is used once per window): the
            // next panel's slice (or the next K block's first) is prefetched into L2 while this
            // one is walked, its lines spread over the sub-tile calls of both halves.
            let (next_at, next_kc) = next_slice(&panels, p, k, k0, kc);
            let next = wp.add(next_at).cast::<u8>();
            let lines = next_kc * NR * std::mem::size_of::<W>() / LINE;
            let calls = 2 * sub_tiles;
            let mut call = 0;
            for half in 0..2 {
                let half_cols = cols.saturating_sub(half * HALF).min(HALF);
                if half_cols == 0 {
                    continue;
                }
                let col0 = p * NR + half * HALF;
                let init = if first {
                    Init::Bias(bias.map(|b| b.as_ptr().add(col0)))
                } else {
                    Init::Load
                };
                let masks = col_masks(half_cols);
                let mut r = 0;
                for _ in 0..tiles {
                    let rows = tile_rows(m - r);
                    let tile_a = sp.add(r * kcp);
                    let mut s = 0;
                    while s < rows {
                        let sub = SUB_ROWS.min(rows - s);
                        let pf = Prefetch::share(next, lines, call, calls);
                        call += 1;
                        let out = c.add((r + s) * ldc + (p - panels.start) * NR + half * HALF);
                        let block = Block {
                            a: tile_a.add(s * KU),
                            a_group: rows * KU,
                            b: panel.add(half * HALF),
                            kc,
                            c: out,
                            ldc,
                            init,
                            masks,
                            pf,
                            gelu,
                        };
                        sub_tile(sub, block);
                        s += sub;
                    }
                    r += rows;
                }
            }
        }
        k0 += kc;
        if k0 >= k {
            break;
        }
    }
}

/// Packs inputs `k0 .. k0 + kc` of the `m` rows of `a` into `dst`, in the layout of the AVX-512
/// kernel's packing: tile t (rows r = t*12 ..) at `dst + r * kcp`; in it, group g (inputs 16g ..)
/// holds the tile's rows one after the other, 16 values each (zero past kc).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_rows(a: *const f32, lda: usize, m: usize, k0: usize, kc: usize, dst: *mut f32) {
    let kcp = kc.next_multiple_of(KU);
    let groups = kcp / KU;
    let full = kc / KU;
    let mut r = 0;
    while r < m {
        let rows = tile_rows(m - r);
        let d = dst.add(r * kcp);
        for i in 0..rows {
            let src = a.add((r + i) * lda + k0);
            for g in 0..full {
                let (s, o) = (src.add(g * KU), d.add((g * rows + i) * KU));
                _mm256_storeu_ps(o, _mm256_loadu_ps(s));
                _mm256_storeu_ps(o.add(8), _mm256_loadu_ps(s.add(8)));
            }
            if full < groups {
                let (s, o) = (src.add(full * KU), d.add((full * rows + i) * KU));
                let left = kc - full * KU;
                for u in 0..KU {
                    *o.add(u) = if u < left { *s.add(u) } else { 0.0 };
                }
            }
        }
        r += rows;
    }
}

/// Sub-tile calls per half panel for `m` rows.
fn sub_tile_count(m: usize) -> usize {
    let mut r = 0;
    let mut count = 0;
    while r < m {
        let rows = tile_rows(m - r);
        count += rows.div_ceil(SUB_ROWS);
        r += rows;
    }
    count
}

/// Lane masks for the first `cols` (1 to 16) columns of a half panel, as two ymm masks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn col_masks(cols: usize) -> [__m256i; 2] {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let below = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes);
    [below(cols), below(cols.saturating_sub(8))]
}

/// One sub-tile's operands: `rows` packed rows from `a` (a group of 16 inputs every `a_group`
/// values), 16 columns of a panel from `b` (row stride [`NR`]), the output at `c`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Block<W> {
    a: *const f32,
    a_group: usize,
    b: *const W,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    init: Init,
    masks: [__m256i; 2],
    pf: Prefetch,
    gelu: bool,
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sub_tile<W: Weight>(rows: usize, block: Block<W>) {
    match rows {
        1 => kernel::<W, 1>(block),
        2 => kernel::<W, 2>(block),
        3 => kernel::<W, 3>(block),
        4 => kernel::<W, 4>(block),
        5 => kernel::<W, 5>(block),
        6 => kernel::<W, 6>(block),
        _ => unreachable!("sub-tile rows"),
    }
}

/// R rows x 16 columns over `kc` inputs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel<W: Weight, const R: usize>(blk: Block<W>) {
    let [m0, m1] = blk.masks;
    let c = blk.c;
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    match blk.init {
        Init::Bias(Some(bias)) => {
            let b0 = _mm256_maskload_ps(bias, m0);
            let b1 = _mm256_maskload_ps(bias.add(8), m1);
            for i in 0..R {
                acc0[i] = b0;
                acc1[i] = b1;
            }
        }
        Init::Bias(None) => {}
        Init::Load => {
            for i in 0..R {
                acc0[i] = _mm256_maskload_ps(c.add(i * blk.ldc), m0);
                acc1[i] = _mm256_maskload_ps(c.add(i * blk.ldc + 8), m1);
            }
        }
    }
    let (mut ap, mut bp) = (blk.a, blk.b);
    // One input: the panel's 16 weights against each row's value.
    macro_rules! step {
        ($u:expr) => {{
            let u = $u;
            let b0 = W::load8(bp.add(u * NR));
            let b1 = W::load8(bp.add(u * NR + 8));
            for i in 0..R {
                let av = _mm256_broadcast_ss(&*ap.add(i * KU + u));
                acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
                acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
            }
        }};
    }
    let groups = blk.kc / KU;
    let mut pf = blk.pf.spread(groups);
    for g in 0..groups {
        pf.before_group(g);
        for u in 0..KU {
            step!(u);
        }
        ap = ap.add(blk.a_group);
        bp = bp.add(KU * NR);
    }
    pf.rest();
    for u in 0..blk.kc % KU {
        step!(u);
    }
    if blk.gelu {
        for i in 0..R {
            acc0[i] = crate::npu::cpu_math::gelu256(acc0[i]);
            acc1[i] = crate::npu::cpu_math::gelu256(acc1[i]);
        }
    }
    for i in 0..R {
        _mm256_maskstore_ps(c.add(i * blk.ldc), m0, acc0[i]);
        _mm256_maskstore_ps(c.add(i * blk.ldc + 8), m1, acc1[i]);
    }
}

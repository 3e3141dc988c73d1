//! Fused multi-head attention kernel (AVX-512F, head width 64: every Whisper model) for one block
//! of up to [`BLOCK`] query rows and one head, on the CPU in float32:
//!
//! 1. `Q^T` of the block is packed (64 x 32, scaled by `1 / sqrt(64)`, by gathers), so the score
//!    tile `S^T = K Q^T` (keys x queries) is a register-blocked product (12 keys x 32 queries per
//!    tile, 24 zmm accumulators) over K packed once per layer by [`pack_head`]: tiles of 12 keys,
//!    by groups of 16 dimensions (the same layout as the rows of [`super::cpu_gemm`]), so the
//!    broadcasts come from one pointer and the packing is plain copies.
//! 2. The softmax runs down the columns of `S^T`: max, `exp` and sum are plain vertical vector
//!    operations over 32 queries at once, no horizontal reductions; the max is taken while the
//!    tiles are stored.
//! 3. By chunks of 64 keys, `exp` then `O += E V` (12 queries x 32 values per tile, V rows read
//!    in place), so the chunk's probabilities and values are in L1 when the product reads them;
//!    the normalisation `1 / sum` is applied to the 64-wide result instead of the p-wide
//!    probabilities.
//!
//! Without AVX-512, the same steps in ymm registers ([`avx2`]). Nothing is allocated: the caller
//! passes a [`AttnScratch`] per thread. Other head widths and CPUs without AVX2 use the generic
//! path of the encoder.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

mod avx2;

use super::cpu_math::{self, Isa};

/// Query rows per block (two zmm of queries in `S^T`).
pub const BLOCK: usize = 32;
/// The head width this kernel handles.
pub const HEAD: usize = 64;

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
fn has_avx2() -> bool {
    cpu_math::supports(Isa::Avx2)
}

/// Per-thread buffers of the kernel.
#[derive(Default)]
pub struct AttnScratch {
    qt: Vec<f32>,
    st: Vec<f32>,
    o: Vec<f32>,
}

impl AttnScratch {
    /// Grows the buffers for `p` positions now, so that later calls allocate nothing.
    pub fn reserve(&mut self, p: usize) {
        for (v, n) in [
            (&mut self.qt, HEAD * BLOCK),
            (&mut self.st, p * BLOCK),
            (&mut self.o, BLOCK * HEAD),
        ] {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
    }
}

/// Keys per tile of the packed K.
const KT: usize = 12;

/// Packs one head's K (tiles of 12 keys; in a tile, per group of 16 dimensions, the keys' 16
/// values one key after the other) and V (rows of 64, contiguous) from `p` rows of `src` (row
/// stride `ld`, K at column `k_col`, V at `v_col`), into `k` and `v` of `p * 64` values each.
/// Once per layer and head: every query block reads them, and rows 3d apart would cost a TLB
/// miss each. Both are plain 64-byte copies (K interleaved per dimension was a scalar transpose,
/// 4% of the attention).
///
/// # Panics
/// If a slice is too short.
pub fn pack_head(
    src: &[f32],
    ld: usize,
    k_col: usize,
    v_col: usize,
    p: usize,
    k: &mut [f32],
    v: &mut [f32],
) {
    assert!(
        k.len() >= p * HEAD && v.len() >= p * HEAD,
        "pack_head: output too small"
    );
    if p == 0 {
        return;
    }
    assert!(
        (p - 1) * ld + k_col.max(v_col) + HEAD <= src.len(),
        "pack_head: input too small"
    );
    for (j, row) in v.chunks_exact_mut(HEAD).take(p).enumerate() {
        row.copy_from_slice(&src[j * ld + v_col..][..HEAD]);
    }
    let mut j0 = 0;
    while j0 < p {
        let w = KT.min(p - j0);
        let tile = &mut k[j0 * HEAD..(j0 + w) * HEAD];
        for jj in 0..w {
            let row = &src[(j0 + jj) * ld + k_col..][..HEAD];
            for (g, part) in row.chunks_exact(KG).enumerate() {
                tile[(g * w + jj) * KG..][..KG].copy_from_slice(part);
            }
        }
        j0 += w;
    }
}

/// Dimensions per group of the packed K.
const KG: usize = 16;

/// One head: its q (`p` rows of 64 values, row `j` at `q[j * q_ld..]`), and its K and V as
/// [`pack_head`] leaves them.
#[derive(Clone, Copy)]
pub struct HeadView<'a> {
    pub q: &'a [f32],
    pub q_ld: usize,
    pub k: &'a [f32],
    pub v: &'a [f32],
    /// Positions (keys and values).
    pub p: usize,
}

/// `out[i][0..64] = softmax(q[r0 + i] . k[j] / 8 over j) v` for the `out.nrows()`
/// (1 to [`BLOCK`]) query rows from `r0`; `out` is `rows x 64` with unit column stride (e.g. one
/// head's columns of the attention output).
///
/// # Panics
/// If the CPU has neither AVX-512F nor AVX2 + FMA, or the views do not have these shapes.
pub fn attention_block(
    head: HeadView<'_>,
    r0: usize,
    out: ndarray::ArrayViewMut2<'_, f32>,
    scratch: &mut AttnScratch,
) {
    block_with(head, r0, out, scratch, has_avx512())
}

/// [`attention_block`] with the AVX-512 kernel if `avx512`, else the AVX2 one.
fn block_with(
    head: HeadView<'_>,
    r0: usize,
    mut out: ndarray::ArrayViewMut2<'_, f32>,
    scratch: &mut AttnScratch,
    avx512: bool,
) {
    let usable = if avx512 { has_avx512() } else { has_avx2() };
    assert!(usable, "attention kernel needs AVX-512F or AVX2 + FMA");
    let rows = out.nrows();
    assert!(
        (1..=BLOCK).contains(&rows) && r0 + rows <= head.p,
        "query rows"
    );
    assert_eq!(out.ncols(), HEAD, "out width");
    assert!(
        out.strides()[1] == 1 && (rows == 1 || out.strides()[0] >= HEAD as isize),
        "out needs unit column stride and non-overlapping rows"
    );
    let ldo = out.strides()[0].max(0) as usize;
    assert!(
        head.q_ld >= HEAD && (head.p - 1) * head.q_ld + HEAD <= head.q.len(),
        "q too small"
    );
    assert!(
        16 * head.q_ld <= i32::MAX as usize,
        "q row stride too large for the gathers"
    );
    assert!(
        head.k.len() >= head.p * HEAD && head.v.len() >= head.p * HEAD,
        "k or v too small"
    );
    scratch.reserve(head.p);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the kernel's instructions checked above (AVX-512F, else AVX2 + FMA); every index
    // either kernel touches was bounds-checked above: rows 0..p of q, k and v (64 values each),
    // qt 64 x 32, st p x 32 and o 32 x 64; it writes only the view's own elements (rows
    // 0..rows at stride ldo, 64 unit-stride columns).
    unsafe {
        if avx512 {
            kernel(head, r0, rows, out.as_mut_ptr(), ldo, scratch)
        } else {
            avx2::kernel(head, r0, rows, out.as_mut_ptr(), ldo, scratch)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel(
    h: HeadView<'_>,
    r0: usize,
    rows: usize,
    out: *mut f32,
    ldo: usize,
    s: &mut AttnScratch,
) {
    let p = h.p;
    let qt = s.qt.as_mut_ptr();
    let st = s.st.as_mut_ptr();

    // 1. qt[k][i] = q[r0 + i][k] / sqrt(64), zero for the padding queries: per k, two gathers
    //    of 16 rows each (a scalar transpose became scatters, ~8% of the kernel).
    let scale = _mm512_set1_ps(1.0 / (HEAD as f32).sqrt());
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(h.q_ld as i32),
    );
    let bits = |n: usize| -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    };
    let (k0, k1) = (bits(rows), bits(rows.saturating_sub(16)));
    let q0 = h.q.as_ptr().add(r0 * h.q_ld);
    let q1 = q0.wrapping_add(16 * h.q_ld);
    let zero = _mm512_setzero_ps();
    for k in 0..HEAD {
        let v0 = _mm512_mask_i32gather_ps::<4>(zero, k0, idx, q0.add(k));
        _mm512_storeu_ps(qt.add(k * BLOCK), _mm512_mul_ps(v0, scale));
        // Rows 16.. may lie past the view when the block is short: masked off entirely then.
        let v1 = if k1 != 0 {
            _mm512_mask_i32gather_ps::<4>(zero, k1, idx, q1.add(k))
        } else {
            zero
        };
        _mm512_storeu_ps(qt.add(k * BLOCK + 16), _mm512_mul_ps(v1, scale));
    }

    // 2. st[j][0..32] = k[j] . qt, with the running max per query.
    let kb = h.k.as_ptr();
    let mut m0 = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut m1 = m0;
    let mut j = 0;
    while j + KT <= p {
        scores::<KT>(kb.add(j * HEAD), qt, st.add(j * BLOCK), &mut m0, &mut m1);
        j += KT;
    }
    let (kj, sj) = (kb.add(j * HEAD), st.add(j * BLOCK));
    match p - j {
        0 => {}
        1 => scores::<1>(kj, qt, sj, &mut m0, &mut m1),
        2 => scores::<2>(kj, qt, sj, &mut m0, &mut m1),
        3 => scores::<3>(kj, qt, sj, &mut m0, &mut m1),
        4 => scores::<4>(kj, qt, sj, &mut m0, &mut m1),
        5 => scores::<5>(kj, qt, sj, &mut m0, &mut m1),
        6 => scores::<6>(kj, qt, sj, &mut m0, &mut m1),
        7 => scores::<7>(kj, qt, sj, &mut m0, &mut m1),
        8 => scores::<8>(kj, qt, sj, &mut m0, &mut m1),
        9 => scores::<9>(kj, qt, sj, &mut m0, &mut m1),
        10 => scores::<10>(kj, qt, sj, &mut m0, &mut m1),
        _ => scores::<11>(kj, qt, sj, &mut m0, &mut m1),
    }

    // 3. By chunks of CH keys (so the chunk's probabilities and values stay in L1):
    //    st = exp(st - max), column sums, and o += st^T v over the chunk, in tiles of VR queries
    //    x 16 VZ values accumulated in `o` (32 x 64).
    let o = s.o.as_mut_ptr();
    for x in s.o.iter_mut() {
        *x = 0.0;
    }
    let vb = h.v.as_ptr();
    let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut j0 = 0;
    while j0 < p {
        let jn = CH.min(p - j0);
        for j in j0..j0 + jn {
            let row = st.add(j * BLOCK);
            let e0 = crate::npu::cpu_math::exp512(_mm512_sub_ps(_mm512_loadu_ps(row), m0));
            let e1 = crate::npu::cpu_math::exp512(_mm512_sub_ps(_mm512_loadu_ps(row.add(16)), m1));
            _mm512_storeu_ps(row, e0);
            _mm512_storeu_ps(row.add(16), e1);
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
        }
        let (vj, stj) = (vb.add(j0 * HEAD), st.add(j0 * BLOCK));
        for c0 in (0..HEAD).step_by(16 * VZ) {
            let mut i = 0;
            while i + VR <= rows {
                values::<VR, VZ>(vj.add(c0), jn, stj.add(i), o.add(i * HEAD + c0));
                i += VR;
            }
            let (vc, sti, oi) = (vj.add(c0), stj.add(i), o.add(i * HEAD + c0));
            macro_rules! tail {
                ($($m:literal)*) => {
                    match rows - i {
                        0 => {}
                        $($m => values::<$m, VZ>(vc, jn, sti, oi),)*
                        _ => unreachable!("tail rows"),
                    }
                };
            }
            tail!(1 2 3 4 5 6 7 8 9 10 11);
        }
        j0 += jn;
    }

    // 4. out[i] = o[i] / sum[i].
    let mut inv = [0f32; BLOCK];
    _mm512_storeu_ps(inv.as_mut_ptr(), _mm512_div_ps(_mm512_set1_ps(1.0), s0));
    _mm512_storeu_ps(
        inv.as_mut_ptr().add(16),
        _mm512_div_ps(_mm512_set1_ps(1.0), s1),
    );
    for (i, &sc) in inv.iter().enumerate().take(rows) {
        let sv = _mm512_set1_ps(sc);
        for c in (0..HEAD).step_by(16) {
            let v = _mm512_mul_ps(_mm512_loadu_ps(o.add(i * HEAD + c)), sv);
            _mm512_storeu_ps(out.add(i * ldo + c), v);
        }
    }
}

/// Keys per chunk of the values product: the chunk's probabilities (CH x 32) and values
/// (CH x 64) and the accumulators (32 x 64) take 32 KiB, in L1.
const CH: usize = 64;
/// Queries per tile of the values product, and zmm of values (16 each) per tile.
const VR: usize = 12;
const VZ: usize = 2;

/// MR keys of a packed tile (per group of 16 dimensions, the MR keys' 16 values one after the
/// other): `st[jj][0..32] = k[jj] . qt[..][0..32]`; updates the column maxima.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores<const MR: usize>(
    k: *const f32,
    qt: *const f32,
    st: *mut f32,
    m0: &mut __m512,
    m1: &mut __m512,
) {
    let mut a0 = [_mm512_setzero_ps(); MR];
    let mut a1 = [_mm512_setzero_ps(); MR];
    for g in 0..HEAD / KG {
        let kg = k.add(g * MR * KG);
        for u in 0..KG {
            let c = g * KG + u;
            let b0 = _mm512_loadu_ps(qt.add(c * BLOCK));
            let b1 = _mm512_loadu_ps(qt.add(c * BLOCK + 16));
            for jj in 0..MR {
                let a = _mm512_set1_ps(*kg.add(jj * KG + u));
                a0[jj] = _mm512_fmadd_ps(a, b0, a0[jj]);
                a1[jj] = _mm512_fmadd_ps(a, b1, a1[jj]);
            }
        }
    }
    for jj in 0..MR {
        _mm512_storeu_ps(st.add(jj * BLOCK), a0[jj]);
        _mm512_storeu_ps(st.add(jj * BLOCK + 16), a1[jj]);
        *m0 = _mm512_max_ps(*m0, a0[jj]);
        *m1 = _mm512_max_ps(*m1, a1[jj]);
    }
}

/// MR queries x 16 NZ values over `jn` keys: `o[ii][0..16 NZ] += sum_j st[j][ii] v[j][0..16 NZ]`
/// (`st` offset to the first query's column, `v` to the first value's, rows of 64; `o` rows of
/// 64).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn values<const MR: usize, const NZ: usize>(
    v: *const f32,
    jn: usize,
    st: *const f32,
    o: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); NZ]; MR];
    for ii in 0..MR {
        for c in 0..NZ {
            acc[ii][c] = _mm512_loadu_ps(o.add(ii * HEAD + 16 * c));
        }
    }
    for j in 0..jn {
        let vr = v.add(j * HEAD);
        let mut vv = [_mm512_setzero_ps(); NZ];
        for (c, x) in vv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(vr.add(16 * c));
        }
        let e = st.add(j * BLOCK);
        for ii in 0..MR {
            let a = _mm512_set1_ps(*e.add(ii));
            for c in 0..NZ {
                acc[ii][c] = _mm512_fmadd_ps(a, vv[c], acc[ii][c]);
            }
        }
    }
    for ii in 0..MR {
        for c in 0..NZ {
            _mm512_storeu_ps(o.add(ii * HEAD + 16 * c), acc[ii][c]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_attention() {
        assert!(
            available(),
            "every x86-64 CPU this project supports has AVX2 + FMA"
        );
        let mut st = 99u32;
        let mut rnd = || {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            (st % 20001) as f32 / 10000.0 - 1.0
        };
        let mut scratch = AttnScratch::default();
        for &(p, heads) in &[
            (1usize, 1usize),
            (5, 2),
            (13, 1),
            (40, 3),
            (512, 2),
            (97, 1),
        ] {
            let d = heads * HEAD;
            let ld = 3 * d + 5; // a row stride with padding
            let qkv: Vec<f32> = (0..p * ld).map(|_| 3.0 * rnd()).collect();
            for h in 0..heads {
                let (mut kp, mut vp) = (vec![0f32; p * HEAD], vec![0f32; p * HEAD]);
                pack_head(
                    &qkv,
                    ld,
                    d + h * HEAD,
                    2 * d + h * HEAD,
                    p,
                    &mut kp,
                    &mut vp,
                );
                let view = HeadView {
                    q: &qkv[h * HEAD..],
                    q_ld: ld,
                    k: &kp,
                    v: &vp,
                    p,
                };
                let mut r0 = 0;
                while r0 < p {
                    let rows = BLOCK.min(p - r0);
                    let ldo = 70;
                    let mut out = vec![f32::NAN; rows * ldo];
                    let mut o =
                        ndarray::ArrayViewMut2::from_shape((rows, ldo), &mut out[..]).unwrap();
                    // The dispatched kernel, and the AVX2 one where AVX-512 took the first.
                    attention_block(view, r0, o.slice_mut(ndarray::s![.., ..HEAD]), &mut scratch);
                    if has_avx512() && has_avx2() {
                        let mut out2 = vec![f32::NAN; rows * ldo];
                        let mut o2 =
                            ndarray::ArrayViewMut2::from_shape((rows, ldo), &mut out2[..]).unwrap();
                        let o2 = o2.slice_mut(ndarray::s![.., ..HEAD]);
                        block_with(view, r0, o2, &mut scratch, false);
                        for (i, (a, b)) in out.iter().zip(&out2).enumerate() {
                            let (a, b) = (*a as f64, *b as f64);
                            assert!(
                                (a - b).abs() < 2e-5 * (1.0 + a.abs())
                                    || (a.is_nan() && b.is_nan()),
                                "p={p} h={h} r0={r0} element {i}: AVX2 {b} vs AVX-512 {a}"
                            );
                        }
                    }
                    for i in 0..rows {
                        let q = &view.q[(r0 + i) * ld..][..HEAD];
                        let kcol = d + h * HEAD;
                        let vcol = 2 * d + h * HEAD;
                        let sc: Vec<f64> = (0..p)
                            .map(|j| {
                                let k = &qkv[j * ld + kcol..][..HEAD];
                                q.iter()
                                    .zip(k)
                                    .map(|(&a, &b)| a as f64 * b as f64)
                                    .sum::<f64>()
                                    / 8.0
                            })
                            .collect();
                        let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for c in 0..HEAD {
                            let want: f64 = (0..p)
                                .map(|j| e[j] * qkv[j * ld + vcol + c] as f64)
                                .sum::<f64>()
                                / sum;
                            let got = out[i * ldo + c] as f64;
                            assert!(
                                (got - want).abs() < 2e-5 * (1.0 + want.abs()),
                                "p={p} h={h} row={} c={c}: {got} vs {want}",
                                r0 + i
                            );
                        }
                    }
                    r0 += rows;
                }
            }
        }
    }
}

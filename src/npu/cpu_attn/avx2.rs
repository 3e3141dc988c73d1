//! The AVX2 + FMA kernel of [`super::attention_block`], for CPUs without AVX-512: the same
//! three steps on the same packed K and V ([`super::pack_head`]), in ymm registers.
//!
//! 1. `Q^T` of the block (64 x 32, scaled) by a scalar transpose (2,048 values against the
//!    block's 64 p x 32 x 2 FMAs).
//! 2. `S^T = K Q^T` by tiles of [`KEYS`] keys x 32 queries (4 ymm per key), reading a packed K
//!    tile of any width through its group stride, with the running maximum per query.
//! 3. By chunks of [`CH`] keys, `exp` and `O += E V` in tiles of [`VR`] queries x 16 values.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::{AttnScratch, HeadView, BLOCK, HEAD, KG, KT};

/// Keys per score tile: 2 x 4 accumulators, 4 query vectors and a broadcast fit 16 ymm.
const KEYS: usize = 2;
/// Keys per chunk of the values product (their probabilities and values stay in L1).
const CH: usize = 64;
/// Queries per tile of the values product (6 x 2 accumulators).
const VR: usize = 6;
/// Query vectors (8 lanes) per block.
const QV: usize = BLOCK / 8;

/// The block's attention, as the AVX-512 kernel computes it.
///
/// # Safety
/// AVX2 and FMA must be available, and the shapes those [`super::attention_block`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel(
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

    // 1. qt[k][i] = q[r0 + i][k] / sqrt(64), zero for the padding queries.
    let scale = 1.0 / (HEAD as f32).sqrt();
    for i in 0..BLOCK {
        if i < rows {
            let q = h.q.as_ptr().add((r0 + i) * h.q_ld);
            for k in 0..HEAD {
                *qt.add(k * BLOCK + i) = *q.add(k) * scale;
            }
        } else {
            for k in 0..HEAD {
                *qt.add(k * BLOCK + i) = 0.0;
            }
        }
    }

    // 2. st[j][0..32] = k[j] . qt, with the running max per query. K is packed in tiles of KT
    //    keys (the last one narrower); each is walked KEYS keys at a time.
    let kb = h.k.as_ptr();
    let mut max = [_mm256_set1_ps(f32::NEG_INFINITY); QV];
    let mut j0 = 0;
    while j0 < p {
        let width = KT.min(p - j0);
        let tile = kb.add(j0 * HEAD);
        let mut jj = 0;
        while jj < width {
            let (kj, sj) = (tile.add(jj * KG), st.add((j0 + jj) * BLOCK));
            if jj + KEYS <= width {
                scores::<KEYS>(kj, width * KG, qt, sj, &mut max);
                jj += KEYS;
            } else {
                scores::<1>(kj, width * KG, qt, sj, &mut max);
                jj += 1;
            }
        }
        j0 += width;
    }

    // 3. By chunks of CH keys: st = exp(st - max), column sums, and o += st^T v.
    let o = s.o.as_mut_ptr();
    for x in s.o.iter_mut() {
        *x = 0.0;
    }
    let vb = h.v.as_ptr();
    let mut sum = [_mm256_setzero_ps(); QV];
    let mut j0 = 0;
    while j0 < p {
        let jn = CH.min(p - j0);
        for j in j0..j0 + jn {
            let row = st.add(j * BLOCK);
            for q in 0..QV {
                let e = crate::npu::cpu_math::exp256(_mm256_sub_ps(
                    _mm256_loadu_ps(row.add(8 * q)),
                    max[q],
                ));
                _mm256_storeu_ps(row.add(8 * q), e);
                sum[q] = _mm256_add_ps(sum[q], e);
            }
        }
        let (vj, stj) = (vb.add(j0 * HEAD), st.add(j0 * BLOCK));
        for c0 in (0..HEAD).step_by(16) {
            let mut i = 0;
            while i < rows {
                let n = VR.min(rows - i);
                let (vc, sti, oi) = (vj.add(c0), stj.add(i), o.add(i * HEAD + c0));
                match n {
                    1 => values::<1>(vc, jn, sti, oi),
                    2 => values::<2>(vc, jn, sti, oi),
                    3 => values::<3>(vc, jn, sti, oi),
                    4 => values::<4>(vc, jn, sti, oi),
                    5 => values::<5>(vc, jn, sti, oi),
                    _ => values::<VR>(vc, jn, sti, oi),
                }
                i += n;
            }
        }
        j0 += jn;
    }

    // 4. out[i] = o[i] / sum[i].
    let mut inv = [0f32; BLOCK];
    for q in 0..QV {
        let v = _mm256_div_ps(_mm256_set1_ps(1.0), sum[q]);
        _mm256_storeu_ps(inv.as_mut_ptr().add(8 * q), v);
    }
    for (i, &sc) in inv.iter().enumerate().take(rows) {
        let sv = _mm256_set1_ps(sc);
        for c in (0..HEAD).step_by(8) {
            let v = _mm256_mul_ps(_mm256_loadu_ps(o.add(i * HEAD + c)), sv);
            _mm256_storeu_ps(out.add(i * ldo + c), v);
        }
    }
}

/// N keys of a packed K tile (key `jj`'s group g of 16 dimensions at `k + g * group + jj * 16`):
/// `st[jj][0..32] = k[jj] . qt[..][0..32]`; updates the column maxima.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores<const N: usize>(
    k: *const f32,
    group: usize,
    qt: *const f32,
    st: *mut f32,
    max: &mut [__m256; QV],
) {
    let mut acc = [[_mm256_setzero_ps(); QV]; N];
    for g in 0..HEAD / KG {
        let kg = k.add(g * group);
        for u in 0..KG {
            let c = g * KG + u;
            let mut b = [_mm256_setzero_ps(); QV];
            for (q, x) in b.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(qt.add(c * BLOCK + 8 * q));
            }
            for (jj, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*kg.add(jj * KG + u));
                for q in 0..QV {
                    acc[q] = _mm256_fmadd_ps(a, b[q], acc[q]);
                }
            }
        }
    }
    for (jj, acc) in acc.iter().enumerate() {
        for q in 0..QV {
            _mm256_storeu_ps(st.add(jj * BLOCK + 8 * q), acc[q]);
            max[q] = _mm256_max_ps(max[q], acc[q]);
        }
    }
}

/// R queries x 16 values over `jn` keys: `o[ii][0..16] += sum_j st[j][ii] v[j][0..16]` (`st`
/// offset to the first query's column, `v` to the first value's, rows of 64; `o` rows of 64).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn values<const R: usize>(v: *const f32, jn: usize, st: *const f32, o: *mut f32) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for (ii, acc) in acc.iter_mut().enumerate() {
        acc[0] = _mm256_loadu_ps(o.add(ii * HEAD));
        acc[1] = _mm256_loadu_ps(o.add(ii * HEAD + 8));
    }
    for j in 0..jn {
        let vr = v.add(j * HEAD);
        let (v0, v1) = (_mm256_loadu_ps(vr), _mm256_loadu_ps(vr.add(8)));
        let e = st.add(j * BLOCK);
        for (ii, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_broadcast_ss(&*e.add(ii));
            acc[0] = _mm256_fmadd_ps(a, v0, acc[0]);
            acc[1] = _mm256_fmadd_ps(a, v1, acc[1]);
        }
    }
    for (ii, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(o.add(ii * HEAD), acc[0]);
        _mm256_storeu_ps(o.add(ii * HEAD + 8), acc[1]);
    }
}

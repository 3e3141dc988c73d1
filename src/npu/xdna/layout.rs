//! Packing to the XDNA2 GEMM kernel's tiles and padding (`kernels/gemm_config.h`,
//! `kernels/host/xdna_shim.h`), on the CPU.
//!
//! One launch computes `C (m x n, int32, row-major) = A (m x k, int8) * B (k x n)` with `m` a
//! multiple of [`M_ALIGN`] up to [`M_MAX`], `k` a multiple of [`TILE_K`] and `n` a multiple of
//! [`N_ALIGN`]; [`gemm_params`] are its runtime parameters. A and B are handed to
//! the device pre-tiled, in the order the compute tiles consume them: 64 x 64 tiles, each made of
//! 8 x 8 blocks for the matrix unit, so that every DMA transfer is linear. Padding is zeros, which
//! leave an integer product unchanged.
use rayon::prelude::*;

use super::shim;

pub const TILE_M: usize = shim::XDNA_TILE_M as usize;
pub const TILE_K: usize = shim::XDNA_TILE_K as usize;
pub const TILE_N: usize = shim::XDNA_TILE_N as usize;
pub const MMUL_R: usize = shim::XDNA_MMUL_R as usize;
pub const MMUL_S: usize = shim::XDNA_MMUL_S as usize;
pub const MMUL_T: usize = shim::XDNA_MMUL_T as usize;
pub const ARRAY_ROWS: usize = shim::XDNA_ARRAY_ROWS as usize;
pub const ARRAY_COLS: usize = shim::XDNA_ARRAY_COLS as usize;
/// Rows of A and C per launch at most.
pub const M_MAX: usize = shim::XDNA_GEMM_M_MAX as usize;
/// M is padded to a multiple of this (one output tile row per array row).
pub const M_ALIGN: usize = ARRAY_ROWS * TILE_M;
/// N is padded to a multiple of this (one output tile column per array column).
pub const N_ALIGN: usize = ARRAY_COLS * TILE_N;

const _: () = assert!(M_MAX.is_multiple_of(M_ALIGN));
const _: () = assert!(
    TILE_M.is_multiple_of(MMUL_R) && TILE_K.is_multiple_of(MMUL_S) && TILE_N.is_multiple_of(MMUL_T)
);

/// `k` padded to whole K tiles.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(TILE_K) * TILE_K
}

/// `n` padded to whole array-wide column blocks.
pub fn padded_n(n: usize) -> usize {
    n.div_ceil(N_ALIGN) * N_ALIGN
}

/// `rows` (at most [`M_MAX`]) padded to whole array-high row blocks.
pub fn padded_m(rows: usize) -> usize {
    rows.div_ceil(M_ALIGN) * M_ALIGN
}

/// Launches needed for `rows` rows.
pub fn launches_for(rows: usize) -> usize {
    rows.div_ceil(M_MAX)
}

/// The runtime parameters of a launch of a padded shape (`xdna_gemm_params`).
///
/// # Panics
/// If the shape is not padded, or taller than [`M_MAX`].
pub fn gemm_params(shape: shim::GemmShape) -> shim::GemmParams {
    assert!(
        shape.m.is_multiple_of(M_ALIGN)
            && (M_ALIGN..=M_MAX).contains(&shape.m)
            && shape.k.is_multiple_of(TILE_K)
            && shape.k > 0
            && shape.n.is_multiple_of(N_ALIGN)
            && shape.n > 0,
        "unpadded GEMM shape {shape:?}"
    );
    let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    shim::GemmParams {
        m_blocks: u32_of(shape.m / M_ALIGN),
        k_tiles: u32_of(shape.k / TILE_K),
        n_blocks: u32_of(shape.n / N_ALIGN),
    }
}

/// Where element (r, c) of A (`m_pad x k_pad`) lives in the device buffer.
#[inline]
pub fn a_index(k_pad: usize, r: usize, c: usize) -> usize {
    let (mt, mb, u) = (r / TILE_M, (r % TILE_M) / MMUL_R, r % MMUL_R);
    let (kt, kb, v) = (c / TILE_K, (c % TILE_K) / MMUL_S, c % MMUL_S);
    let tile = mt * (k_pad / TILE_K) + kt;
    let block = mb * (TILE_K / MMUL_S) + kb;
    ((tile * (TILE_M / MMUL_R) * (TILE_K / MMUL_S) + block) * MMUL_R + u) * MMUL_S + v
}

/// Where element (r, c) of B (`k_pad x n_pad`, r along K) lives in the device buffer.
#[inline]
pub fn b_index(k_pad: usize, r: usize, c: usize) -> usize {
    let (kt, kb, u) = (r / TILE_K, (r % TILE_K) / MMUL_S, r % MMUL_S);
    let (nt, nb, v) = (c / TILE_N, (c % TILE_N) / MMUL_T, c % MMUL_T);
    let tile = nt * (k_pad / TILE_K) + kt;
    let block = kb * (TILE_N / MMUL_T) + nb;
    ((tile * (TILE_K / MMUL_S) * (TILE_N / MMUL_T) + block) * MMUL_S + u) * MMUL_T + v
}

/// Packs `rows x k` int8 activations (row-major, `rows <= m_pad`) into one launch's A buffer
/// (at least `m_pad * k_pad` bytes; the first `m_pad * k_pad` are written), zero-padding the
/// missing rows and columns. Each 64-row panel is a
/// contiguous stretch of the buffer; panels are packed in parallel (on the current rayon pool).
///
/// # Panics
/// If the sizes do not agree.
pub fn pack_a(q: &[i8], rows: usize, k: usize, m_pad: usize, k_pad: usize, out: &mut [i8]) {
    assert!(rows <= m_pad && m_pad.is_multiple_of(TILE_M));
    assert!(k <= k_pad && k_pad.is_multiple_of(TILE_K));
    assert_eq!(q.len(), rows * k, "activation size");
    assert!(out.len() >= m_pad * k_pad, "A buffer size");
    let panel = TILE_M * k_pad;
    out[..m_pad * k_pad]
        .par_chunks_mut(panel)
        .enumerate()
        .for_each(|(mt, dst)| {
            let r0 = mt * TILE_M;
            let r1 = (r0 + TILE_M).min(rows);
            if r1 < r0 + TILE_M || k < k_pad {
                dst.fill(0);
            }
            for r in r0..r1 {
                // Runs of MMUL_S consecutive columns are contiguous in the buffer.
                for (c0, run) in q[r * k..(r + 1) * k].chunks(MMUL_S).enumerate() {
                    let at = a_index(k_pad, r, c0 * MMUL_S) - mt * panel;
                    dst[at..at + run.len()].copy_from_slice(run);
                }
            }
        });
}

/// Packs a weight, `n_out x k` int8 row-major (the PyTorch layout, so `B = W^T`), into a B buffer
/// (`k_pad * n_pad` bytes), zero-padded.
///
/// # Panics
/// If the sizes do not agree.
pub fn pack_b(w: &[i8], n_out: usize, k: usize, k_pad: usize, n_pad: usize, out: &mut [i8]) {
    assert!(
        k <= k_pad
            && k_pad.is_multiple_of(TILE_K)
            && n_out <= n_pad
            && n_pad.is_multiple_of(N_ALIGN)
    );
    assert_eq!(w.len(), n_out * k, "weight size");
    assert_eq!(out.len(), k_pad * n_pad, "B buffer size");
    if k < k_pad || n_out < n_pad {
        out.fill(0);
    }
    for (o, row) in w.chunks_exact(k).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[b_index(k_pad, c, o)] = v;
        }
    }
}

/// Copies the first `rows x n_out` of a row-major `m_pad x n_pad` C buffer into `acc`
/// (`rows x n_out`, row-major), dropping the padding.
pub fn unpack_c(c: &[i32], rows: usize, n_out: usize, n_pad: usize, acc: &mut [i32]) {
    assert!(n_out <= n_pad);
    assert!(c.len() >= rows * n_pad, "C buffer size");
    assert_eq!(acc.len(), rows * n_out, "accumulator size");
    for (dst, src) in acc.chunks_exact_mut(n_out).zip(c.chunks_exact(n_pad)) {
        dst.copy_from_slice(&src[..n_out]);
    }
}

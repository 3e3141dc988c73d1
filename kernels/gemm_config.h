/* The int8 GEMM's tiling, in one place.
 *
 * Read by the AIE kernel (kernels/aie/gemm_i8.cc), the IRON design (kernels/iron/gemm.py gets them
 * from the Makefile, which reads this file), the host shim ABI (kernels/host/xdna_shim.h, and so
 * through bindgen the Rust engine) and the CPU emulation of the device. Change a value here and
 * every side follows; the kernels must then be rebuilt.
 *
 * C (M x N, int32) = A (M x K, int8) * B (K x N, int8), exact int32 accumulation.
 *
 *   - every compute tile works on TILE_M x TILE_N blocks of C, TILE_K of the reduction at a time;
 *   - inside a tile the AIE-ML/XDNA2 int8 matrix unit multiplies MMUL_R x MMUL_S by MMUL_S x
 *     MMUL_T blocks (aie::mmul<8, 8, 8, int8, int8> with a 32-bit accumulator on XDNA2);
 *   - the array is ARRAY_ROWS x ARRAY_COLS compute tiles (XDNA2: 4 x 8 = 32): row i of the array
 *     takes rows i*TILE_M.. of every (ARRAY_ROWS*TILE_M)-row block of A, column j takes columns
 *     j*TILE_N.. of every (ARRAY_COLS*TILE_N)-column block of B;
 *   - one array configuration (one xclbin, one kernel) serves every shape: the compute tiles take
 *     the number of K tiles and of output tiles as runtime parameters of each launch (written by
 *     the launch's instruction sequence), so changing shape never reconfigures the array;
 *   - one launch covers up to GEMM_M_MAX rows of A and C, in blocks of ARRAY_ROWS * TILE_M rows;
 *     taller products are several launches.
 *
 * Padding this imposes (zeros, which add nothing to an exact integer product):
 *   M -> multiple of ARRAY_ROWS * TILE_M (256),
 *   K -> multiple of TILE_K (64),
 *   N -> multiple of ARRAY_COLS * TILE_N (512).
 */
#ifndef WHISPERENCNPU_GEMM_CONFIG_H
#define WHISPERENCNPU_GEMM_CONFIG_H

#define XDNA_TILE_M 64
#define XDNA_TILE_K 64
#define XDNA_TILE_N 64

#define XDNA_MMUL_R 8
#define XDNA_MMUL_S 8
#define XDNA_MMUL_T 8

#define XDNA_ARRAY_ROWS 4
#define XDNA_ARRAY_COLS 8

/* Rows of A and C per launch at most: a 10.24 s window's conv1 im2col (1024 rows) in one launch. */
#define XDNA_GEMM_M_MAX 1024

#endif

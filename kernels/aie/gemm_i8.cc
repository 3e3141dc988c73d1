// gemm_i8.cc: the int8 GEMM micro-kernel of one XDNA2 (AIE-ML v2, "aie2p") compute tile.
//
//   c (TILE_M x TILE_N, int32) += a (TILE_M x TILE_K, int8) * b (TILE_K x TILE_N, int8)
//
// Operands arrive pre-blocked for the matrix unit (see kernels/host/xdna_shim.h): a in
// MMUL_R x MMUL_S blocks, b in MMUL_S x MMUL_T blocks, c in MMUL_R x MMUL_T blocks, each block
// row-major and the blocks in row-major order. aie::mmul<8, 8, 8, int8, int8> accumulates in
// 32 bits (acc32), so the sum is exact: |a*b| <= 127*127 and K <= 2048 keep every partial sum
// under 2^25.
//
// Shape-generic: it knows the tile sizes only. How many K tiles an output tile takes and how many
// output tiles a worker computes are the launch's runtime parameters, read by the worker program
// (kernels/iron/gemm.py) that calls zero_i32 and gemm_i8_i32, so one compiled array
// configuration serves every GEMM of the encoder.
//
// Two rows of output blocks times two columns of output blocks are computed together (four
// accumulators) so that every A and B block loaded feeds two multiplications.
//
// Build (Peano, see kernels/Makefile):
//   clang++ -O2 -std=c++20 --target=aie2p-none-unknown-elf -I$(MLIR_AIE)/include -c gemm_i8.cc
#include <aie_api/aie.hpp>
#include <stdint.h>

#include "../gemm_config.h"

// Loop hints of the Chess compiler; Peano (clang) has none of them.
#ifndef chess_prepare_for_pipelining
#define chess_prepare_for_pipelining
#endif
#ifndef chess_loop_range
#define chess_loop_range(...)
#endif
#ifndef chess_flatten_loop
#define chess_flatten_loop
#endif

namespace {

constexpr unsigned kR = XDNA_MMUL_R;
constexpr unsigned kS = XDNA_MMUL_S;
constexpr unsigned kT = XDNA_MMUL_T;
constexpr unsigned kRowBlocks = XDNA_TILE_M / kR; // output block rows
constexpr unsigned kColBlocks = XDNA_TILE_N / kT; // output block columns
constexpr unsigned kDepthBlocks = XDNA_TILE_K / kS;

static_assert(kRowBlocks % 2 == 0 && kColBlocks % 2 == 0, "2 x 2 expansion");

using Mmul = aie::mmul<kR, kS, kT, int8, int8, acc32>;

void gemm_tile(const int8 *__restrict a, const int8 *__restrict b, int32 *__restrict c) {
  for (unsigned z = 0; z < kRowBlocks; z += 2)
    chess_prepare_for_pipelining chess_loop_range(2, ) {
      int32 *__restrict c0 = c + (z * kColBlocks) * Mmul::size_C;
      int32 *__restrict c1 = c + ((z + 1) * kColBlocks) * Mmul::size_C;
      for (unsigned j = 0; j < kColBlocks; j += 2) {
        const int8 *__restrict a0 = a + (z * kDepthBlocks) * Mmul::size_A;
        const int8 *__restrict a1 = a + ((z + 1) * kDepthBlocks) * Mmul::size_A;
        const int8 *__restrict b0 = b + j * Mmul::size_B;
        const int8 *__restrict b1 = b + (j + 1) * Mmul::size_B;

        // Continue the sums already in c (zeroed by zero_i32 before the first K tile).
        Mmul acc00(aie::load_v<Mmul::size_C>(c0));
        Mmul acc01(aie::load_v<Mmul::size_C>(c0 + Mmul::size_C));
        Mmul acc10(aie::load_v<Mmul::size_C>(c1));
        Mmul acc11(aie::load_v<Mmul::size_C>(c1 + Mmul::size_C));

        for (unsigned i = 0; i < kDepthBlocks; ++i)
          chess_flatten_loop {
            aie::vector<int8, Mmul::size_A> va0 = aie::load_v<Mmul::size_A>(a0);
            aie::vector<int8, Mmul::size_A> va1 = aie::load_v<Mmul::size_A>(a1);
            aie::vector<int8, Mmul::size_B> vb0 = aie::load_v<Mmul::size_B>(b0);
            aie::vector<int8, Mmul::size_B> vb1 = aie::load_v<Mmul::size_B>(b1);
            a0 += Mmul::size_A;
            a1 += Mmul::size_A;
            b0 += Mmul::size_B * kColBlocks; // next block row of b
            b1 += Mmul::size_B * kColBlocks;
            acc00.mac(va0, vb0);
            acc01.mac(va0, vb1);
            acc10.mac(va1, vb0);
            acc11.mac(va1, vb1);
          }

        aie::store_v(c0, acc00.template to_vector<int32>());
        aie::store_v(c0 + Mmul::size_C, acc01.template to_vector<int32>());
        aie::store_v(c1, acc10.template to_vector<int32>());
        aie::store_v(c1 + Mmul::size_C, acc11.template to_vector<int32>());
        c0 += 2 * Mmul::size_C;
        c1 += 2 * Mmul::size_C;
      }
    }
}

} // namespace

extern "C" {

// Clears one output tile before its first K tile.
void zero_i32(int32 *__restrict c) {
  constexpr unsigned lanes = 32;
  static_assert((XDNA_TILE_M * XDNA_TILE_N) % lanes == 0);
  const aie::vector<int32, lanes> zeros = aie::zeros<int32, lanes>();
  for (unsigned i = 0; i < XDNA_TILE_M * XDNA_TILE_N; i += lanes)
    chess_prepare_for_pipelining aie::store_v(c + i, zeros);
}

// c += a * b for one K tile.
void gemm_i8_i32(const int8 *a, const int8 *b, int32 *c) { gemm_tile(a, b, c); }

} // extern "C"

#!/usr/bin/env python3
"""The int8 GEMM spread over the whole XDNA2 array (IRON, mlir-aie's Python API).

    C (M x N, int32, row-major) = A (M x K, int8) * B (K x N, int8)

for one launch (M up to XDNA_GEMM_M_MAX rows); A and B arrive pre-tiled as described in
kernels/host/xdna_shim.h, so every transfer from DDR is a linear run of whole tiles.

Written against mlir-aie v1.4.2 (kernels/README.md pins it) and laid out like upstream's
programming_examples/basic/matrix_multiplication/whole_array (whole_array_iron.py, and
whole_array_dyn.py for the runtime parameters), so a first device run can be compared with
upstream's design step by step.

One array configuration for every shape. The array part (object FIFOs, workers, their programs)
does not depend on M, K or N: each worker takes its trip counts as runtime parameters (an RTP
buffer: [K tiles, output tiles], written by the runtime sequence, then a barrier released), and
loops forever over launches. Only the runtime sequence, i.e. the instruction stream, is
generated per shape; the Makefile builds the xclbin from the first shape and only the
instruction streams from the others (`make check-one-config` verifies that every shape yields
the same array configuration).

Placement (XDNA2: 8 columns, each a shim tile, a memory tile and 4 compute tiles):

  - compute tile (array row i, column j) computes every output tile (mt, nt) with mt = mi*4 + i
    and nt = nj*8 + j, one after the other: zero the 64 x 64 int32 tile, accumulate K/64
    products of an A tile and a B tile (kernels/aie/gemm_i8.cc), send it out;
  - A: the row panel of mt comes in through the shim and memory tile of column 2i (columns 0, 2,
    4, 6, as upstream routes A on the full 4 x 8 array) and is broadcast to the 8 compute tiles
    of array row i;
  - B: the column panel of nt comes in through column j and is broadcast to the 4 compute tiles
    of column j;
  - C: the 4 tiles of column j are joined in memory tile j, un-blocked from 8 x 8 blocks into
    rows, and written to DDR through shim j as a 256 x 64 block of C.

Usage (the tile sizes come from kernels/gemm_config.h through the Makefile):

    python3 gemm.py --M 512 --K 512 --N 2048 [--tile-m 64 ...] > gemm_m512_k512_n2048.mlir
"""
import argparse

import numpy as np

from aie.helpers.taplib import TensorAccessPattern
from aie.iron import (
    Kernel,
    ObjectFifo,
    Program,
    Runtime,
    TaskGroup,
    Worker,
    WorkerRuntimeBarrier,
)
from aie.iron.controlflow import range_
from aie.iron.device import NPU2, Tile

try:  # the runtime-parameter buffer: `Buffer` in current IRON, `GlobalBuffer` before
    from aie.iron import Buffer
except ImportError:  # pragma: no cover (older IRON)
    from aie.iron import GlobalBuffer as Buffer

# Upstream's whole_array gives every worker this stack (the default is too small for the
# micro-kernel's four accumulators plus the call chain).
STACK_SIZE = 0xD00
# Object FIFO depth: double buffering, as upstream.
FIFO_DEPTH = 2
# RTP words: [K tiles per output tile, output tiles per worker in this launch].
RTP_K_TILES, RTP_TILES, RTP_WORDS = 0, 1, 2


def design(M, K, N, tm, tk, tn, r, s, t, rows, cols, kernel_obj):
    assert M % (rows * tm) == 0, f"M={M} must be a multiple of {rows * tm}"
    assert K % tk == 0, f"K={K} must be a multiple of {tk}"
    assert N % (cols * tn) == 0, f"N={N} must be a multiple of {cols * tn}"
    assert tm % (2 * r) == 0 and tk % s == 0 and tn % (2 * t) == 0
    assert 2 * rows <= cols, "A enters through every other column (0, 2, 4, 6)"

    # The launch's runtime parameters (xdna_gemm_params): only the runtime sequence uses them.
    m_blocks = M // (rows * tm)
    k_tiles = K // tk
    n_blocks = N // (cols * tn)

    i8, i32 = np.dtype[np.int8], np.dtype[np.int32]
    a_ty = np.ndarray[(M * K,), i8]
    b_ty = np.ndarray[(K * N,), i8]
    c_ty = np.ndarray[(M * N,), i32]
    a_tile = np.ndarray[(tm * tk,), i8]
    b_tile = np.ndarray[(tk * tn,), i8]
    c_tile = np.ndarray[(tm * tn,), i32]
    c_column = np.ndarray[(rows * tm * tn,), i32]
    rtp_ty = np.ndarray[(RTP_WORDS,), i32]

    zero = Kernel("zero_i32", kernel_obj, [c_tile])
    gemm = Kernel("gemm_i8_i32", kernel_obj, [a_tile, b_tile, c_tile])

    # A: DDR -> memory tile 2i -> the compute tiles of array row i (already blocked).
    a_in = [ObjectFifo(a_tile, depth=FIFO_DEPTH, name=f"a_in_{i}") for i in range(rows)]
    a_row = [
        a_in[i].cons().forward(obj_type=a_tile, name=f"a_row_{i}", tile=Tile(2 * i, 1))
        for i in range(rows)
    ]
    # B: DDR -> memory tile j -> the compute tiles of column j.
    b_in = [ObjectFifo(b_tile, depth=FIFO_DEPTH, name=f"b_in_{j}") for j in range(cols)]
    b_col = [
        b_in[j].cons().forward(obj_type=b_tile, name=f"b_col_{j}", tile=Tile(j, 1))
        for j in range(cols)
    ]
    # C: the 4 compute tiles of column j -> memory tile j (joined) -> DDR. The memory tile reads
    # its buffer back as rows: for each 8-row block (stride r*tn), each of its r rows (stride t),
    # each 8-column block (stride r*t), t elements.
    c_out = [
        ObjectFifo(
            c_column,
            depth=FIFO_DEPTH,
            name=f"c_out_{j}",
            dims_to_stream=[(rows * tm // r, r * tn), (r, t), (tn // t, r * t), (t, 1)],
        )
        for j in range(cols)
    ]
    c_core = [
        c_out[j]
        .prod()
        .join(
            [tm * tn * i for i in range(rows)],
            obj_types=[c_tile] * rows,
            names=[f"c_core_{i}_{j}" for i in range(rows)],
            depths=[FIFO_DEPTH] * rows,
            tile=Tile(j, 1),
        )
        for j in range(cols)
    ]

    # One RTP buffer and one barrier per worker (upstream's whole_array_dyn pattern).
    rtps = [
        [Buffer(rtp_ty, name=f"rtp_{i}_{j}", use_write_rtp=True) for j in range(cols)]
        for i in range(rows)
    ]
    barriers = [[WorkerRuntimeBarrier() for _ in range(cols)] for _ in range(rows)]

    # Every launch: wait for the sequence to publish this launch's trip counts, then for each
    # output tile zero, accumulate k_tiles products, emit. The Worker wraps this in its
    # forever loop, so one configuration serves launch after launch.
    def core_fn(a, b, c, zero, gemm, rtp, barrier):
        barrier.wait_for_value(1)
        k_count = rtp[RTP_K_TILES]
        tiles = rtp[RTP_TILES]
        for _ in range_(tiles):
            out = c.acquire(1)
            zero(out)
            for _ in range_(k_count):
                x = a.acquire(1)
                w = b.acquire(1)
                gemm(x, w, out)
                a.release(1)
                b.release(1)
            c.release(1)

    workers = [
        Worker(
            core_fn,
            [
                a_row[i].cons(),
                b_col[j].cons(),
                c_core[j][i].prod(),
                zero,
                gemm,
                rtps[i][j],
                barriers[i][j],
            ],
            tile=Tile(j, 2 + i),
            stack_size=STACK_SIZE,
        )
        for i in range(rows)
        for j in range(cols)
    ]

    def panel(tensor_len, first_tile, tile_elems):
        # k_tiles consecutive tiles: a plain linear transfer, written as 3 short dimensions to
        # stay within the shim DMA's per-dimension limits.
        return TensorAccessPattern(
            (tensor_len,),
            first_tile * tile_elems,
            [1, k_tiles, tile_elems // 64, 64],
            [0, tile_elems, 64, 1],
        )

    def sequence(A, B, C, a_fill, b_fill, c_drain):
        # This launch's runtime parameters into every worker, then let them go.
        for i in range(rows):
            for j in range(cols):
                rtps[i][j][RTP_K_TILES] = k_tiles
                rtps[i][j][RTP_TILES] = m_blocks * n_blocks
                barriers[i][j].set(1)
        # One task group per array-sized block of C; the next block's transfers are queued
        # before the previous group is finished, so DMAs and compute overlap.
        previous = None
        for mi in range(m_blocks):
            for nj in range(n_blocks):
                tg = TaskGroup()
                for i in range(rows):
                    mt = mi * rows + i
                    a_fill[i].fill(
                        A, tap=panel(M * K, mt * k_tiles, tm * tk), group=tg
                    )
                for j in range(cols):
                    nt = nj * cols + j
                    b_fill[j].fill(
                        B, tap=panel(K * N, nt * k_tiles, tk * tn), group=tg
                    )
                    c_drain[j].drain(
                        C,
                        tap=TensorAccessPattern(
                            (M * N,),
                            mi * rows * tm * N + nt * tn,
                            [1, 1, rows * tm, tn],
                            [0, 0, N, 1],
                        ),
                        wait=True,
                        group=tg,
                    )
                if previous is not None:
                    previous.finish()
                previous = tg
        previous.finish()

    rt = Runtime(
        sequence,
        [
            a_ty,
            b_ty,
            c_ty,
            [f.prod() for f in a_in],
            [f.prod() for f in b_in],
            [f.cons() for f in c_out],
        ],
    )
    return Program(NPU2(), rt, workers=workers).resolve_program()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--M", type=int, required=True)
    p.add_argument("--K", type=int, required=True)
    p.add_argument("--N", type=int, required=True)
    p.add_argument("--tile-m", type=int, default=64)
    p.add_argument("--tile-k", type=int, default=64)
    p.add_argument("--tile-n", type=int, default=64)
    p.add_argument("--mmul", type=int, nargs=3, default=[8, 8, 8], metavar=("R", "S", "T"))
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--kernel-obj", default="gemm_i8.o")
    a = p.parse_args()
    r, s, t = a.mmul
    print(
        design(a.M, a.K, a.N, a.tile_m, a.tile_k, a.tile_n, r, s, t, a.rows, a.cols, a.kernel_obj)
    )


if __name__ == "__main__":
    main()

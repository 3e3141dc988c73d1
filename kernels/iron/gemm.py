#!/usr/bin/env python3
"""The int8 GEMM spread over the whole XDNA2 array (IRON, mlir-aie's Python API).

    C (M x N, int32, row-major) = A (M x K, int8) * B (K x N, int8)

for one kernel run (M = XDNA_GEMM_M_RUN rows); A and B arrive pre-tiled as described in
kernels/host/xdna_shim.h, so every transfer from DDR is a linear run of whole tiles.

Placement (XDNA2: 8 columns, each a shim tile, a memory tile and 4 compute tiles):

  - compute tile (row i, column j) computes every output tile (mt, nt) with mt = mi*4 + i and
    nt = nj*8 + j, one after the other: zero the 64 x 64 int32 tile, accumulate K/64 products of an
    A tile and a B tile (kernels/aie/gemm_i8.cc), send it out;
  - A: the row panel of mt comes in through the shim and memory tile of column i (i < 4) and is
    broadcast to the 8 compute tiles of array row i;
  - B: the column panel of nt comes in through column j and is broadcast to the 4 compute tiles of
    column j;
  - C: the 4 tiles of column j are joined in memory tile j, un-blocked from 8 x 8 blocks into
    rows, and written to DDR through shim j as a 256 x 64 block of C.

The design is generated per (K, N); the tile sizes come from the command line (the Makefile reads
them from kernels/gemm_config.h). Usage:

    python3 gemm.py --M 512 --K 512 --N 2048 [--tile-m 64 ...] > gemm_k512_n2048.mlir
"""
import argparse

import numpy as np

from aie.helpers.taplib import TensorAccessPattern
from aie.iron import Kernel, ObjectFifo, Program, Runtime, Worker
from aie.iron.controlflow import range_
from aie.iron.device import NPU2, Tile
from aie.iron.placers import SequentialPlacer


def design(M, K, N, tm, tk, tn, r, s, t, rows, cols, kernel_obj):
    assert M % (rows * tm) == 0, f"M={M} must be a multiple of {rows * tm}"
    assert K % tk == 0, f"K={K} must be a multiple of {tk}"
    assert N % (cols * tn) == 0, f"N={N} must be a multiple of {cols * tn}"
    assert tm % (2 * r) == 0 and tk % s == 0 and tn % (2 * t) == 0
    assert rows <= cols, "A enters through one column per array row"

    kt_count = K // tk
    m_blocks = M // (rows * tm)  # row blocks of the array per run
    n_blocks = N // (cols * tn)  # column blocks of the array per run
    tiles_per_core = m_blocks * n_blocks

    i8, i32 = np.dtype[np.int8], np.dtype[np.int32]
    a_ty = np.ndarray[(M * K,), i8]
    b_ty = np.ndarray[(K * N,), i8]
    c_ty = np.ndarray[(M * N,), i32]
    a_tile = np.ndarray[(tm * tk,), i8]
    b_tile = np.ndarray[(tk * tn,), i8]
    c_tile = np.ndarray[(tm * tn,), i32]
    c_column = np.ndarray[(rows * tm * tn,), i32]

    zero = Kernel("zero_i32", kernel_obj, [c_tile])
    gemm = Kernel("gemm_i8_i32", kernel_obj, [a_tile, b_tile, c_tile])

    # A: DDR -> memory tile i -> the compute tiles of row i (already blocked: no re-layout).
    a_in = [ObjectFifo(a_tile, depth=2, name=f"a_in_{i}") for i in range(rows)]
    a_row = [
        a_in[i].cons().forward(obj_type=a_tile, name=f"a_row_{i}", placement=Tile(i, 1))
        for i in range(rows)
    ]
    # B: DDR -> memory tile j -> the compute tiles of column j.
    b_in = [ObjectFifo(b_tile, depth=2, name=f"b_in_{j}") for j in range(cols)]
    b_col = [
        b_in[j].cons().forward(obj_type=b_tile, name=f"b_col_{j}", placement=Tile(j, 1))
        for j in range(cols)
    ]
    # C: the 4 compute tiles of column j -> memory tile j (joined) -> DDR. The memory tile reads
    # its buffer back as rows: for each 8-row block (stride r*tn), each of its r rows (stride t),
    # each 8-column block (stride r*t), t elements.
    c_out = [
        ObjectFifo(
            c_column,
            depth=2,
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
            placement=Tile(j, 1),
        )
        for j in range(cols)
    ]

    def core_fn(a, b, c, zero, gemm):
        for _ in range_(tiles_per_core):
            out = c.acquire(1)
            zero(out)
            for _ in range_(kt_count):
                x = a.acquire(1)
                w = b.acquire(1)
                gemm(x, w, out)
                a.release(1)
                b.release(1)
            c.release(1)

    workers = [
        Worker(
            core_fn,
            [a_row[i].cons(), b_col[j].cons(), c_core[j][i].prod(), zero, gemm],
            placement=Tile(j, 2 + i),
        )
        for i in range(rows)
        for j in range(cols)
    ]

    def panel(tensor_len, first_tile, tile_elems):
        # kt_count consecutive tiles: a plain linear transfer, written as 3 short dimensions to
        # stay within the shim DMA's per-dimension limits.
        return TensorAccessPattern(
            (tensor_len,),
            first_tile * tile_elems,
            [1, kt_count, tile_elems // 64, 64],
            [0, tile_elems, 64, 1],
        )

    rt = Runtime()
    with rt.sequence(a_ty, b_ty, c_ty) as (A, B, C):
        rt.start(*workers)
        # One task group per array-sized block of C; the next block's transfers are queued before
        # the previous group is waited for, so DMAs and compute overlap.
        previous = None
        for mi in range(m_blocks):
            for nj in range(n_blocks):
                tg = rt.task_group()
                for i in range(rows):
                    mt = mi * rows + i
                    rt.fill(
                        a_in[i].prod(),
                        A,
                        tap=panel(M * K, mt * kt_count, tm * tk),
                        task_group=tg,
                        placement=Tile(i, 0),
                    )
                for j in range(cols):
                    nt = nj * cols + j
                    rt.fill(
                        b_in[j].prod(),
                        B,
                        tap=panel(K * N, nt * kt_count, tk * tn),
                        task_group=tg,
                        placement=Tile(j, 0),
                    )
                    rt.drain(
                        c_out[j].cons(),
                        C,
                        tap=TensorAccessPattern(
                            (M * N,),
                            mi * rows * tm * N + nt * tn,
                            [1, 1, rows * tm, tn],
                            [0, 0, N, 1],
                        ),
                        wait=True,
                        task_group=tg,
                        placement=Tile(j, 0),
                    )
                if previous is not None:
                    rt.finish_task_group(previous)
                previous = tg
        rt.finish_task_group(previous)

    return Program(NPU2(), rt).resolve_program(SequentialPlacer())


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

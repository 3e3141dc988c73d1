#!/usr/bin/env python3
"""Replays one launch of kernels/iron/gemm.py's design on the CPU, symbolically, and checks that
it computes C = A * B with the host layouts of kernels/host/xdna_shim.h.

The design is built against recording stand-ins of the IRON API (stubs/: no mlir-aie, no numpy
needed), then its runtime sequence is run: the RTP writes and barrier releases it makes, the
fills and drains it issues (their tensor access patterns expanded to element indices), the
task groups it finishes. The data then flows as the array would move it: each A and B FIFO
delivers the DDR elements its fills name, cut into tiles and broadcast to the workers of its
array row (A) or column (B); every worker runs its own core program with the trip counts it reads
from its RTP buffer, recording which A and B tile each product takes; each memory tile joins its
column's four C tiles and streams them out in its dims_to_stream order; the drains write that
stream to the positions of C their patterns name.

Checked: every A and B tile a worker multiplies is one whole tile of the packed buffer, an output
tile (mt, nt) takes the A tiles (mt, 0..KT) and B tiles (nt, 0..KT) in K order, every element of
C is written exactly once and by the output tile and tile-local position it belongs to, every
FIFO is consumed to its end (a worker waiting for more would hang the device), every task group
is finished once. What it does not check: that IRON v1.4.2 spells its API this way, and the
micro-kernel's arithmetic (the emulator and tests/xdna.rs cover that).

Usage: check_sequence.py MxKxN [MxKxN ...]   (padded shapes; exit status 1 on the first failure)
"""
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "stubs"))
sys.path.insert(1, os.path.dirname(HERE))

import gemm  # noqa: E402  (kernels/iron/gemm.py, against the stubs)
from aie.iron import _RECORDER, TaskGroup  # noqa: E402

# gemm_config.h (kernels/Makefile passes the same values to gemm.py).
TM, TK, TN = 64, 64, 64
MR, MS, MT = 8, 8, 8
ROWS, COLS = 4, 8


class Failure(Exception):
    pass


def require(cond, what):
    if not cond:
        raise Failure(what)


class TileProduct:
    """An output tile being computed: the (A tile, B tile) pairs multiplied into it."""

    def __init__(self):
        self.pairs = None

    def zero(self):
        self.pairs = []

    def mac(self, a, b):
        require(self.pairs is not None, "product into an output tile that was not zeroed")
        self.pairs.append((a, b))


class Source:
    """A worker's consumer end of a FIFO: the objects the FIFO delivers, in order."""

    def __init__(self, objects, what):
        self.objects, self.what, self.pos, self.held = objects, what, 0, 0

    def acquire(self, n):
        require(n == 1, "acquire of more than one object")
        require(self.pos < len(self.objects), f"{self.what}: worker waits for more than was sent")
        self.pos += 1
        self.held += 1
        return self.objects[self.pos - 1]

    def release(self, n):
        self.held -= n
        require(self.held >= 0, f"{self.what}: released more than acquired")


class Sink:
    """A worker's producer end: the output tiles it releases, in order."""

    def __init__(self):
        self.objects, self.current = [], None

    def acquire(self, n):
        require(n == 1 and self.current is None, "output acquired twice")
        self.current = TileProduct()
        return self.current

    def release(self, n):
        require(self.current is not None, "output released without acquire")
        self.objects.append(self.current)
        self.current = None


def stream_order(dims, elements):
    """Element indices of one object in the order (size, stride) dims stream it."""
    if not dims:
        return list(range(elements))
    out = [0]
    for size, stride in dims:
        out = [base + i * stride for base in out for i in range(size)]
    return out


def whole_tile(chunk, tile_elems, what):
    """The tile index of a chunk that must be one whole, aligned tile of a packed buffer."""
    start = chunk[0]
    require(start % tile_elems == 0, f"{what}: object starts inside a tile ({start})")
    require(chunk == list(range(start, start + tile_elems)), f"{what}: object is not one tile")
    return start // tile_elems


def check(M, K, N):
    require(M % (ROWS * TM) == 0 and K % TK == 0 and N % (COLS * TN) == 0, "unpadded shape")
    KT = K // TK
    prog = gemm.design(M, K, N, TM, TK, TN, MR, MS, MT, ROWS, COLS, "gemm_i8.o")
    rt = prog.rt
    a_fills, b_fills, c_drains = rt.arg_types[3], rt.arg_types[4], rt.arg_types[5]

    # The runtime sequence: RTP writes, barrier releases, fills, drains, task groups.
    _RECORDER.ops.clear()
    rt.sequence("A", "B", "C", a_fills, b_fills, c_drains)
    groups = {}
    for op in _RECORDER.ops:
        if op[0] == "finish":
            require(id(op[1]) not in groups or not groups[id(op[1])], "group finished twice")
            groups[id(op[1])] = True
        else:
            require(isinstance(op[4], TaskGroup), "transfer outside a task group")
            groups.setdefault(id(op[4]), False)
    require(all(groups.values()), "a task group is never finished")

    # DDR -> FIFO streams (fills), by FIFO.
    streams, drains = {}, {}
    sizes = {"A": M * K, "B": K * N, "C": M * N}
    for op in _RECORDER.ops:
        if op[0] == "finish":
            continue
        kind, fifo, tensor, tap, _ = op
        idx = tap.indices()
        require(all(0 <= i < sizes[tensor] for i in idx), f"{kind} of {tensor} out of bounds")
        if kind == "fill":
            streams.setdefault(id(fifo), []).extend(idx)
        else:
            drains.setdefault(id(fifo), []).append(idx)

    def objects_of(fifo, tensor, tile_elems):
        """The objects a forwarded FIFO delivers: its source's stream cut into tiles."""
        kind, src = fifo.source
        require(kind == "forward", f"{fifo.name}: not fed by a forward")
        stream = streams.get(id(src), [])
        n = fifo.obj_type.elements
        require(n == tile_elems and len(stream) % n == 0, f"{fifo.name}: partial object")
        return [
            (tensor, whole_tile(stream[i : i + n], n, fifo.name)) for i in range(0, len(stream), n)
        ]

    delivered = {}
    sinks = {}
    for w in prog.workers:
        a_h, b_h, c_h, zero_k, gemm_k, rtp, barrier = w.fn_args
        for h, tensor, elems in ((a_h, "A", TM * TK), (b_h, "B", TK * TN)):
            if id(h.fifo) not in delivered:
                delivered[id(h.fifo)] = objects_of(h.fifo, tensor, elems)
        a_src = Source(delivered[id(a_h.fifo)], a_h.fifo.name)
        b_src = Source(delivered[id(b_h.fifo)], b_h.fifo.name)
        sink = Sink()
        # The kernels, as the core program calls them.
        zero = lambda out: out.zero()  # noqa: E731
        mac = lambda a, b, out: out.mac(a, b)  # noqa: E731
        w.core_fn(a_src, b_src, sink, zero, mac, rtp, barrier)
        for src in (a_src, b_src):
            require(src.pos == len(src.objects), f"{src.what}: {len(src.objects) - src.pos} "
                    f"objects left unconsumed by worker at {w.tile}")
            require(src.held == 0, f"{src.what}: objects still held")
        sinks[id(c_h.fifo)] = sink.objects

    # Memory tiles: join each column's four output tiles, stream them out, drain into C.
    written = [None] * (M * N)
    for c_h in c_drains:
        out = c_h.fifo
        parts = out.join_parts
        require(parts is not None and len(parts) == ROWS, f"{out.name}: not a join of {ROWS}")
        per_part = [sinks[id(p)] for p, _ in parts]
        count = len(per_part[0])
        require(all(len(p) == count for p in per_part), f"{out.name}: parts differ in count")
        column = out.obj_type.elements
        # Where each streamed element of a joined object comes from: (part, index in its tile).
        offsets = [off for _, off in parts]
        origin = []
        for idx in stream_order(out.dims_to_stream, column):
            part = max(i for i, off in enumerate(offsets) if off <= idx)
            origin.append((part, idx - offsets[part]))
        stream = [(per_part[part][k], e) for k in range(count) for part, e in origin]
        pos = 0
        for idx in drains.get(id(out), []):
            require(pos + len(idx) <= len(stream), f"{out.name}: drained more than produced")
            for c_index, label in zip(idx, stream[pos : pos + len(idx)]):
                require(written[c_index] is None, f"C[{c_index}] written twice")
                written[c_index] = label
            pos += len(idx)
        require(pos == len(stream), f"{out.name}: {len(stream) - pos} elements never drained")

    # Every C element: from the right output tile, at the right place, with the right products.
    checked = {}
    for c_index, label in enumerate(written):
        require(label is not None, f"C[{c_index}] never written")
        tile, e = label
        key = id(tile)
        if key not in checked:
            pairs = tile.pairs
            require(pairs is not None and len(pairs) == KT, "output tile with a wrong K count")
            mt = pairs[0][0][1] // KT
            nt = pairs[0][1][1] // KT
            require(
                [a for a, _ in pairs] == [("A", mt * KT + kt) for kt in range(KT)]
                and [b for _, b in pairs] == [("B", nt * KT + kt) for kt in range(KT)],
                f"output tile ({mt}, {nt}) multiplies the wrong tiles: {pairs}",
            )
            checked[key] = (mt, nt)
        mt, nt = checked[key]
        # Inside a tile: MR x MT blocks, row-major blocks, row-major inside (gemm_i8.cc).
        block, within = divmod(e, MR * MT)
        mb, nb = divmod(block, TN // MT)
        u, v = divmod(within, MT)
        r, c = mt * TM + mb * MR + u, nt * TN + nb * MT + v
        require(c_index == r * N + c, f"C[{divmod(c_index, N)}] holds the value of C[{r}, {c}]")
    return len(checked)


def main():
    shapes = sys.argv[1:]
    if not shapes:
        print(__doc__.strip().splitlines()[-1])
        return 2
    for s in shapes:
        M, K, N = (int(x) for x in s.split("x"))
        try:
            tiles = check(M, K, N)
        except Failure as e:
            print(f"{s}: FAILED: {e}")
            return 1
        print(f"{s}: ok ({tiles} output tiles, every element of C once, from the right products)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Recording stand-ins for IRON's classes (see aie/__init__.py)."""


class Kernel:
    def __init__(self, symbol, obj, arg_types):
        self.symbol, self.obj, self.arg_types = symbol, obj, arg_types


class ObjectFifo:
    """A FIFO of objects of `obj_type`; `source` says what feeds it: ("forward", fifo),
    ("join", fifo, index, offset) for the parts of a joined FIFO, or None (the runtime)."""

    def __init__(self, obj_type, depth=2, name=None, dims_to_stream=None, source=None, tile=None):
        self.obj_type, self.depth, self.name = obj_type, depth, name
        self.dims_to_stream = dims_to_stream
        self.source = source
        self.tile = tile
        self.join_parts = None  # for a joined FIFO: its part FIFOs and offsets

    def prod(self):
        return _Handle(self, producer=True)

    def cons(self):
        return _Handle(self, producer=False)

    def __repr__(self):
        return f"ObjectFifo({self.name})"


class _Handle:
    def __init__(self, fifo, producer):
        self.fifo, self.producer = fifo, producer

    def forward(self, obj_type=None, name=None, tile=None, dims_to_stream=None):
        assert not self.producer
        return ObjectFifo(
            obj_type or self.fifo.obj_type,
            self.fifo.depth,
            name,
            dims_to_stream,
            source=("forward", self.fifo),
            tile=tile,
        )

    def join(self, offsets, obj_types, names, depths=None, tile=None):
        assert self.producer
        parts = [
            ObjectFifo(t, 2, n, source=("join", self.fifo, i, off), tile=tile)
            for i, (off, t, n) in enumerate(zip(offsets, obj_types, names))
        ]
        self.fifo.join_parts = list(zip(parts, offsets))
        self.fifo.tile = tile
        return parts

    # runtime-sequence operations, recorded by the simulation's sequence context
    def fill(self, tensor, tap, group=None):
        _RECORDER.ops.append(("fill", self.fifo, tensor, tap, group))

    def drain(self, tensor, tap, wait=False, group=None):
        _RECORDER.ops.append(("drain", self.fifo, tensor, tap, group))


class _Recorder:
    def __init__(self):
        self.ops = []


_RECORDER = _Recorder()


class TaskGroup:
    def __init__(self):
        self.finished = False

    def finish(self):
        assert not self.finished, "task group finished twice"
        self.finished = True
        _RECORDER.ops.append(("finish", self))


class Buffer:
    """A worker's runtime-parameter buffer: the sequence's writes are recorded."""

    def __init__(self, obj_type, name=None, use_write_rtp=False):
        assert use_write_rtp, "runtime parameters need use_write_rtp"
        self.obj_type, self.name = obj_type, name
        self.values = [None] * obj_type.elements

    def __setitem__(self, i, v):
        self.values[i] = int(v)

    def __getitem__(self, i):
        assert self.values[i] is not None, f"{self.name}[{i}] read before it was written"
        return self.values[i]


GlobalBuffer = Buffer


class WorkerRuntimeBarrier:
    def __init__(self, initial_value=0):
        self.value = initial_value

    def set(self, value):
        self.value = value

    def wait_for_value(self, value):
        assert self.value == value, "worker started before the sequence released its barrier"


class Worker:
    def __init__(self, core_fn, fn_args, tile=None, stack_size=None):
        self.core_fn, self.fn_args, self.tile, self.stack_size = core_fn, fn_args, tile, stack_size


class Runtime:
    def __init__(self, sequence, arg_types):
        self.sequence, self.arg_types = sequence, arg_types


class Program:
    def __init__(self, device, rt, workers=None):
        self.device, self.rt, self.workers = device, rt, workers or []

    def resolve_program(self, *placer):
        assert not placer, "v1.4.2's resolve_program takes no placer"
        return self

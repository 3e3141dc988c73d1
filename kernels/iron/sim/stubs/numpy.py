"""Stand-in for the few numpy names kernels/iron/gemm.py uses to spell IRON types.

`np.ndarray[(n,), np.dtype[np.int8]]` becomes a plain (shape, dtype name) record: the
simulation needs element counts only. Used only by kernels/iron/sim (real numpy is not needed
to check the design's data movement).
"""


class _Type:
    def __init__(self, name):
        self.name = name


int8 = _Type("int8")
int32 = _Type("int32")


class dtype:  # noqa: N801 (numpy's spelling)
    def __class_getitem__(cls, scalar):
        return scalar


class ndarray:  # noqa: N801
    def __class_getitem__(cls, spec):
        shape, scalar = spec
        return ArrayType(tuple(shape), scalar)


class ArrayType:
    def __init__(self, shape, scalar):
        self.shape = shape
        self.scalar = scalar

    @property
    def elements(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

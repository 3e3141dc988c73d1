"""TensorAccessPattern: an offset and up to 4 (size, stride) dimensions over a flat tensor."""


class TensorAccessPattern:
    def __init__(self, tensor_dims, offset, sizes, strides):
        self.tensor_dims = tuple(tensor_dims)
        self.offset = offset
        self.sizes = list(sizes)
        self.strides = list(strides)

    def indices(self):
        """Element indices in transfer order (the innermost dimension fastest)."""
        out = [self.offset]
        for size, stride in zip(self.sizes, self.strides):
            out = [base + i * stride for base in out for i in range(size)]
        return out

"""NPU2 and Tile, as placement records."""


class NPU2:
    rows, cols = 6, 8


class Tile:
    def __init__(self, col, row):
        self.col, self.row = col, row

    def __repr__(self):
        return f"Tile({self.col}, {self.row})"

"""Stand-in for the IRON API surface kernels/iron/gemm.py uses (mlir-aie v1.4.2 as that file
assumes it), recording what the design declares so kernels/iron/sim/check_sequence.py can replay
a launch's data movement. It checks the design's logic (taps, runtime parameters, routing of
tiles to workers), not that the real API has these spellings."""

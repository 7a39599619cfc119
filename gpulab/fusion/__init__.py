"""Chapter 03: kernel fusion, after the Fused Kernel Library (arXiv:2508.07071) and
Hardware Acceleration of Neural Graphics (arXiv:2303.05735).

Chain operations at run time and get ONE numba.cuda kernel for the chain (vertical
fusion), or run the chain on a batch of differently sized items in one launch
(horizontal fusion). The torch reference is the same chain as unfused torch ops.

    from gpulab import fusion as fk
    pipe = fk.Pipeline(fk.affine(2.0, -1.0), fk.relu(), fk.clamp(0.0, 1.0))
    y = pipe(x)                # one fused kernel
    pipe.reference(x)          # three (four) torch kernels
    print(pipe.source())       # the generated kernel
"""
from .ops import (Op, map_op, add, mul, affine, relu, leaky_relu, sigmoid, tanh, clamp, absolute, square,
                  normalize, rgb_to_gray, rgb_to_yuv, to_float32, to_uint8, crop, resize,
                  reduce_sum, reduce_mean, reduce_max, reduce_min, GRAY_WEIGHTS, YUV_MATRIX)
from .codegen import (BLOCK, UNROLL, TILE, GEOMETRY_FIELDS, Schedule, DEFAULT_SCHEDULE, cache_info, clear_cache,
                      generate_source)
from .pipeline import Pipeline, Batch, reference_chain, max_blocks
from . import isa

__all__ = [
    "Op", "map_op", "add", "mul", "affine", "relu", "leaky_relu", "sigmoid", "tanh", "clamp", "absolute",
    "square", "normalize", "rgb_to_gray", "rgb_to_yuv", "to_float32", "to_uint8", "crop", "resize",
    "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "GRAY_WEIGHTS", "YUV_MATRIX",
    "BLOCK", "UNROLL", "TILE", "GEOMETRY_FIELDS", "Schedule", "DEFAULT_SCHEDULE", "cache_info", "clear_cache",
    "generate_source", "isa",
    "Pipeline", "Batch", "reference_chain", "max_blocks",
]

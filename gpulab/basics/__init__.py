"""Chapter 00: first kernels (vector add, block reduction, transpose) and their torch references."""
from .kernels import (BLOCK, TILE, TILE_ROWS, vector_add_kernel, vector_add, block_sums_kernel, block_sums,
                      vector_sum, multiprocessor_count, transpose_naive_kernel, transpose_tiled_kernel,
                      transpose_tiled_unpadded_kernel, transpose, reference_add, reference_block_sums,
                      reference_sum, reference_transpose)

__all__ = ["BLOCK", "TILE", "TILE_ROWS", "vector_add_kernel", "vector_add", "block_sums_kernel", "block_sums",
           "vector_sum", "multiprocessor_count", "transpose_naive_kernel", "transpose_tiled_kernel",
           "transpose_tiled_unpadded_kernel", "transpose", "reference_add", "reference_block_sums",
           "reference_sum", "reference_transpose"]

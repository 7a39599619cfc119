"""Chapter 00: first kernels (vector add, block reduction) and their torch references."""
from .kernels import (BLOCK, vector_add_kernel, vector_add, block_sums_kernel, block_sums,
                      vector_sum, reference_add, reference_block_sums, reference_sum)

__all__ = ["BLOCK", "vector_add_kernel", "vector_add", "block_sums_kernel", "block_sums",
           "vector_sum", "reference_add", "reference_block_sums", "reference_sum"]

"""Chapter 04: attention kernels (FastAttention, arXiv 2410.16663; SLA, arXiv 2509.24006).

``torch_impl`` is the specification (fp64 option), ``kernels`` the numba.cuda twins (O and
LSE), ``cooperative`` the CPU-GPU split merged by LSE, ``sla`` the SparseLinearAttention
layer (zero-initialised projection) and its tiny fine-tuning demo.
"""
from . import kernels, torch_impl
from .torch_impl import CRITICAL, MARGINAL, NEGLIGIBLE

__all__ = ["kernels", "torch_impl", "CRITICAL", "MARGINAL", "NEGLIGIBLE"]

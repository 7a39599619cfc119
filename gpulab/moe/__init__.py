"""Chapter 11: MoE kernels and expert offload (FlashMoE, MixLoRA, HybriMoE).

    from gpulab.moe import torch_impl, kernels     # the layer step by step, torch and numba
    from gpulab.moe import mixlora                 # LoRA experts on a frozen FFN
    from gpulab.moe import offload                 # expert caches, prefetch, hybrid schedule

``torch_impl`` is the readable specification; ``kernels`` has the same functions as
numba.cuda kernels (route, permute, gather_rows, grouped_gemm, combine, moe_ffn) plus the
fused persistent kernel ``moe_ffn_fused``.
"""
from . import torch_impl
from .torch_impl import Permutation, Routing, load_balancing_loss

__all__ = ["torch_impl", "Permutation", "Routing", "load_balancing_loss"]

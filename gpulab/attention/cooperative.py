"""The CPU-GPU cooperative split of FastAttention (arXiv 2410.16663), in miniature.

FastAttention reached 256K tokens on 8 V100s by keeping part of K/V in host memory and letting
the CPU compute its share of attention while the GPU computes the rest. Softmax attention over
disjoint key sets merges exactly by the log-sum-exp (:func:`torch_impl.merge_partials`), so the
split changes nothing but where the work runs:

    keys [0, gpu_keys)      on the device     numba flash kernel   -> (O_gpu, LSE_gpu)
    keys [gpu_keys, Nk)     in (pinned) host  torch on the CPU     -> (O_cpu, LSE_cpu)
    O, LSE = merge(...)                        numba merge kernel

The two partials run at the same time: the CPU part in a worker thread while this thread
launches the kernel (on a GPU the launch is asynchronous; under the simulator the kernel itself
runs on the CPU, so the overlap is real but no faster). ``gpu_cap_bytes`` plays the GPU's
memory: the keys whose K and V do not fit stay on the host.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .. import runtime
from . import kernels, torch_impl

__all__ = ["keys_that_fit", "cooperative_attention", "Split"]


@dataclass(frozen=True)
class Split:
    """Where the keys went: ``gpu_keys`` on the device, ``cpu_keys`` in host memory."""
    gpu_keys: int
    cpu_keys: int
    gpu_bytes: int
    host_bytes: int
    pinned: bool


def keys_that_fit(cap_bytes: int, batch: int, heads: int, d: int, bytes_per=4) -> int:
    """How many keys' K and V (float32) fit in ``cap_bytes``: ``cap // (2 B H d 4)``."""
    if cap_bytes < 0:
        raise ValueError(f"gpu_cap_bytes must be >= 0, got {cap_bytes}")
    return int(cap_bytes // (2 * batch * heads * d * bytes_per))


def _host(x, pin: bool):
    x = x.to("cpu", torch.float32).contiguous()
    return x.pin_memory() if pin else x


def cooperative_attention(q, k, v, gpu_cap_bytes: int, scale=None):
    """Attention of q over all of k, v with only ``gpu_cap_bytes`` of K/V on the device:
    ``(O, LSE, Split)``, equal to :func:`torch_impl.attention` (full, non-causal) up to FP32
    rounding. q and the result live on the device; k, v may be anywhere."""
    torch_impl._check_qkv(q, k, v, max_d=kernels.MAX_D)
    B, H, nq, d = q.shape
    nk = k.shape[2]
    n_gpu = min(nk, keys_that_fit(gpu_cap_bytes, B, H, d))
    pin = runtime.ON_GPU and torch.cuda.is_available()
    k_host, v_host = _host(k[:, :, n_gpu:], pin), _host(v[:, :, n_gpu:], pin)
    k_dev = k[:, :, :n_gpu].to(runtime.device, torch.float32)
    v_dev = v[:, :, :n_gpu].to(runtime.device, torch.float32)
    q_dev = q.to(runtime.device, torch.float32)
    parts = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        cpu_part = None
        if nk - n_gpu > 0:
            cpu_part = pool.submit(torch_impl.attention, q.to("cpu", torch.float32), k_host, v_host, None, scale)
        if n_gpu > 0:
            parts.append(kernels.attention(q_dev, k_dev, v_dev, scale=scale))
        if cpu_part is not None:
            o_cpu, lse_cpu = cpu_part.result()
            parts.append((o_cpu.to(runtime.device), lse_cpu.to(runtime.device)))
    split = Split(n_gpu, nk - n_gpu, 2 * B * H * n_gpu * d * 4, 2 * B * H * (nk - n_gpu) * d * 4, pin)
    if not parts:   # no keys at all: every row sees nothing
        return (torch.zeros(B, H, nq, d, device=runtime.device),
                torch.full((B, H, nq), -math.inf, device=runtime.device), split)
    if len(parts) == 1:
        return (*parts[0], split)
    o, lse = kernels.merge_partials([p[0] for p in parts], [p[1] for p in parts])
    return o, lse, split

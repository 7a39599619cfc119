"""The machine's two ceilings, measured once and cached, and the roofline they give.

Every performance section of the course compares a measured time with the time the
hardware could not beat: the bytes a kernel must move over the copy bandwidth, or the
operations it must do over the FP32 peak. Datasheet numbers are leads, so gpulab measures
both on the machine itself (a large device-to-device copy counting bytes read plus
written; a large FP32 matrix product with TF32 off) and caches them per device in
``~/.cache/gpulab/peaks.json`` (``GPULAB_CACHE`` moves it).

The cache is a convenience, not a source to trust: a file is read only when this user
owns it and nobody else may write it (or its folder), and it is written private (0600).
A verifier, whose child runs untrusted code, uses :func:`trusted_peaks` instead: measured
in this process, once, and never read from any file another process could rewrite.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import runtime
from .harness import bench

__all__ = ["Peaks", "machine_peaks", "trusted_peaks", "cache_is_trustworthy", "roofline", "Roofline"]


@dataclass
class Peaks:
    device: str
    copy_gbps: float        # GB/s, bytes read + bytes written
    fp32_gflops: float      # GFLOP/s of an FP32 matrix product (TF32 off)
    clock: str              # how they were timed

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where memory-bound turns compute-bound."""
        return self.fp32_gflops / self.copy_gbps


def _cache_file() -> Path:
    root = Path(os.environ.get("GPULAB_CACHE", Path.home() / ".cache" / "gpulab"))
    return root / "peaks.json"


def _device_name() -> str:
    if runtime.ON_GPU:
        return torch.cuda.get_device_name(0)
    import platform

    return f"cpu {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _measure() -> Peaks:
    n_copy = runtime.pick(1 << 22, 1 << 26)           # float32 elements
    n_mm = runtime.pick(512, 4096)
    src = torch.rand(n_copy, device=runtime.device)
    dst = torch.empty_like(src)
    t_copy = bench(dst.copy_, src, name="copy").median_ms
    copy_gbps = 2 * src.numel() * 4 / (t_copy * 1e-3) / 1e9
    a = torch.rand(n_mm, n_mm, device=runtime.device)
    b = torch.rand(n_mm, n_mm, device=runtime.device)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        t_mm = bench(torch.mm, a, b, name="sgemm").median_ms
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    gflops = 2 * n_mm**3 / (t_mm * 1e-3) / 1e9
    clock = "cuda events" if runtime.ON_GPU else "cpu wall time"
    return Peaks(_device_name(), round(copy_gbps, 1), round(gflops, 1), clock)


def cache_is_trustworthy(path: Path) -> bool:
    """Owned by this user, and neither it nor its folder writable by anyone else."""
    try:
        for item in (path, path.parent):
            st = item.stat()
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return True


_MEASURED: dict[str, Peaks] = {}


def trusted_peaks() -> Peaks:
    """The peaks measured in this process (once per device), never read from a file."""
    name = _device_name()
    if name not in _MEASURED:
        _MEASURED[name] = _measure()
    return _MEASURED[name]


def machine_peaks(refresh: bool = False) -> Peaks:
    """Copy bandwidth and FP32 peak of the current device, measured once then cached."""
    path = _cache_file()
    name = _device_name()
    cache = {}
    if path.exists() and cache_is_trustworthy(path):
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}  # a damaged cache is re-measured, never fatal
    if not refresh and name in cache:
        return Peaks(**cache[name])
    peaks = _measure()
    cache[name] = asdict(peaks)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home still gets the numbers, just not cached
    return peaks


@dataclass
class Roofline:
    time_ms: float
    bytes_moved: float
    flops: float
    peaks: Peaks

    @property
    def achieved_gbps(self) -> float:
        return self.bytes_moved / (self.time_ms * 1e-3) / 1e9

    @property
    def achieved_gflops(self) -> float:
        return self.flops / (self.time_ms * 1e-3) / 1e9

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_moved if self.bytes_moved else float("inf")

    @property
    def bound_ms(self) -> float:
        """The floor: the larger of memory time and compute time."""
        return max(self.bytes_moved / (self.peaks.copy_gbps * 1e9),
                   self.flops / (self.peaks.fp32_gflops * 1e9)) * 1e3

    @property
    def limit(self) -> str:
        return "memory" if self.intensity < self.peaks.ridge else "compute"

    @property
    def fraction(self) -> float:
        """Share of the roofline reached: bound time over measured time (1.0 is the roof)."""
        return self.bound_ms / self.time_ms

    def __str__(self) -> str:
        return (f"{self.time_ms:.4g} ms; {self.achieved_gbps:.1f} GB/s, "
                f"{self.achieved_gflops:.1f} GFLOP/s; {self.limit}-bound floor "
                f"{self.bound_ms:.4g} ms = {100 * self.fraction:.0f}% of the roofline "
                f"on {self.peaks.device} ({self.peaks.clock})")

    __repr__ = __str__


def roofline(time_ms: float, bytes_moved: float, flops: float = 0.0, peaks: Peaks | None = None) -> Roofline:
    """Place a measured time on the roofline of this machine.

    ``bytes_moved``: the fewest bytes the work must read and write in device memory;
    ``flops``: the floating-point operations it must do.
    """
    if time_ms <= 0:
        raise ValueError(f"time_ms must be positive, got {time_ms}")
    return Roofline(time_ms, float(bytes_moved), float(flops), peaks or machine_peaks())

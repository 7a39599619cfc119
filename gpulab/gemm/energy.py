"""An energy meter on NVML's total-energy counter (``nvidia-ml-py``).

The paper (arXiv 2411.16954) read power with ``nvidia-smi`` over the whole process, and for
CUTLASS after the run had ended. This meter instead reads
``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the driver loaded) just before
and just after a loop of the work that lasts at least one second, and subtracts the idle
power measured over a quiet window first. Shorter windows are refused: NVML's documentation
of ``nvmlDeviceGetPowerUsage`` says that on Ampere (except GA100) and newer GPUs, Hopper
included, the board's power reading is an average over one second, so the sensors behind
these figures do not resolve a few milliseconds of work; a window of a second or more does.

    meter = open_meter()                       # NoMeter (every reading N/A) without a GPU or NVML
    reading = meter.measure(lambda: gemm(a, b), flops=2 * m * n * k)
    reading.joules_per_call, reading.mean_w, reading.gflop_per_j, reading.sm_clock_mhz
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["MIN_WINDOW_S", "EnergyReading", "EnergyMeter", "NoMeter", "open_meter"]

#: the shortest window the meter accepts, in seconds (Hopper's power reading is a 1 s average)
MIN_WINDOW_S = 1.0


@dataclass
class EnergyReading:
    """Energy of ``calls`` calls over ``seconds``; ``available=False`` (with ``reason``) when
    nothing could be measured, and then every figure is None."""

    available: bool
    reason: str = ""
    calls: int = 0
    seconds: float | None = None
    joules: float | None = None          # the counter's difference over the window
    idle_w: float | None = None          # power of the idle GPU, measured before
    flops: float | None = None           # per call, when given
    sm_clock_mhz: int | None = None
    temperature_c: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def mean_w(self) -> float | None:
        """Mean board power over the window."""
        return None if not self.available else self.joules / self.seconds

    @property
    def joules_above_idle(self) -> float | None:
        """What the work cost beyond the idle GPU: (mean W - idle W) x seconds."""
        return None if not self.available else self.joules - self.idle_w * self.seconds

    @property
    def joules_per_call(self) -> float | None:
        return None if not self.available else self.joules_above_idle / self.calls

    @property
    def gflop_per_j(self) -> float | None:
        """GFLOP per joule above idle (None without flops)."""
        if not self.available or not self.flops or self.joules_above_idle <= 0:
            return None
        return self.flops * self.calls / self.joules_above_idle / 1e9

    def __str__(self) -> str:
        if not self.available:
            return f"energy: N/A ({self.reason})"
        gfj = f", {self.gflop_per_j:.1f} GFLOP/J" if self.gflop_per_j is not None else ""
        return (f"energy: {self.joules_per_call * 1e3:.2f} mJ per call above idle over {self.calls} calls "
                f"in {self.seconds:.2f} s, mean {self.mean_w:.0f} W (idle {self.idle_w:.0f} W){gfj}, "
                f"SM {self.sm_clock_mhz} MHz, {self.temperature_c} C")


class EnergyMeter:
    """Energy of a loop of work on GPU ``index``, read from NVML's energy counter.

    ``nvml``: the pynvml module (a fake one in tests); ``clock`` and ``sleep``: the time
    source (injectable so a test runs in no time); ``sync``: what waits for the GPU to
    finish (torch.cuda.synchronize by default).
    """

    def __init__(self, nvml, index: int = 0, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, sync: Callable[[], None] | None = None):
        self.nvml, self.clock, self.sleep = nvml, clock, sleep
        self.sync = sync if sync is not None else _torch_sync
        nvml.nvmlInit()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self._idle_w: float | None = None

    def _energy_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3   # mJ -> J

    def idle_power(self, seconds: float = MIN_WINDOW_S, refresh: bool = False) -> float:
        """Mean power (W) of the idle GPU over ``seconds`` (measured once, then kept)."""
        _require_window(seconds)
        if self._idle_w is None or refresh:
            self.sync()
            e0, t0 = self._energy_j(), self.clock()
            self.sleep(seconds)
            e1, t1 = self._energy_j(), self.clock()
            self._idle_w = (e1 - e0) / (t1 - t0)
        return self._idle_w

    def measure(self, work: Callable[[], object], flops: float | None = None,
                min_seconds: float = MIN_WINDOW_S, max_calls: int = 1_000_000,
                warmup: bool = True) -> EnergyReading:
        """Run ``work`` (one call, asynchronous is fine) in a loop for at least
        ``min_seconds`` and return the energy of the loop. One call first, untimed (warm-up,
        compilation; ``warmup=False`` skips it for work already warm), and the idle power
        before that if not yet known."""
        _require_window(min_seconds)
        idle = self.idle_power()
        if warmup:
            work()
        self.sync()
        calls, e0, t0 = 0, self._energy_j(), self.clock()
        while True:
            work()
            calls += 1
            if calls < 8 or calls % 8 == 0 or calls >= max_calls:   # sync now and then, not every call
                self.sync()
                if self.clock() - t0 >= min_seconds or calls >= max_calls:
                    break
        e1, t1 = self._energy_j(), self.clock()
        if t1 - t0 < min_seconds:
            return EnergyReading(False, f"the loop stopped after {t1 - t0:.3f} s, below the {min_seconds} s window")
        nv = self.nvml
        return EnergyReading(
            True, calls=calls, seconds=t1 - t0, joules=e1 - e0, idle_w=idle, flops=flops,
            sm_clock_mhz=int(nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_SM)),
            temperature_c=int(nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU)))

    def close(self) -> None:
        self.nvml.nvmlShutdown()


class NoMeter:
    """The meter where none can be had: every reading is N/A, with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def idle_power(self, seconds: float = MIN_WINDOW_S, refresh: bool = False) -> None:
        return None

    def measure(self, work, flops=None, min_seconds: float = MIN_WINDOW_S, max_calls: int = 1_000_000,
                warmup: bool = True):
        _require_window(min_seconds)
        return EnergyReading(False, self.reason)

    def close(self) -> None:
        pass


def open_meter(index: int = 0, nvml=None) -> EnergyMeter | NoMeter:
    """An :class:`EnergyMeter` on GPU ``index``, or a :class:`NoMeter` saying why not (no
    GPU in use, nvidia-ml-py missing, NVML failing to start)."""
    from .. import runtime

    if nvml is None:
        if not runtime.ON_GPU:
            return NoMeter("no GPU in use (the simulator has no power to measure)")
        try:
            import pynvml as nvml   # noqa: PLC0415 (nvidia-ml-py: optional at import time)
        except ImportError:
            return NoMeter("nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        return EnergyMeter(nvml, index)
    except Exception as exc:   # noqa: BLE001 (NVMLError_*: no driver, no such GPU, no permission)
        return NoMeter(f"NVML did not start: {exc}")


def _require_window(seconds: float) -> None:
    if not seconds >= MIN_WINDOW_S:
        raise ValueError(f"a window of {seconds} s is too short: NVML's power reading is a "
                         f"{MIN_WINDOW_S:.0f} s average on Hopper, so measure at least {MIN_WINDOW_S} s")


def _torch_sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()

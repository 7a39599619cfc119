"""The NVML energy meter on a fake NVML: windows of at least 1 s, idle power subtracted,
N/A without a GPU; and the occupancy helpers."""
import pytest

import gpulab
from gpulab.gemm import energy as E, resources as R


class FakeNVML:
    """NVML with a fake clock: the board draws ``idle_w`` at rest and ``busy_w`` while
    work runs; every work call advances the clock by ``call_s``."""
    NVML_CLOCK_SM, NVML_TEMPERATURE_GPU = 1, 0

    def __init__(self, idle_w=80.0, busy_w=500.0, call_s=0.01):
        self.now, self.mj, self.idle_w, self.busy_w, self.call_s = 0.0, 0.0, idle_w, busy_w, call_s
        self.started = self.stopped = False

    def clock(self):
        return self.now

    def advance(self, seconds, watts):
        self.now += seconds
        self.mj += watts * seconds * 1e3

    def sleep(self, seconds):
        self.advance(seconds, self.idle_w)

    def work(self):
        self.advance(self.call_s, self.busy_w)

    def nvmlInit(self):
        self.started = True

    def nvmlShutdown(self):
        self.stopped = True

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return int(self.mj)                      # NVML: integer millijoules

    def nvmlDeviceGetClockInfo(self, handle, kind):
        assert kind == self.NVML_CLOCK_SM
        return 1980

    def nvmlDeviceGetTemperature(self, handle, kind):
        return 41


def _meter(fake):
    return E.EnergyMeter(fake, clock=fake.clock, sleep=fake.sleep, sync=lambda: None)


def test_meter_subtracts_idle_and_reports_per_call():
    fake = FakeNVML()
    meter = _meter(fake)
    r = meter.measure(fake.work, flops=2e9)
    assert fake.started and r.available and r.seconds >= 1.0
    assert r.idle_w == pytest.approx(80.0, rel=1e-3)
    assert r.mean_w == pytest.approx(500.0, rel=1e-3)
    assert r.joules_per_call == pytest.approx((500 - 80) * 0.01, rel=1e-3)
    assert r.gflop_per_j == pytest.approx(2.0 / ((500 - 80) * 0.01), rel=1e-3)
    assert (r.sm_clock_mhz, r.temperature_c) == (1980, 41)
    assert "mJ per call above idle" in str(r)
    meter.close()
    assert fake.stopped


def test_meter_refuses_windows_under_one_second():
    fake = FakeNVML()
    with pytest.raises(ValueError, match="too short"):
        _meter(fake).measure(fake.work, min_seconds=0.2)
    with pytest.raises(ValueError, match="too short"):
        _meter(fake).idle_power(seconds=0.5)


def test_slow_work_fills_the_window_with_few_calls():
    fake = FakeNVML(call_s=0.6)
    r = _meter(fake).measure(fake.work)
    assert r.calls == 2 and r.seconds == pytest.approx(1.2)


def test_no_gpu_means_n_a():
    meter = E.open_meter()
    if not gpulab.ON_GPU:
        reading = meter.measure(lambda: None)
        assert not reading.available and reading.mean_w is None and "N/A" in str(reading)


def test_a_failing_nvml_gives_n_a_with_the_reason():
    class Broken(FakeNVML):
        def nvmlInit(self):
            raise RuntimeError("driver not loaded")
    meter = E.open_meter(nvml=Broken())
    assert isinstance(meter, E.NoMeter) and "driver not loaded" in meter.reason


def test_waves_and_declared_shared_memory():
    assert R.waves(264, 132, 1) == 2 and R.waves(265, 132, 1) == 3 and R.waves(0, 132, 2) == 0
    with pytest.raises(ValueError):
        R.waves(10, 0, 1)
    assert R.shared_bytes_of("tiled", 16) == 2 * 16 * 16 * 4       # the paper's 2 T^2 floats
    assert R.shared_bytes_of("coalesced") == 0
    from gpulab.gemm import kernels as K
    assert R.shared_bytes_of("double_buffered", cfg=K.REGTILE_2D) == 2 * K.REGTILE_2D.shared_bytes
    res = R.resources_of("tiled", 100, 100, tile=16)
    assert res.tiles == 49 and res.threads == 256 and res.shared_bytes == 2048
    if not gpulab.ON_GPU:
        assert res.blocks_per_sm is None and "registers unknown" in res.limiter
        with pytest.raises(RuntimeError, match="only on a GPU"):
            R.get_regs_per_thread(K.TILED_16, ())

"""Predicting a GEMM's time, power and energy from its shape and kernel: the paper's random
forest, an analytic model and a hybrid of the two, scored honestly.

The sweep is a CSV with one row per (M, N, K, kernel, tile) run (``SWEEP_COLUMNS``):
``time_ms`` the median time of a call, ``power_w`` the mean board power over a window of at
least 1 s of calls (:mod:`.energy`), ``energy_mj`` the board energy per call,
``blocks_per_sm`` the blocks of the kernel that fit on an SM, ``source`` where the row
comes from (``"H200 ..."`` for a measured row, ``"synthetic ..."`` for :func:`synthetic_sweep`).

Models, each with ``fit(rows)`` and ``predict(rows) -> (time_ms, power_w)``:

- :class:`ForestModel`, the paper's (arXiv 2411.16954; GPPerf's
  ``cutlass-analysis/cutlass_predictor.py``): scikit-learn's ``MultiOutputRegressor`` of
  ``RandomForestRegressor(n_estimators=100, max_depth=6)``, one forest per target (runtime,
  power), on the features m, n, k, block shape, FLOPs, bytes (m k + k n + m n floats) and
  arithmetic intensity (``FEATURES``). (GPPerf also clips every column, targets included, to
  its 1st-99th percentiles before splitting; this chapter does not.)
- :class:`AnalyticModel`: a roofline with waves and tile reuse. A launch of ``tiles`` blocks
  runs in ``waves`` rounds of ``SMs x blocks_per_sm``; its bytes count A re-read once per
  column of tiles and B once per row of tiles; time = waves/ideal-waves x max(FLOPs / peak,
  bytes / bandwidth) / efficiency + launch, one efficiency per kernel fitted on the
  training rows; power = a per-kernel line in the achieved fraction of peak.
- :class:`HybridModel`: the analytic model, with a forest fitted to what it gets wrong
  (log of measured / analytic time; measured - analytic power).

Scores (:func:`score`): R², mean and median absolute percentage error. Two splits: the
paper's random 80/20 split of rows (:func:`random_split`), where the same shape lands in
both train and test with another kernel, and held-out shapes (:func:`shape_split`), where
no (M, N, K) of the test set was seen in training: what predicting a new shape means.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

__all__ = ["SWEEP_COLUMNS", "FEATURES", "H200", "read_sweep", "write_sweep", "features", "targets",
           "reused_bytes", "random_split", "shape_split", "score", "ForestModel", "AnalyticModel",
           "HybridModel", "evaluate", "synthetic_sweep"]

SWEEP_COLUMNS = ("m", "n", "k", "kernel", "tile", "block_m", "block_n", "block_k", "threads",
                 "blocks_per_sm", "time_ms", "power_w", "energy_mj", "source")
_INTS = ("m", "n", "k", "tile", "block_m", "block_n", "block_k", "threads", "blocks_per_sm")
_FLOATS = ("time_ms", "power_w", "energy_mj")
#: the paper's features: m, n, k, block shape, FLOPs, bytes, arithmetic intensity
FEATURES = ("m", "n", "k", "block_m", "block_n", "block_k", "flops", "bytes", "intensity")

#: the H200's ceilings the analytic model starts from: SMs, rated FP32 (TFLOP/s), HBM3e (TB/s)
H200 = {"sms": 132, "fp32_tflops": 66.9, "hbm_tbps": 4.8, "launch_ms": 0.005}


# ------------------------------------------------------------------ the sweep file

def read_sweep(path: str | Path) -> list[dict]:
    """The rows of a sweep CSV, numbers as numbers; refuses a file without every column."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in SWEEP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a sweep file, columns {missing} are missing (expected {SWEEP_COLUMNS})")
        return [_typed(row, f"{path}, line {i + 2}") for i, row in enumerate(reader)]


def _typed(row: dict, where: str) -> dict:
    out = dict(row)
    try:
        for c in _INTS:
            out[c] = int(row[c])
        for c in _FLOATS:
            out[c] = float(row[c])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return out


def write_sweep(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` (dicts with every column of ``SWEEP_COLUMNS``) as a sweep CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            missing = [c for c in SWEEP_COLUMNS if c not in row]
            if missing:
                raise ValueError(f"a sweep row lacks {missing}: {row}")
            writer.writerow(row)
    return path


# ------------------------------------------------------------------ features and targets

def _flops(r) -> float:
    return 2.0 * r["m"] * r["n"] * r["k"]


def _min_bytes(r) -> float:
    return 4.0 * (r["m"] * r["k"] + r["k"] * r["n"] + r["m"] * r["n"])


def reused_bytes(r) -> float:
    """Global-memory bytes of a tiled GEMM: A is read once per column of output tiles, B
    once per row of tiles, the output written once (caches ignored)."""
    tiles_m = math.ceil(r["m"] / r["block_m"])
    tiles_n = math.ceil(r["n"] / r["block_n"])
    return 4.0 * (r["m"] * r["k"] * tiles_n + r["k"] * r["n"] * tiles_m + r["m"] * r["n"])


def features(rows: list[dict]) -> np.ndarray:
    """The paper's features (``FEATURES``), one row per run: bytes are the minimum a GEMM
    moves, intensity FLOPs per such byte."""
    return np.array([[r["m"], r["n"], r["k"], r["block_m"], r["block_n"], r["block_k"], _flops(r),
                      _min_bytes(r), _flops(r) / _min_bytes(r)] for r in rows], dtype=np.float64)


def targets(rows: list[dict]) -> np.ndarray:
    """(time_ms, power_w) per row."""
    return np.array([[r["time_ms"], r["power_w"]] for r in rows], dtype=np.float64)


# ------------------------------------------------------------------ splits and scores

def random_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split: a random ``test_fraction`` of the rows for testing."""
    _check_fraction(test_fraction)
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(test_fraction * n))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def shape_split(rows: list[dict], test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out shapes: a random ``test_fraction`` of the distinct (M, N, K), every run of
    those shapes (any kernel) for testing, so no test shape was seen in training."""
    _check_fraction(test_fraction)
    shapes = sorted({(r["m"], r["n"], r["k"]) for r in rows})
    order = np.random.default_rng(seed).permutation(len(shapes))
    held = {shapes[i] for i in order[:max(1, round(test_fraction * len(shapes)))]}
    is_test = np.array([(r["m"], r["n"], r["k"]) in held for r in rows])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _check_fraction(f: float) -> None:
    if not 0 < f < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {f}")


def score(y_true, y_pred) -> dict:
    """R² (1 - residual sum of squares / total sum of squares), and the mean and median of
    |pred - true| / true in percent."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.size < 2:
        raise ValueError(f"need two equal-shaped vectors of at least 2 values, got {y_true.shape} and {y_pred.shape}")
    total = np.sum((y_true - y_true.mean()) ** 2)
    r2 = 1.0 - np.sum((y_true - y_pred) ** 2) / total if total > 0 else float("nan")
    pct = 100.0 * np.abs(y_pred - y_true) / np.abs(y_true)
    return {"r2": float(r2), "mean_pct": float(pct.mean()), "median_pct": float(np.median(pct))}


# ------------------------------------------------------------------ the models

class ForestModel:
    """The paper's model: MultiOutputRegressor(RandomForestRegressor(n_estimators=100,
    max_depth=6)), one forest per target (runtime, power), on ``FEATURES``."""

    def __init__(self, seed: int = 0, trees: int = 100, depth: int = 6):
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.multioutput import MultiOutputRegressor

        self.forest = MultiOutputRegressor(
            RandomForestRegressor(n_estimators=trees, max_depth=depth, random_state=seed, n_jobs=1))

    def fit(self, rows: list[dict]) -> "ForestModel":
        self.forest.fit(features(rows), targets(rows))
        return self

    def predict(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        y = self.forest.predict(features(rows))
        return y[:, 0], y[:, 1]


class AnalyticModel:
    """Roofline + waves + tile reuse, one efficiency and one power line per kernel."""

    def __init__(self, machine: dict | None = None):
        self.machine = dict(H200 if machine is None else machine)
        self.efficiency: dict[str, float] = {}
        self.power_line: dict[str, tuple[float, float]] = {}

    @staticmethod
    def key(r) -> str:
        return f"{r['kernel']}/{r['tile']}" if r["kernel"] == "tiled" else r["kernel"]

    def ideal_ms(self, r) -> float:
        """The roofline time stretched by the tail wave, before the kernel's efficiency."""
        mc = self.machine
        tiles = math.ceil(r["m"] / r["block_m"]) * math.ceil(r["n"] / r["block_n"])
        at_once = mc["sms"] * max(1, r["blocks_per_sm"])
        waves = math.ceil(tiles / at_once)
        stretch = waves * at_once / tiles          # >= 1: the last wave's idle slots
        compute_ms = _flops(r) / (mc["fp32_tflops"] * 1e9)
        memory_ms = reused_bytes(r) / (mc["hbm_tbps"] * 1e9)
        return stretch * max(compute_ms, memory_ms)

    def fit(self, rows: list[dict]) -> "AnalyticModel":
        launch = self.machine["launch_ms"]
        by_kernel: dict[str, list] = {}
        for r in rows:
            by_kernel.setdefault(self.key(r), []).append(r)
        for name, group in by_kernel.items():
            ratios = [self.ideal_ms(r) / max(r["time_ms"] - launch, 1e-6) for r in group]
            self.efficiency[name] = float(np.exp(np.median(np.log(ratios))))
            fraction = np.array([self._fraction(r, r["time_ms"]) for r in group])
            power = np.array([r["power_w"] for r in group])
            if len(group) >= 2 and np.ptp(fraction) > 0:
                slope, intercept = np.polyfit(fraction, power, 1)
            else:
                slope, intercept = 0.0, float(power.mean())
            self.power_line[name] = (float(intercept), float(slope))
        return self

    def _fraction(self, r, time_ms: float) -> float:
        """Achieved FP32 rate over the peak."""
        return _flops(r) / (time_ms * 1e9) / self.machine["fp32_tflops"]

    def _known(self, r) -> str:
        name = self.key(r)
        if name not in self.efficiency:
            raise ValueError(f"the analytic model was not fitted on kernel {name!r} (fitted: {sorted(self.efficiency)})")
        return name

    def predict(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        times, powers = [], []
        for r in rows:
            name = self._known(r)
            t = self.ideal_ms(r) / self.efficiency[name] + self.machine["launch_ms"]
            intercept, slope = self.power_line[name]
            times.append(t)
            powers.append(intercept + slope * self._fraction(r, t))
        return np.array(times), np.array(powers)


class HybridModel:
    """The analytic model plus a forest (the paper's settings) fitted to its errors: log of
    measured / analytic time, and measured - analytic power, from the paper's features and
    the analytic predictions."""

    def __init__(self, seed: int = 0, machine: dict | None = None):
        from sklearn.ensemble import RandomForestRegressor

        self.analytic = AnalyticModel(machine)
        self.forest = RandomForestRegressor(n_estimators=100, max_depth=6, random_state=seed, n_jobs=1)

    def _inputs(self, rows):
        t, p = self.analytic.predict(rows)
        return np.column_stack([features(rows), np.log(t), p]), t, p

    def fit(self, rows: list[dict]) -> "HybridModel":
        self.analytic.fit(rows)
        x, t, p = self._inputs(rows)
        y = targets(rows)
        self.forest.fit(x, np.column_stack([np.log(y[:, 0] / t), y[:, 1] - p]))
        return self

    def predict(self, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x, t, p = self._inputs(rows)
        fix = self.forest.predict(x)
        return t * np.exp(fix[:, 0]), p + fix[:, 1]


def evaluate(model, rows: list[dict], split: tuple) -> dict:
    """Fit ``model`` on the split's training rows, score time, power and energy (power x
    time per call, against ``energy_mj``) on its test rows."""
    train, test = split
    train_rows, test_rows = [rows[i] for i in train], [rows[i] for i in test]
    model.fit(train_rows)
    t, p = model.predict(test_rows)
    y = targets(test_rows)
    energy = np.array([r["energy_mj"] for r in test_rows])
    return {"time": score(y[:, 0], t), "power": score(y[:, 1], p), "energy": score(energy, t * p),
            "train": len(train), "test": len(test)}


# ------------------------------------------------------------------ a synthetic sweep

#: the synthetic machine's kernels: (kernel, tile, block_m, block_n, block_k, threads,
#: blocks per SM it assumes, FP32 efficiency it assumes)
_SYNTHETIC_KERNELS = (
    ("tiled", 8, 8, 8, 8, 64, 32, 0.08), ("tiled", 16, 16, 16, 16, 256, 8, 0.11),
    ("tiled", 32, 32, 32, 32, 1024, 2, 0.10), ("regtile1d", 0, 64, 64, 8, 512, 4, 0.22),
    ("regtile2d", 0, 128, 128, 8, 256, 2, 0.33), ("double_buffered", 0, 128, 128, 8, 256, 2, 0.36))
_SYNTHETIC_SIZES = (256, 384, 500, 1000, 1024, 1500, 2048, 3000, 4096, 5000, 6144, 8192)


def synthetic_sweep(shapes: int = 60, seed: int = 0) -> list[dict]:
    """A SYNTHETIC sweep (no GPU measured it): a made-up machine with effects the analytic
    model lacks (a misaligned K costs 10%, a working set that fits in a 50 MB L2 halves
    the bytes, time noise of 3%, power noise of 2%), for running the models under the
    simulator. Its rows say ``source = "synthetic (not measured)"``; the H200 sweep of
    ``benchmarks/02_gemm.py --sweep`` replaces it."""
    rng = np.random.default_rng(seed)
    picked = set()
    while len(picked) < shapes:
        picked.add(tuple(int(x) for x in rng.choice(_SYNTHETIC_SIZES, 3)))
    rows = []
    for m, n, k in sorted(picked):
        for kernel, tile, bm, bn, bk, threads, fit, eff in _SYNTHETIC_KERNELS:
            r = {"m": m, "n": n, "k": k, "kernel": kernel, "tile": tile, "block_m": bm, "block_n": bn,
                 "block_k": bk, "threads": threads, "blocks_per_sm": fit}
            tiles = math.ceil(m / bm) * math.ceil(n / bn)
            at_once = H200["sms"] * fit
            stretch = math.ceil(tiles / at_once) * at_once / tiles
            l2_hit = 0.5 if 4 * (m * k + k * n + m * n) < 50e6 else 1.0
            compute = 2.0 * m * n * k / (H200["fp32_tflops"] * 1e9 * eff)
            memory = l2_hit * reused_bytes(r) / (H200["hbm_tbps"] * 1e9 * 0.7)
            misaligned = 1.1 if k % 4 else 1.0
            t = stretch * max(compute, memory) * misaligned * rng.lognormal(0, 0.03) + 0.006
            busy = min(1.0, 2.0 * m * n * k / (t * 1e9) / H200["fp32_tflops"] / 0.4)
            power = (120 + 480 * busy ** 0.7) * rng.lognormal(0, 0.02)
            rows.append(dict(r, time_ms=t, power_w=power, energy_mj=power * t,
                             source="synthetic (not measured)"))
    return rows

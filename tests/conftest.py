import os

os.environ.setdefault("GPULAB_QUIET", "1")

import pytest  # noqa: E402

import gpulab  # noqa: E402  (before numba: it picks GPU or simulator)


def pytest_collection_modifyitems(config, items):
    if gpulab.ON_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (gpulab runs on the simulator here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""Mode selection, presets and tensor views."""
import os
import subprocess
import sys

import pytest
import torch

import gpulab
from gpulab import runtime


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = dict(os.environ, GPULAB_QUIET="0", **env)
    full.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_forced_simulator_mode_says_so_once():
    r = _run("import gpulab, gpulab.basics; print(gpulab.MODE)", GPULAB_MODE="sim")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sim"
    assert r.stderr.count("CUDA simulator") == 1


def test_bad_mode_is_a_clear_error():
    r = _run("import gpulab", GPULAB_MODE="turbo")
    assert r.returncode != 0
    assert "GPULAB_MODE='turbo' is not understood" in r.stderr


def test_numba_imported_first_in_other_mode_is_refused():
    # numba imported for the GPU, then gpulab asked for the simulator
    r = _run("import os; os.environ['NUMBA_ENABLE_CUDASIM']='0'; import numba; "
             "os.environ['GPULAB_MODE']='sim'; import gpulab")
    assert r.returncode != 0
    assert "numba was imported before gpulab" in r.stderr
    assert "Restart the kernel" in r.stderr


@pytest.mark.skipif(gpulab.ON_GPU, reason="checks the message on a machine without a GPU")
def test_forcing_gpu_without_one_is_a_clear_error():
    r = _run("import gpulab", GPULAB_MODE="gpu")
    assert r.returncode != 0
    assert "no usable CUDA GPU" in r.stderr


def test_pick_and_presets():
    assert gpulab.pick(sim=1, gpu=2) == (2 if gpulab.ON_GPU else 1)
    sim, gpu = gpulab.presets()["vector"]
    assert gpulab.preset("vector") == (gpu if gpulab.ON_GPU else sim)
    gpulab.register_preset("test_only", 3, 4)
    assert gpulab.preset("test_only") in (3, 4)
    with pytest.raises(KeyError, match="known presets"):
        gpulab.preset("no_such_thing")


def test_kernel_array_shares_memory():
    t = gpulab.zeros(5)
    view = gpulab.as_kernel_array(t)
    if gpulab.SIMULATOR:
        view[2] = 7.0
        assert t[2].item() == 7.0
    else:
        assert view.__cuda_array_interface__["data"][0] == t.data_ptr()


def test_kernel_array_rejects_non_tensors_and_bfloat16():
    with pytest.raises(TypeError, match="torch.Tensor"):
        gpulab.as_kernel_array([1, 2, 3])
    if gpulab.SIMULATOR:
        with pytest.raises(TypeError, match="bfloat16"):
            gpulab.as_kernel_array(torch.zeros(3, dtype=torch.bfloat16))


def test_factories_put_tensors_on_the_device():
    assert gpulab.randn(3, 4).device.type == gpulab.device.type
    assert gpulab.zeros(2, dtype=torch.int32).dtype == torch.int32


def test_describe_has_versions():
    info = runtime.describe()
    assert info["mode"] == gpulab.MODE
    assert "torch" in info and "numba" in info

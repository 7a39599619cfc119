# Source this on the GPU machine (the course's device runs): installs the carried wheels
# (.whl/, built by ../shared/tools/gpu-wheelhouse) into /tmp/site and puts gpulab on the path.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GPULAB_MODE=gpu

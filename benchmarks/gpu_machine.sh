#!/usr/bin/env bash
# Prepare the GPU machine (Vulkan loader debs and wgpu wheels carried in) and run commands.
#   benchmarks/gpu_machine.sh CMD...   (each CMD a quoted shell line; results under $OUT)
# Run the kernel tests on the GPU with `python3 -P -m pytest tests/kernels` (-P: the repo's own
# bitswarm/ folder must not shadow the symlinked package below).
# Carry `.gl` (Vulkan loader .debs) and `.whl` (wgpu-py 0.32.0, cffi, pycparser, rendercanvas
# wheels, and wgpudawn 0.32.0.4 for the Dawn runtime: with it, BITSWARM_GPU_RUNTIME=auto runs
# Dawn, =wgpu forces wgpu-native); torch, transformers, peft, numpy and safetensors are
# already on that machine.
set -uo pipefail
cd "$(dirname "$0")/.."
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
# The editable install maps bitswarm.kernels -> kernels/ etc.; a package of symlinks does the same.
mkdir -p /tmp/bs/bitswarm && cp bitswarm/*.py /tmp/bs/bitswarm/
for d in kernels formats training node federation simulations; do ln -sfn "$PWD/$d" /tmp/bs/bitswarm/$d; done
export PYTHONPATH=/tmp/site:/tmp/bs PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for cmd in "$@"; do
  echo "+ $cmd"
  bash -c "$cmd" 2>&1 | grep -v XDG_RUNTIME_DIR | tee -a "$OUT/log.txt"
done

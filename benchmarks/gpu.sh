#!/usr/bin/env bash
# The CUDA path on a lent GPU machine, in one short run (issue 16): LoRA → LoRA (32 Vicuna-7B-shaped layers),
# LoRA → full (2 layers + embeddings and head) and one dense SSAM merge, each on device cuda and on the CPU,
# checked against each other (≤ 1e-4 relative on the merged updates), with wall times and peak GPU memory.
#
#   bash benchmarks/gpu.sh                  # on the GPU machine (its image's python3 holds a CUDA torch)
#   bash benchmarks/gpu.sh --cpu-dry-run    # here: the same checks, tiny, both sides on the CPU
#   bash benchmarks/gpu.sh --fetch-wheels   # here, before a device run: the wheels the GPU image lacks, into .whl/
#
# The GPU image (see the device notes) has torch 2.11 (+cu130; ssam accepts 2.1–2.13), safetensors, numpy, typer,
# rich and pyyaml, but not pydantic: --fetch-wheels downloads pydantic and its compiled core for CPython 3.12 into
# .whl/ (git-ignored through .git/info/exclude), and the device run installs them from there (nothing can be fetched
# on that machine). Inputs are generated there by benchmarks/make_checkpoints.py (≈ 3 GB, a few minutes on 16
# cores), so nothing large travels. Results: benchmarks/out/gpu/report.json, and a copy under $OUT when set.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
case "${1:-}" in
  --fetch-wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    version=$("$PY" -c "import pydantic, pydantic_core; print(pydantic.VERSION, pydantic_core.__version__)")
    read -r pyd core <<< "$version"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "pydantic==$pyd" "pydantic-core==$core" annotated-types typing-inspection
    ls -la .whl
    exit 0 ;;
  --cpu-dry-run)
    export CUDA_VISIBLE_DEVICES=""
    exec env PYTHONPATH=. "$PY" benchmarks/gpu_check.py --device cpu --tiny ;;
esac

if ! "$PY" -c "import pydantic" 2>/dev/null; then
  [ -d .whl ] || { echo "pydantic missing and no .whl/: run 'bash benchmarks/gpu.sh --fetch-wheels' first" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export THP_MEM_ALLOC_ENABLE=1  # as `ssam merge` sets it for full outputs (ssam_cli/allocator.py); gpu_check calls the API
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
status=0
timeout 540 "$PY" benchmarks/gpu_check.py --device cuda "$@" || status=$?
if [ -n "${OUT:-}" ] && [ -f benchmarks/out/gpu/report.json ]; then cp benchmarks/out/gpu/report.json "$OUT/"; fi
exit $status

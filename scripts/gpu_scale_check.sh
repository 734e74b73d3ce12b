#!/usr/bin/env bash
# GPU check of the ray executor, one command: install the toolkit with its scale extra in a fresh venv, then run
# benchmarks/bench_scale.py (the SL-CAI critique round through Ray Data + vLLM against raw vLLM, dummy 7B weights).
#
#   bash scripts/gpu_scale_check.sh                          # defaults: 1024 critiques x 128 tokens, Llama-7B shapes
#   bash scripts/gpu_scale_check.sh --prompts 2048 --shape qwen2.5-7b
#
# Needs an NVIDIA GPU (16 GB+ free for one 7B engine in bf16), Python 3.11 and the package registry: vllm 0.29.0,
# ray 2.60.0 and torch 2.13.0 with CUDA are a few GB to download. Sized to finish within 10 minutes on one H100/H200
# (install ~3-5 min, two engine start-ups ~1-2 min each, generation well under a minute). The venv (default
# .cache/scale-venv, ignored by git; CAI_SCALE_VENV moves it) is reused by later runs. The last line printed is the
# benchmark's JSON line; the whole log is also written to .cache/gpu_scale_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CAI_SCALE_VENV:-.cache/scale-venv}"
PY="${PYTHON:-python3.11}"
LOG=.cache/gpu_scale_check.log
mkdir -p .cache
exec > >(tee "$LOG") 2>&1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, at the toolkit's pin, so nothing pulls another build; then the toolkit with the scale extra
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e '.[scale]'
"$VENV/bin/python" -m pip check
"$VENV/bin/python" - <<'PY'
from cai.executors.versions import check_versions
print("versions:", check_versions("vllm"))
PY
echo "installed in $(( $(date +%s) - start )) s"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled
"$VENV/bin/python" -c "from cai.backends.embedded import embedded_model_dir; embedded_model_dir()"
"$VENV/bin/python" benchmarks/bench_scale.py "$@"
echo "total $(( $(date +%s) - start )) s"

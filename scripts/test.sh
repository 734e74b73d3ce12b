#!/usr/bin/env bash
# Set up (or reuse) .venv and run the test suite: unit tests with the fake backend, CLI tests, a real kill-and-resume
# test and real-model smoke tests of each stage on the embedded model. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium renders the HTML report in tests (Debian package; skipped with a note where apt is unavailable).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: could not install chromium; the browser test of the report will be skipped"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Convert the embedded model once up front so no test pays for it under a timeout.
.venv/bin/python -c "from cai.backends.embedded import embedded_model_dir; print('embedded model:', embedded_model_dir())"
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"

#!/usr/bin/env bash
# Set up, then run the test suite (real CASIA-B tests read ../shared/data/casia-b).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q -p no:cacheprovider "$@"

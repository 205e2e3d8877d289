#!/usr/bin/env bash
# Set up, then run the main job: import CASIA-B (once), QGait W4A4 from the zoo's FP model (--retrain: train it
# first), evaluate, print the summary, export int8, check parity, benchmark (qgait run --help).
# Usage: bash scripts/main.sh [--quick] [--retrain] [--data PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec qgait run "$@"

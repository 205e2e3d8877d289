#!/usr/bin/env bash
# Set up, then run the main job: import CASIA-B (once), train the CPU recipe, evaluate, print the table.
# Usage: bash scripts/main.sh [--quick] [--data PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec qgait run "$@"

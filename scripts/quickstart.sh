#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the main job. Extra arguments go to the job.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python scripts/quickstart.py "$@"

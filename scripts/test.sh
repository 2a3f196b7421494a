#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the linter and the test suite. Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m slow` for the long tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
python -m pytest "$@"

#!/usr/bin/env bash
# Sets up .venv/ if needed, then runs the lint and the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache  # the layering contracts in pyproject.toml
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Sets up .venv/ if needed, then runs MedSynth (no arguments: the demo; or any subcommand).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/medsynth" "$@"

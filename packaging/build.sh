#!/usr/bin/env bash
# Builds the one-folder app dist/medsynth/ from the project's .venv (set up first by ./run.sh or ./test.sh)
# and prints its size. DIST and WORK override where the app and PyInstaller's scratch files go.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
dist="${DIST:-$root/dist}"
work="${WORK:-$root/build/pyinstaller}"
"$root/.venv/bin/python" -m PyInstaller --noconfirm --log-level WARN --distpath "$dist" --workpath "$work" \
  "$root/packaging/medsynth.spec"
echo "built $dist/medsynth ($(du -sh "$dist/medsynth" | cut -f1))"

#!/usr/bin/env bash
# Builds the one-folder app dist/medsynth/ from the project's .venv (set up here if missing) and the archive to hand
# out, dist/medsynth-VERSION-PLATFORM-VARIANT.tar.gz (VARIANT: cpu, or cudaX.Y with a CUDA torch); prints both sizes.
# DIST and WORK override where the app and PyInstaller's scratch files go; NO_ARCHIVE=1 skips the archive.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
dist="${DIST:-$root/dist}"
work="${WORK:-$root/build/pyinstaller}"
"$root/.venv/bin/python" -m PyInstaller --noconfirm --log-level WARN --distpath "$dist" --workpath "$work" \
  "$root/packaging/medsynth.spec"
app="$dist/medsynth"
echo "built $app: $(du -sm "$app" | cut -f1) MB"
if [ "${NO_ARCHIVE:-0}" != "1" ]; then
  name="$("$root/.venv/bin/python" - "$app/_internal/build-info.json" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
print(f"medsynth-{info['medsynth']}-{info['platform']}-{info['variant']}")
EOF
)"
  archive="$dist/$name.tar.gz"
  # The folder unpacks as medsynth/, whatever the archive is called.
  tar -C "$dist" -cf - medsynth | gzip -6 > "$archive.part"
  mv "$archive.part" "$archive"
  echo "archive $archive: $(du -sm "$archive" | cut -f1) MB"
fi

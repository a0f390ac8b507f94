#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs MedSynth into it, choosing the torch
# build for this machine: CUDA where an NVIDIA GPU answers, CPU elsewhere (a CUDA build is
# several GB that a CPU-only machine would download for nothing). Re-running is cheap:
# nothing is reinstalled unless pyproject.toml or this script changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
TORCH_VERSION="${MEDSYNTH_TORCH_VERSION:-2.13.0}"

stamp="$venv/.medsynth-setup"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/medsynth" ]; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "medsynth setup: creating $venv" >&2
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "medsynth setup: NVIDIA GPU found; installing the CUDA build of torch $TORCH_VERSION" >&2
    "${pip[@]}" "torch==$TORCH_VERSION"
  else
    echo "medsynth setup: no NVIDIA GPU; installing the CPU build of torch $TORCH_VERSION" >&2
    # A CPU wheel already on this machine (pip's find-links) is taken first; otherwise
    # PyTorch's CPU index on Linux, where PyPI's default wheel is the CUDA build.
    if ! "${pip[@]}" --no-index --no-deps "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
      if [ "$(uname -s)" = "Linux" ]; then
        "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==$TORCH_VERSION+cpu"
      else
        "${pip[@]}" "torch==$TORCH_VERSION"
      fi
    fi
  fi
fi

echo "medsynth setup: installing MedSynth and its dependencies" >&2
"${pip[@]}" -e "$root[dev]"
if "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
  # diffusers imports torchvision whenever it is present, and a mismatched one breaks it.
  echo "medsynth setup: removing torchvision (not used; it breaks diffusers beside this torch)" >&2
  "$venv/bin/python" -m pip uninstall -y -q torchvision
fi
echo "$want" > "$stamp"

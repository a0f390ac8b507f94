#!/usr/bin/env bash
# Adds MedSynth to the current user's application menu and makes it an "Open With" choice for .h5, .nii and .nii.gz
# files (no root needed):
#     install-desktop-entry.sh [--uninstall] [APP_FOLDER]
# APP_FOLDER is the unpacked app (the folder holding the `medsynth` launcher and share/); it defaults to the folder
# this script is in. Run from packaging/ of a source checkout, it installs the checkout's .venv/bin/medsynth instead.
# Installing twice is harmless; --uninstall removes exactly the files installing wrote.
set -euo pipefail

prog="$(basename "${BASH_SOURCE[0]}")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

fail() {
  echo "$prog: error: $*" >&2
  exit 2
}

uninstall=0
folder=""
for arg in "$@"; do
  case "$arg" in
    --uninstall) uninstall=1 ;;
    -h | --help)
      sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    -*) fail "unknown option $arg (usage: $prog [--uninstall] [APP_FOLDER])" ;;
    *)
      [[ -z "$folder" ]] || fail "more than one APP_FOLDER given: $folder and $arg"
      folder="$arg"
      ;;
  esac
done

data="${XDG_DATA_HOME:-$HOME/.local/share}"
desktop_dst="$data/applications/medsynth.desktop"
svg_dst="$data/icons/hicolor/scalable/apps/medsynth.svg"
png_dst="$data/icons/hicolor/256x256/apps/medsynth.png"
mime_dst="$data/mime/packages/medsynth.xml"

refresh() {
  # Menus and file managers read these caches; each tool is optional (a minimal desktop lacks some), so a missing
  # one is skipped and a failing one only warned about: the files themselves are in place either way.
  if command -v update-mime-database >/dev/null && [[ -d "$data/mime/packages" ]]; then
    update-mime-database "$data/mime" || echo "$prog: warning: update-mime-database failed" >&2
  fi
  if command -v update-desktop-database >/dev/null && [[ -d "$data/applications" ]]; then
    update-desktop-database -q "$data/applications" || echo "$prog: warning: update-desktop-database failed" >&2
  fi
  if command -v gtk-update-icon-cache >/dev/null && [[ -d "$data/icons/hicolor" ]]; then
    # -t: the user's hicolor folder has no index.theme of its own.
    gtk-update-icon-cache -q -t -f "$data/icons/hicolor" || echo "$prog: warning: gtk-update-icon-cache failed" >&2
  fi
}

if ((uninstall)); then
  removed=0
  for f in "$desktop_dst" "$svg_dst" "$png_dst" "$mime_dst"; do
    if [[ -e "$f" ]]; then
      rm -f -- "$f"
      echo "removed $f"
      removed=1
    fi
  done
  ((removed)) || echo "nothing to remove: MedSynth's desktop entry is not installed under $data"
  refresh
  exit 0
fi

folder="${folder:-$here}"
[[ -d "$folder" ]] || fail "$folder is not a folder (give the unpacked MedSynth app's folder)"
folder="$(cd "$folder" && pwd)"

# The built app carries everything in share/; a source checkout has the entry and the MIME types in packaging/share,
# the icons in the package and the launcher in its virtual environment.
share="$folder/share"
svg="$share/medsynth.svg"
png="$share/medsynth.png"
launcher="$folder/medsynth"
hint="give the unpacked app's folder"
if [[ ! -e "$svg" && -f "$folder/../pyproject.toml" && -d "$folder/../medsynth_gui/icons" ]]; then
  checkout="$(cd "$folder/.." && pwd)"
  svg="$checkout/medsynth_gui/icons/medsynth.svg"
  png="$checkout/medsynth_gui/icons/medsynth.png"
  launcher="$checkout/.venv/bin/medsynth"
  hint="run ./run.sh in the checkout first to make it"
fi

[[ -f "$launcher" && -x "$launcher" ]] || fail "$launcher is not an executable MedSynth launcher ($hint)"
for f in "$share/medsynth.desktop" "$share/medsynth-mime.xml" "$svg" "$png"; do
  [[ -f "$f" ]] || fail "$f is missing: $folder is not a complete MedSynth app folder"
done
# A desktop entry is one line per key, so a line break cannot be written there; and GLib (GNOME's menus) looks the
# Exec program up before expanding the spec's %% for a literal %, so with a % in the path the entry never shows.
[[ "$launcher" != *[$'\n\r%']* ]] ||
  fail "$launcher: a desktop entry cannot start a program whose path holds a line break or %; move the app's folder"

# Exec's quoting (Desktop Entry spec, "The Exec key"): inside double quotes, backslash-escape \ " ` $. The file's own
# string escaping then doubles every backslash again; TryExec, a plain string, gets only that second step.
quoted="$launcher"
quoted="${quoted//\\/\\\\}"
quoted="${quoted//\"/\\\"}"
quoted="${quoted//\`/\\\`}"
quoted="\"${quoted//\$/\\\$}\""
exec_value="${quoted//\\/\\\\}"
tryexec_value="${launcher//\\/\\\\}"

mkdir -p "$(dirname "$desktop_dst")" "$(dirname "$svg_dst")" "$(dirname "$png_dst")" "$(dirname "$mime_dst")"
# Written whole to a temporary file and then renamed, so a menu never reads half an entry. The placeholders are cut
# out rather than substituted: a path may hold characters that sed or bash's ${//} would treat as special.
tmp="$(mktemp "$desktop_dst.XXXXXX")"
trap 'rm -f -- "$tmp"' EXIT
while IFS= read -r line || [[ -n "$line" ]]; do
  if [[ "$line" == *@EXEC@* ]]; then
    line="${line%%@EXEC@*}$exec_value${line#*@EXEC@}"
  elif [[ "$line" == *@TRYEXEC@* ]]; then
    line="${line%%@TRYEXEC@*}$tryexec_value${line#*@TRYEXEC@}"
  fi
  printf '%s\n' "$line"
done <"$share/medsynth.desktop" >"$tmp"
chmod 644 "$tmp"
mv -f -- "$tmp" "$desktop_dst"
trap - EXIT
install -m 644 -- "$svg" "$svg_dst"
install -m 644 -- "$png" "$png_dst"
install -m 644 -- "$share/medsynth-mime.xml" "$mime_dst"
refresh

echo "MedSynth ($launcher) is in your application menu and opens .h5, .nii and .nii.gz files. Installed:"
printf '  %s\n' "$desktop_dst" "$svg_dst" "$png_dst" "$mime_dst"
printf 'To undo: %q --uninstall\n' "$here/$prog"

"""Linux desktop integration: packaging/install-desktop-entry.sh run on an app folder laid out as the build lays it out
(a stub launcher in place of the frozen program), the entry it writes, the MIME types, the icons, the window icon."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "packaging" / "install-desktop-entry.sh"
SHARE = ROOT / "packaging" / "share"
ICONS = ROOT / "medsynth_gui" / "icons"
NIFTI_TYPES = ("image/x-nifti", "image/x-nifti-gz")
MIME_NS = "{http://www.freedesktop.org/standards/shared-mime-info}"
# A space, and every character the Exec key's quoting has to escape.
ODD_NAME = "My Apps $HOME \"q\" `b` back\\slash it's"

# The stub writes its arguments, one a line, where the test asks, so a launch through the entry can be checked.
STUB = '#!/bin/sh\nprintf "%s\\n" "$0" "$@" > "$MEDSYNTH_STUB_ARGV"\n'


def make_app_folder(parent: Path, name: str = "medsynth") -> Path:
    """The unpacked app's layout: the launcher, the script beside it, share/ with the entry, the types and icons."""
    folder = parent / name
    (folder / "share").mkdir(parents=True)
    shutil.copy2(SCRIPT, folder / SCRIPT.name)
    for f in (SHARE / "medsynth.desktop", SHARE / "medsynth-mime.xml", ICONS / "medsynth.svg", ICONS / "medsynth.png"):
        shutil.copy2(f, folder / "share" / f.name)
    launcher = folder / "medsynth"
    launcher.write_text(STUB)
    launcher.chmod(0o755)
    return folder


def run_script(script: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(data), "HOME": str(data.parent)}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)


def installed(data: Path) -> dict[str, Path]:
    return {"desktop": data / "applications" / "medsynth.desktop",
            "svg": data / "icons" / "hicolor" / "scalable" / "apps" / "medsynth.svg",
            "png": data / "icons" / "hicolor" / "256x256" / "apps" / "medsynth.png",
            "mime": data / "mime" / "packages" / "medsynth.xml"}


def read_entry(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return dict(parser["Desktop Entry"])


def unescape_string(value: str) -> str:
    """The Desktop Entry spec's escapes for string values: \\s \\n \\t \\r \\\\."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append({"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}.get(value[i + 1], "\\" + value[i + 1]))
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def exec_argv(value: str) -> list[str]:
    """Splits an Exec value as the spec says: string escapes first, then double-quoted arguments in which a backslash
    escapes the next character. (No %% for a literal %: the script refuses such paths.)"""
    s, argv, arg, quoted, i, started = unescape_string(value), [], [], False, 0, False
    while i < len(s):
        c = s[i]
        if quoted:
            if c == "\\":
                arg.append(s[i + 1])
                i += 1
            elif c == '"':
                quoted = False
            else:
                arg.append(c)
        elif c == '"':
            quoted, started = True, True
        elif c == " ":
            if started:
                argv.append("".join(arg))
            arg, started = [], False
        else:
            arg.append(c)
            started = True
        i += 1
    assert not quoted, f"unterminated quote in Exec={value}"
    if started:
        argv.append("".join(arg))
    return argv


@pytest.mark.parametrize("name", ["My Apps", ODD_NAME], ids=["space", "odd characters"])
def test_install_writes_entry_icons_and_types(tmp_path, name):
    folder = make_app_folder(tmp_path / name)
    data = tmp_path / "xdg"
    done = run_script(folder / SCRIPT.name, data)  # APP_FOLDER defaults to the script's own folder
    assert done.returncode == 0, done.stderr
    files = installed(data)
    for f in files.values():
        assert f.is_file(), f
        assert str(f) in done.stdout  # says what it installed ...
    assert "--uninstall" in done.stdout  # ... and how to undo it

    entry = read_entry(files["desktop"])
    launcher = str(folder / "medsynth")
    assert entry["Type"] == "Application" and entry["Name"] == "MedSynth" and entry["Icon"] == "medsynth"
    assert entry["Terminal"] == "false" and entry["StartupWMClass"] == "medsynth"
    assert entry["Exec"].startswith('"') and entry["Exec"].endswith('" gui %f')
    assert exec_argv(entry["Exec"]) == [launcher, "gui", "%f"]
    assert unescape_string(entry["TryExec"]) == launcher
    mime_types = entry["MimeType"].rstrip(";").split(";")
    assert "application/x-hdf" in mime_types and all(t in mime_types for t in NIFTI_TYPES)
    assert "@" not in files["desktop"].read_text()  # no placeholder left

    assert files["svg"].read_bytes() == (ICONS / "medsynth.svg").read_bytes()
    with Image.open(files["png"]) as png:
        assert png.size == (256, 256)

    types = {t.get("type"): t for t in ET.parse(files["mime"]).getroot().iter(f"{MIME_NS}mime-type")}
    assert set(types) == set(NIFTI_TYPES)
    globs = {t: [(g.get("pattern"), int(g.get("weight", 50))) for g in e.iter(f"{MIME_NS}glob")]
             for t, e in types.items()}
    assert globs["image/x-nifti"] == [("*.nii", 50)]
    assert globs["image/x-nifti-gz"][0][0] == "*.nii.gz" and globs["image/x-nifti-gz"][0][1] > 50  # over *.gz


def test_installing_twice_is_harmless_and_uninstall_removes_it(tmp_path):
    folder = make_app_folder(tmp_path)
    data = tmp_path / "xdg"
    assert run_script(folder / SCRIPT.name, data).returncode == 0
    files = installed(data)
    first = {k: f.read_bytes() for k, f in files.items()}
    assert run_script(folder / SCRIPT.name, data).returncode == 0
    assert {k: f.read_bytes() for k, f in files.items()} == first
    assert [p.name for p in (data / "applications").iterdir() if "medsynth" in p.name] == ["medsynth.desktop"]

    gone = run_script(folder / SCRIPT.name, data, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not any(f.exists() for f in files.values())
    assert not list(data.rglob("medsynth*"))
    again = run_script(folder / SCRIPT.name, data, "--uninstall")  # the app's folder may already be deleted
    assert again.returncode == 0 and "nothing to remove" in again.stdout


@pytest.mark.parametrize("fault", ["no launcher", "not executable", "no folder", "percent in path"])
def test_a_bad_app_folder_is_refused_in_one_line(tmp_path, fault):
    folder = make_app_folder(tmp_path / ("100% done" if fault == "percent in path" else "apps"))
    if fault == "no launcher":
        (folder / "medsynth").unlink()
    elif fault == "not executable":
        (folder / "medsynth").chmod(0o644)
    elif fault == "no folder":
        folder = tmp_path / "nowhere"
    data = tmp_path / "xdg"
    done = run_script(SCRIPT, data, str(folder))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0], done.stderr
    assert not data.exists()  # nothing installed


def test_the_entry_passes_desktop_file_validate(tmp_path):
    validate = shutil.which("desktop-file-validate")
    if validate is None:
        pytest.skip("desktop-file-validate is not installed (Debian/Ubuntu package desktop-file-utils)")
    folder = make_app_folder(tmp_path / ODD_NAME)
    data = tmp_path / "xdg"
    assert run_script(folder / SCRIPT.name, data).returncode == 0
    done = subprocess.run([validate, str(installed(data)["desktop"])], capture_output=True, text=True)
    # Hints (the entry is in two main menu categories, Science and Graphics) are not faults.
    assert done.returncode == 0 and "error:" not in done.stdout, done.stdout + done.stderr


def test_a_gnome_desktop_opens_nifti_with_medsynth(tmp_path):
    """GLib's own reading of what was installed: the content types by name and by NIfTI's magic bytes, and a launch
    through the entry that reaches the launcher with `gui FILE`, from a folder whose name needs quoting."""
    gio = shutil.which("gio")
    if gio is None or shutil.which("update-mime-database") is None:
        pytest.skip("needs GLib's gio and shared-mime-info's update-mime-database")
    folder = make_app_folder(tmp_path / ODD_NAME)
    data = tmp_path / "xdg"
    assert run_script(folder / SCRIPT.name, data).returncode == 0
    header = bytearray(352)
    header[0:4] = (348).to_bytes(4, "little")
    header[344:348] = b"n+1\0"
    files = {"brain.nii": bytes(header), "scan-without-extension": bytes(header), "brain t1.nii.gz": b"\x1f\x8b\x08\0"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    env = {**os.environ, "XDG_DATA_HOME": str(data), "MEDSYNTH_STUB_ARGV": str(tmp_path / "argv.txt")}

    def content_type(name: str) -> str:
        out = subprocess.run([gio, "info", "-a", "standard::content-type", str(tmp_path / name)],
                             capture_output=True, text=True, env=env, check=True).stdout
        return out.rsplit("standard::content-type:", 1)[1].strip()

    assert content_type("brain.nii") == "image/x-nifti"
    assert content_type("scan-without-extension") == "image/x-nifti"
    assert content_type("brain t1.nii.gz") == "image/x-nifti-gz"

    if subprocess.run([gio, "help", "launch"], capture_output=True).returncode != 0:
        pytest.skip("this gio has no `launch` (GLib < 2.72)")
    target = str(tmp_path / "brain t1.nii.gz")
    subprocess.run([gio, "launch", str(installed(data)["desktop"]), target], env=env, check=True, timeout=30)
    argv_file = tmp_path / "argv.txt"
    for _ in range(100):  # gio launch returns once the stub is spawned, not when it is done
        if argv_file.exists() and argv_file.read_text().count("\n") == 3:
            break
        time.sleep(0.05)
    assert argv_file.read_text().splitlines() == [str(folder / "medsynth"), "gui", target]


def test_from_a_source_checkout_it_installs_the_virtual_environments_launcher(tmp_path):
    checkout = tmp_path / "src tree"
    (checkout / "packaging").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    shutil.copy2(SCRIPT, checkout / "packaging" / SCRIPT.name)
    shutil.copytree(SHARE, checkout / "packaging" / "share")
    shutil.copytree(ICONS, checkout / "medsynth_gui" / "icons")
    data = tmp_path / "xdg"
    missing = run_script(checkout / "packaging" / SCRIPT.name, data)
    assert missing.returncode == 2 and ".venv/bin/medsynth" in missing.stderr and not data.exists()

    launcher = checkout / ".venv" / "bin" / "medsynth"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(STUB)
    launcher.chmod(0o755)
    done = run_script(checkout / "packaging" / SCRIPT.name, data)
    assert done.returncode == 0, done.stderr
    assert exec_argv(read_entry(installed(data)["desktop"])["Exec"]) == [str(launcher), "gui", "%f"]
    assert installed(data)["png"].read_bytes() == (ICONS / "medsynth.png").read_bytes()


def test_the_window_icon_is_set_from_the_package(qtbot):
    from PySide6.QtWidgets import QApplication

    from medsynth_gui.app import app_icon

    icon = app_icon()
    assert not icon.isNull()
    assert {(s.width(), s.height()) for s in icon.availableSizes()} == {(256, 256), (48, 48)}
    app = QApplication.instance()
    before = app.windowIcon()
    try:
        app.setWindowIcon(icon)
        assert not app.windowIcon().isNull()
    finally:
        app.setWindowIcon(before)


def test_the_pngs_are_rendered_from_the_current_svg(qtbot, tmp_path):
    """Someone who edits the SVG re-runs packaging/render_icons.py; otherwise the window and the menu disagree."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_icons", ROOT / "packaging" / "render_icons.py")
    render_icons = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_icons)
    for name, size in render_icons.SIZES.items():
        render_icons.render(ICONS / "medsynth.svg", tmp_path / name, size)
        with Image.open(tmp_path / name) as fresh, Image.open(ICONS / name) as committed:
            assert committed.size == (size, size)
            diff = np.abs(np.asarray(fresh.convert("RGBA"), float) - np.asarray(committed.convert("RGBA"), float))
        assert diff.mean() < 1.0, f"{name} is out of date: run packaging/render_icons.py"

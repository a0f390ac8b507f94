"""Reader study: blinded study files, crash-safe answers, hand-checked figures and kappas, and the reading widget."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.evaluation import reader_session, reader_summary
from engine.evaluation import reader_study as rs
from engine.io.medsynth_writer import write_image_set

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _pair(folder: Path, n: int, size: int, dims: int, synth_spacing: tuple[float, ...] | None = None
          ) -> tuple[Path, Path]:
    real = make_phantoms(n, size, dims=dims, seed=1)
    synth = make_phantoms(n, size, dims=dims, seed=2)
    synth.kind = "synthetic"
    synth.spacing = synth_spacing
    # Distinctive names, so a test can look for them anywhere on screen.
    return (write_image_set(folder / "chestsrc-real.h5", real), write_image_set(folder / "chestsrc-gen.h5", synth))


@pytest.fixture(scope="module")
def files2d(tmp_path_factory):
    return _pair(tmp_path_factory.mktemp("d2"), 12, 16, 2)


@pytest.fixture(scope="module")
def files3d(tmp_path_factory):
    real = make_phantoms(4, 16, dims=3, seed=1)
    real.spacing = (1.5, 1.5, 3.0)
    folder = tmp_path_factory.mktemp("d3")
    synth = make_phantoms(4, 16, dims=3, seed=2)
    synth.kind = "synthetic"
    synth.spacing = (2.0, 2.0, 2.0)  # differs on purpose: items must all be shown with the real geometry
    return write_image_set(folder / "volsrc-real.h5", real), write_image_set(folder / "volsrc-gen.h5", synth)


def truths(study: Path) -> dict[int, str]:
    return rs.load_key(rs.default_key_path(study)).truth


def key_items(study: Path) -> tuple[rs.KeyItem, ...]:
    return rs.load_key(rs.default_key_path(study)).items


# -- the study folder and its key ---------------------------------------------------------------------------------
def test_blinded_order_is_shuffled_and_reproducible_from_the_seed(files2d, tmp_path):
    real, synth = files2d
    a = rs.create_study(real, synth, tmp_path / "a", 6, 6, seed=3)
    b = rs.create_study(real, synth, tmp_path / "b", 6, 6, seed=3)
    c = rs.create_study(real, synth, tmp_path / "c", 6, 6, seed=4)
    assert a == (tmp_path / "a", tmp_path / "a.key.json")  # the key beside the folder, not in it
    assert sorted(p.name for p in a.folder.iterdir()) == ["items.h5", "study.json"]
    items = lambda made: json.loads(made.key.read_text())["items"]  # noqa: E731
    assert items(a) == items(b) and items(a) != items(c)
    doc = json.loads(a.folder.joinpath("study.json").read_text())
    assert doc["spatial_dims"] == 2 and doc["items"] == 12 and "seed" not in doc
    key = rs.load_key(a.key, rs.load_study(a.folder))
    assert key.seed == 3
    order = [it.truth for it in key.items]
    assert [it.id for it in key.items] == list(range(1, 13))
    assert order.count("real") == 6 and order.count("synthetic") == 6
    assert order != sorted(order) and order != sorted(order, reverse=True)  # interleaved, not in blocks
    for truth in rs.TRUTHS:
        idx = [it.index for it in key.items if it.truth == truth]
        assert len(set(idx)) == 6 and all(0 <= i < 12 for i in idx)
    assert key.sources == {"real": real.resolve(), "synthetic": synth.resolve()}


def _folder_text(folder: Path) -> str:
    """Everything a reader could read in the folder: file names, file bytes, and HDF5 names and attributes."""
    parts = []
    for p in sorted(folder.rglob("*")):
        parts.append(p.name)
        if p.is_file():
            parts.append(p.read_bytes().decode("latin-1"))
        if p.suffix == ".h5":
            with h5py.File(p, "r") as f:
                f.visititems(lambda name, obj: parts.extend([name, *map(str, obj.attrs.items())]))
                parts.extend(map(str, f.attrs.items()))
    return "\n".join(parts).lower()


def test_the_folder_readers_open_holds_no_key(files2d, tmp_path):
    real, synth = files2d
    made = rs.create_study(real, synth, tmp_path / "s", 6, 6, seed=3)
    s = reader_session.Session(made.folder, "ann")
    while (item := s.next_item()) is not None:
        s.answer(item.id, "fake", realism=2)
    text = _folder_text(made.folder)
    assert "chestsrc" not in text and str(tmp_path).lower() not in text
    # Whole words: "realism" is a rating's name; the reader answered "fake" throughout.
    for leak in ("real", "synthetic", "truth", "index", "seed", "source", "kind", "normalisation", "units"):
        assert not re.search(rf"\b{leak}\b", text), leak
    doc = json.loads((made.folder / "study.json").read_text())
    assert set(doc) == {"format", "version", "study_id", "spatial_dims", "image_shape", "items", "items_file",
                        "geometry", "display_levels"}
    key = json.loads(made.key.read_text())
    assert {it["truth"] for it in key["items"]} == {"real", "synthetic"} and "chestsrc" in made.key.read_text()


def test_real_and_synthetic_items_are_stored_on_one_scale(tmp_path):
    # Real data as scanners give it: integer values with a few hot outliers; synthetic: continuous values
    # that stop at the model's clamp, and stored as a wider float.
    real = make_phantoms(8, 16, dims=2, seed=1)
    real.images = np.round(real.images)
    real.images[:, 0, 0, 0] = 9000.0
    synth = make_phantoms(8, 16, dims=2, seed=2)
    synth.kind = "synthetic"
    noise = np.random.default_rng(0).normal(0.0, 2.0, synth.images.shape)
    synth.images = np.clip(synth.images * 0.97 + noise, 0, 900).astype(np.float32)
    made = rs.create_study(write_image_set(tmp_path / "r.h5", real), write_image_set(tmp_path / "g.h5", synth),
                           tmp_path / "s", 8, 8, seed=0)
    key = rs.load_key(made.key)
    window = json.loads(made.key.read_text())["window"]
    assert window["lo"] == pytest.approx(0.0) and 800 < window["hi"] < 900  # percentiles of both, pooled
    with h5py.File(made.folder / "items.h5", "r") as f:
        stored = f["images"][:]
    assert stored.dtype == np.uint8 and stored.shape == (16, 1, 16, 16)
    by_truth = {t: stored[[it.id - 1 for it in key.items if it.truth == t]] for t in rs.TRUTHS}
    # One scale: both saturate at the same ends, and the real outliers are gone.
    assert {t: (int(v.min()), int(v.max())) for t, v in by_truth.items()} == {"real": (0, 255), "synthetic": (0, 255)}
    it = key.items[0]
    src = (real if it.truth == "real" else synth).images[it.index]
    assert np.array_equal(stored[0], rs.to_display(src, (window["lo"], window["hi"])))


def test_summary_needs_the_key_and_old_studies_stay_summarisable(files2d, tmp_path):
    made = rs.create_study(*files2d, tmp_path / "s", 3, 3, seed=1)
    s = reader_session.Session(made.folder, "ann")
    s.answer(1, "real")
    moved = made.key.rename(tmp_path / "kept-by-organiser.json")
    with pytest.raises(InputError, match="answer key") as e:
        reader_summary.summarise(made.folder)
    assert e.value.path == str(made.key) and "\n" not in str(e.value)
    assert reader_summary.summarise(made.folder, key=moved)["readers"]["ann"]["answered"] == 1
    other = rs.create_study(*files2d, tmp_path / "t", 3, 3, seed=1)
    with pytest.raises(InputError, match="another study"):
        reader_summary.summarise(made.folder, key=other.key)
    with pytest.raises(InputError, match="inside the study folder"):
        rs.create_study(*files2d, tmp_path / "u", 3, 3, seed=1, key=tmp_path / "u" / "key.json")
    with pytest.raises(InputError, match="never overwritten"):
        rs.create_study(*files2d, tmp_path / "v", 3, 3, seed=1, key=moved)
    assert not (tmp_path / "u").exists() or not any((tmp_path / "u").iterdir())

    # A first-version study (key inside study.json, items read from the sources): summary still works,
    # reading it is refused in one line.
    old = tmp_path / "old"
    old.mkdir()
    items = [{"id": 1, "truth": "real", "index": 0}, {"id": 2, "truth": "synthetic", "index": 3}]
    (old / "study.json").write_text(json.dumps({
        "format": "medsynth-reader-study", "version": 1, "seed": 5, "spatial_dims": 2, "image_shape": [1, 16, 16],
        "sources": {"real": {"path": str(files2d[0]), "relative": None, "n_complete": 12},
                    "synthetic": {"path": str(files2d[1]), "relative": None, "n_complete": 12}},
        "geometry": {"spacing": None, "affine": None, "units": ""}, "items": items}))
    (old / "answers-bo.jsonl").write_text('{"reader": "bo", "item": 1, "verdict": "real"}\n'
                                          '{"reader": "bo", "item": 2, "verdict": "fake"}\n')
    summary = reader_summary.summarise(old)
    assert summary["readers"]["bo"]["accuracy"] == 1.0 and summary["study"]["seed"] == 5
    with pytest.raises(InputError, match="first-version study .* create the study again") as e:
        reader_session.Session(old, "bo")
    assert "\n" not in str(e.value)


def test_bad_inputs_refused_with_one_line_naming_the_file(files2d, files3d, tmp_path):
    real, synth = files2d
    with pytest.raises(InputError, match="has 12 complete samples; the study asks for 13 real") as e:
        rs.create_study(real, synth, tmp_path / "s1", 13, 2, 0)
    assert e.value.path == str(real) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="2D samples but .* 3D ones") as e:
        rs.create_study(files3d[0], synth, tmp_path / "s2", 2, 2, 0)
    assert e.value.path == str(synth)
    bigger = write_image_set(tmp_path / "big.h5", make_phantoms(4, 32, seed=3))
    with pytest.raises(InputError, match="must have one shape"):
        rs.create_study(real, bigger, tmp_path / "s3", 2, 2, 0)
    with pytest.raises(InputError, match="same file"):
        rs.create_study(real, real, tmp_path / "s4", 2, 2, 0)
    with pytest.raises(InputError, match="kind='synthetic'") as e:
        rs.create_study(synth, real, tmp_path / "s5", 2, 2, 0)
    assert e.value.path == str(synth)
    with pytest.raises(InputError, match="does not exist"):
        rs.create_study(tmp_path / "nope.h5", synth, tmp_path / "s6", 2, 2, 0)
    with pytest.raises(InputError, match="at least one real and one synthetic"):
        rs.create_study(real, synth, tmp_path / "s7", 0, 2, 0)
    study = rs.create_study(real, synth, tmp_path / "ok", 2, 2, 0).folder
    with pytest.raises(InputError, match="not an empty folder"):
        rs.create_study(real, synth, tmp_path / "ok", 2, 2, 0)
    with pytest.raises(InputError, match="holds no study.json"):
        reader_session.Session(tmp_path, "ann")
    with pytest.raises(InputError, match="reader name"):
        reader_session.Session(study, "../evil")
    s = reader_session.Session(study, "ann")
    for kwargs, message in (({"verdict": "maybe"}, "verdict must be"), ({"realism": 6}, "1 to 5"),
                            ({"anatomy": 0}, "1 to 5"), ({"realism": True}, "1 to 5"),
                            ({"consistency": 3}, "volumes only"), ({"seconds": -1}, "seconds")):
        with pytest.raises(InputError, match=message):
            s.answer(1, **{"verdict": "real", **kwargs})
    with pytest.raises(InputError, match="has no item 99"):
        s.answer(99, "real")
    assert s.n_answered == 0 and not s.path.exists()  # a refused answer writes nothing


def test_engine_module_loads_no_qt():
    code = ("import sys, engine.evaluation.reader_study, engine.evaluation.reader_session, "
            "engine.evaluation.reader_summary\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'medsynth_gui')]"
            "\nsys.exit(f'Qt loaded: {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_items_are_blind_and_share_the_real_geometry(files3d, tmp_path):
    made = rs.create_study(*files3d, tmp_path / "v", 3, 3, seed=1)
    s = reader_session.Session(made.folder, "ann")
    item = s.next_item()
    assert set(vars(item)) == {"id", "number", "total"}  # nothing that names a source or the truth
    shown = [s.image(it.id) for it in key_items(made.folder)]
    for img in shown:
        assert set(vars(img)) == {"image", "spacing", "affine", "levels", "spatial_dims"}
        assert img.image.shape == (16, 16, 16) and img.spacing == (1.5, 1.5, 3.0)
        assert img.image.dtype == np.uint8 and img.levels == rs.DISPLAY_LEVELS
    it = key_items(made.folder)[0]
    window = json.loads(made.key.read_text())["window"]
    with h5py.File(files3d[0] if it.truth == "real" else files3d[1], "r") as f:
        stored = f["images"][it.index, 0]  # (D, H, W)
    expected = rs.to_display(np.transpose(stored, (2, 1, 0)), (window["lo"], window["hi"]))
    assert np.array_equal(s.image(it.id).image, expected)


# -- answers and figures ------------------------------------------------------------------------------------------
# One reader's script, by truth: 6 synthetic items answered fake x4, real x1, unsure x1, and 4 real items
# answered real x2, fake x1, unsure x1. By hand: decided 8, correct 4 + 2 = 6 -> accuracy 6/8;
# sensitivity 4/5; specificity 2/3; unsure 2/10; unsure-as-wrong accuracy 6/10.
SCRIPT = {"synthetic": [("fake", 2), ("fake", 3), ("fake", 2), ("fake", 3), ("real", 2), ("unsure", None)],
          "real": [("real", 4), ("real", 4), ("fake", 5), ("unsure", 5)]}


def run_script(study: Path, reader: str) -> reader_session.Session:
    s = reader_session.Session(study, reader)
    truth = truths(study)
    todo = {k: list(v) for k, v in SCRIPT.items()}
    while (item := s.next_item()) is not None:
        verdict, realism = todo[truth[item.id]].pop(0)
        anatomy = 3 if truth[item.id] == "real" else 1
        s.answer(item.id, verdict, realism=realism, anatomy=anatomy, seconds=2.5)
    return s


def test_a_scripted_reader_gives_the_hand_computed_figures(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 4, 6, seed=7).folder
    s = run_script(study, "ann")
    assert s.done and s.next_item() is None
    lines = s.path.read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["reader"] == "ann"
    summary = reader_summary.summarise(study)
    ann = summary["readers"]["ann"]
    assert ann["answered"] == 10 and ann["complete"]
    assert ann["accuracy"] == pytest.approx(6 / 8)
    assert ann["sensitivity"] == pytest.approx(4 / 5)
    assert ann["specificity"] == pytest.approx(2 / 3)
    assert ann["unsure_rate"] == pytest.approx(2 / 10)
    assert ann["accuracy_unsure_wrong"] == pytest.approx(6 / 10)
    assert ann["ratings"]["realism"] == {"real": pytest.approx(18 / 4), "synthetic": pytest.approx(12 / 5)}
    assert ann["ratings"]["anatomy"] == {"real": 3.0, "synthetic": 1.0}
    assert ann["ratings"]["consistency"] == {"real": None, "synthetic": None}
    assert ann["mean_seconds"] == pytest.approx(2.5)
    assert summary["pooled"]["accuracy"] == ann["accuracy"]
    assert summary["agreement"] == {"cohen": [], "fleiss": None}
    assert summary["study"] == {"folder": str(study), "key": str(rs.default_key_path(study)), "items": 10,
                                "real": 4, "synthetic": 6, "seed": 7, "spatial_dims": 2}
    assert "unsure answers are excluded from accuracy" in summary["convention"]
    rows = reader_summary.figure_rows(summary)
    assert rows[0][:6] == ["ann", "10 / 10", "75.0%", "80.0%", "66.7%", "20.0%"] and rows[1][0] == "pooled"
    assert rows[0][6] == "4.50 / 2.40"


def test_answering_twice_keeps_the_last_answer(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 2, 2, seed=0).folder
    s = reader_session.Session(study, "ann")
    first = s.next_item()
    s.answer(first.id, "real", realism=2)
    s.answer(first.id, "fake", realism=5)
    assert len(s.path.read_text().splitlines()) == 2
    again = reader_session.Session(study, "ann")
    assert again.n_answered == 1 and again.answers[first.id].verdict == "fake"
    assert again.answers[first.id].realism == 5 and again.next_item().number == 2
    assert reader_summary.summarise(study)["readers"]["ann"]["answered"] == 1


def test_answers_survive_a_killed_process_and_the_session_resumes(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 4, 4, seed=2).folder
    k = 3
    code = textwrap.dedent(f"""
        import sys, time
        from engine.evaluation.reader_session import Session
        s = Session({str(study)!r}, "bob")
        for _ in range({k}):
            s.answer(s.next_item().id, "fake", realism=3, seconds=1.0)
        print("answered", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "answered"
    finally:
        proc.kill()  # SIGKILL: no atexit, no flush, no close
        proc.wait(timeout=30)
    s = reader_session.Session(study, "bob")
    order = list(range(1, 9))
    assert sorted(s.answers) == sorted(order[:k])
    assert s.next_item().number == k + 1 and s.next_item().id == order[k]


def test_a_dropped_session_and_a_torn_last_line_lose_nothing(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 3, 3, seed=5).folder
    s = reader_session.Session(study, "cy")
    for _ in range(2):
        s.answer(s.next_item().id, "unsure")
    path = s.path
    del s  # never closed
    with open(path, "a") as fh:
        fh.write('{"reader": "cy", "item": 6, "verd')  # a write cut short by a crash
    s = reader_session.Session(study, "cy")
    assert s.n_answered == 2 and s.next_item().number == 3
    s.answer(s.next_item().id, "real")
    again = reader_session.Session(study, "cy")
    assert again.n_answered == 3 and again.next_item().number == 4


# -- agreement ----------------------------------------------------------------------------------------------------
def test_kappas_equal_hand_computed_values():
    # 2x2 table: both real 4, A real / B fake 2, A fake / B real 0, both fake 4.
    # p_o = 8/10; p_e = 0.6*0.4 + 0.4*0.6 = 0.48; Cohen = 0.32/0.52 = 8/13.
    a = ["real"] * 6 + ["fake"] * 4
    b = ["real"] * 4 + ["fake"] * 6
    assert reader_summary.cohen_kappa(a, b) == pytest.approx(8 / 13)
    # Fleiss pools the marginals: p = (1/2, 1/2), P_e = 1/2, mean P_i = 8/10 -> 0.6.
    table = [[int(x == "real") + int(y == "real"), int(x == "fake") + int(y == "fake"), 0] for x, y in zip(a, b)]
    assert reader_summary.fleiss_kappa(table) == pytest.approx(0.6)
    # Three raters, three categories: rows RRR, FFF, RFU, RRF. P_i = 1, 1, 0, 1/3 -> mean 7/12;
    # p = (6, 5, 1)/12 -> P_e = 62/144; kappa = (7/12 - 31/72) / (1 - 31/72) = 11/41.
    assert reader_summary.fleiss_kappa([[3, 0, 0], [0, 3, 0], [1, 1, 1], [2, 1, 0]]) \
        == pytest.approx(float(Fraction(11, 41)))
    mixed = ["real", "fake", "unsure", "fake"]
    assert reader_summary.cohen_kappa(mixed, mixed) == 1.0
    assert reader_summary.fleiss_kappa([[2, 0, 0], [0, 2, 0], [0, 0, 2]]) == 1.0
    assert reader_summary.cohen_kappa(["real"] * 3, ["real"] * 3) is None  # p_e = 1: undefined
    assert reader_summary.cohen_kappa([], []) is None and reader_summary.fleiss_kappa([]) is None
    # Opposite calls on a balanced set: kappa -1.
    assert reader_summary.cohen_kappa(["real", "fake"], ["fake", "real"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        reader_summary.fleiss_kappa([[2, 0, 0], [1, 0, 0]])


def test_summary_agreement_over_shared_items(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 5, 5, seed=9).folder
    order = list(range(1, 11))
    plans = {"a": ["real"] * 6 + ["fake"] * 4, "b": ["real"] * 4 + ["fake"] * 6,
             "c": ["real"] * 6 + ["fake"] * 2}  # c answers the first 8 items only, as a copies a
    for reader, verdicts in plans.items():
        s = reader_session.Session(study, reader)
        for item_id, v in zip(order, verdicts):
            s.answer(item_id, v)
    ag = reader_summary.summarise(study)["agreement"]
    cohen = {tuple(c["readers"]): (c["items"], c["kappa"]) for c in ag["cohen"]}
    assert cohen[("a", "b")] == (10, pytest.approx(8 / 13))
    assert cohen[("a", "c")] == (8, pytest.approx(1.0))
    # b vs c on 8 items: both real 4, c real / b fake 2, both fake 2: p_o = 3/4, p_e = 1/2*3/4 + 1/2*1/4 = 1/2.
    assert cohen[("b", "c")] == (8, pytest.approx(0.5))
    # Fleiss on the 8 items all three answered: rows RRR x4, RFR x2, FFF x2 -> mean P_i = 5/6,
    # p = (16, 8)/24 -> P_e = 5/9; kappa = (5/6 - 5/9) / (4/9) = 5/8.
    assert ag["fleiss"] == {"readers": ["a", "b", "c"], "items": 8, "kappa": pytest.approx(5 / 8)}
    rows = reader_summary.agreement_rows(reader_summary.summarise(study))
    assert rows[0] == ["Cohen's kappa", "a – b", "10", "0.615"] and rows[-1][0] == "Fleiss' kappa"


# -- the widget -----------------------------------------------------------------------------------------------------
@pytest.fixture
def widget(qtbot):
    pytest.importorskip("pytestqt")
    from PySide6.QtWidgets import QApplication

    from medsynth_gui.app import dark_palette
    from medsynth_gui.reader_study import ReaderStudyWidget

    QApplication.instance().setStyle("Fusion")
    dark_palette(QApplication.instance())
    w = ReaderStudyWidget()
    qtbot.addWidget(w)
    w.resize(1200, 760)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    qtbot.waitUntil(lambda: w.isActiveWindow(), timeout=3000)
    return w


def screen_texts(w, visible_only: bool) -> list[str]:
    from PySide6.QtWidgets import QAbstractButton, QLabel

    texts = [w.windowTitle(), w.window().windowTitle()]
    for child in w.findChildren(QLabel) + w.findChildren(QAbstractButton):
        if child.isVisible() or not visible_only:
            texts += [child.text(), child.toolTip()]
    return texts


def assert_blind(w, files: tuple[Path, Path], study: Path) -> None:
    item = {it.id: it for it in key_items(study)}[w.current.id]
    names = [n for f in files for n in (f.name, f.stem)] + ["chestsrc", "volsrc"]
    # No file name anywhere in the widget, shown or not; on screen, nothing like "#3" or "seed 17".
    assert not [t for t in screen_texts(w, False) for n in names if n in t]
    shown = screen_texts(w, True)
    assert not [t for t in shown if "#" in t or "seed" in t.lower() or f"index {item.index}" in t]
    assert any(t.startswith("Item ") for t in shown)


def test_widget_records_keys_buttons_and_ratings_and_stays_blind(widget, qtbot, files2d, tmp_path):
    from PySide6.QtCore import Qt

    w = widget
    made = w.new_study(*files2d, tmp_path / "s", 3, 3, 11)
    assert made is not None and w.study_edit.text() == str(made.folder) and w.key_edit.text() == str(made.key)
    assert str(made.key) in w.message.text()  # the organiser is told where the key is
    # A second study from the same page gets its own key, not the first one's.
    w.real_edit.setText(str(files2d[0]))
    w.synth_edit.setText(str(files2d[1]))
    w.n_real_spin.setValue(2)
    w.n_synth_spin.setValue(2)
    w.out_edit.setText(str(tmp_path / "s2"))
    assert w.key_edit.text() == ""
    w.create_button.click()
    assert w.key_edit.text() == str(tmp_path / "s2.key.json") and (tmp_path / "s2.key.json").exists()
    study = made.folder
    assert w.open_study(study, "dana")
    assert w.stack.currentWidget() is w.reading_page
    assert w.progress.text() == "Item 1 of 6"
    assert len(w.viewer.slice_views) == 1  # a 2D image fills the view
    assert not w.ratings["consistency"].isVisible() and w.ratings["realism"].isVisible()
    assert_blind(w, files2d, study)
    order = list(range(1, 7))

    qtbot.mouseClick(w.ratings["realism"].group.button(4), Qt.MouseButton.LeftButton)
    qtbot.mouseClick(w.ratings["anatomy"].group.button(2), Qt.MouseButton.LeftButton)
    qtbot.mouseClick(w.ratings["anatomy"].group.button(3), Qt.MouseButton.LeftButton)  # changes its mind
    assert w.ratings["anatomy"].value == 3
    qtbot.keyClick(w, Qt.Key.Key_R)
    assert w.progress.text() == "Item 2 of 6" and w.ratings["realism"].value is None
    assert_blind(w, files2d, study)
    qtbot.keyClick(w.viewer.slice_views[0], Qt.Key.Key_F)  # from the focused image pane too
    qtbot.mouseClick(w.ratings["realism"].group.button(1), Qt.MouseButton.LeftButton)
    qtbot.mouseClick(w.ratings["realism"].group.button(1), Qt.MouseButton.LeftButton)  # takes it back
    qtbot.keyClick(w, Qt.Key.Key_U)
    qtbot.mouseClick(w.verdict_buttons["fake"], Qt.MouseButton.LeftButton)
    qtbot.mouseClick(w.verdict_buttons["real"], Qt.MouseButton.LeftButton)
    assert w.progress.text() == "Item 6 of 6"
    assert_blind(w, files2d, study)

    answers = reader_session.load_answers(reader_session.answers_path(study, "dana"))
    assert [answers[i].verdict for i in order[:5]] == ["real", "fake", "unsure", "fake", "real"]
    assert (answers[order[0]].realism, answers[order[0]].anatomy, answers[order[0]].consistency) == (4, 3, None)
    assert answers[order[2]].realism is None
    assert all(a.seconds >= 0 for a in answers.values())

    w.previous()  # back to item 5: its answer is shown and can be changed
    assert w.progress.text() == "Item 5 of 6" and "Real" in w.previous_note.text()
    qtbot.keyClick(w, Qt.Key.Key_U)
    assert w.progress.text() == "Item 6 of 6"
    assert reader_session.load_answers(reader_session.answers_path(study, "dana"))[order[4]].verdict == "unsure"

    w.stop()
    qtbot.keyClick(w, Qt.Key.Key_R)  # the letters do nothing away from the reading page
    assert reader_session.Session(study, "dana").n_answered == 5
    assert w.open_study(study, "dana") and w.progress.text() == "Item 6 of 6"  # resumes
    with qtbot.waitSignal(w.finished, timeout=2000):
        qtbot.keyClick(w, Qt.Key.Key_F)
    assert w.stack.currentWidget() is w.done_page and "All 6 items answered" in w.done_label.text()


def test_widget_shows_volumes_in_three_views_with_slice_consistency(widget, qtbot, files3d, tmp_path):
    from PySide6.QtCore import Qt

    w = widget
    study = rs.create_study(*files3d, tmp_path / "v", 2, 2, seed=4).folder
    assert w.open_study(study, "eve")
    assert [p.plane.name for p in w.viewer.slice_views] == ["Axial", "Coronal", "Sagittal"]
    assert w.ratings["consistency"].isVisible()
    assert w.viewer.state.spacing == (1.5, 1.5, 3.0)
    for key, value in (("realism", 5), ("anatomy", 4), ("consistency", 2)):
        qtbot.mouseClick(w.ratings[key].group.button(value), Qt.MouseButton.LeftButton)
    assert_blind(w, files3d, study)
    qtbot.wait(50)
    ARTIFACTS.mkdir(exist_ok=True)
    w.grab().save(str(ARTIFACTS / "reader_study.png"))
    first = w.current.id
    qtbot.keyClick(w, Qt.Key.Key_U)
    a = reader_session.load_answers(reader_session.answers_path(study, "eve"))[first]
    assert (a.verdict, a.realism, a.anatomy, a.consistency) == ("unsure", 5, 4, 2)


def test_widget_summary_shows_the_figures(widget, qtbot, files2d, tmp_path):
    w = widget
    study = rs.create_study(*files2d, tmp_path / "s", 4, 6, seed=7).folder
    run_script(study, "ann")
    assert w.open_study(study, "ann")
    assert w.stack.currentWidget() is w.done_page  # nothing left to read
    assert w.show_summary()
    t = w.figures_table
    row = [t.item(0, c).text() for c in range(t.columnCount())]
    assert row[:6] == ["ann", "10 / 10", "75.0%", "80.0%", "66.7%", "20.0%"]
    assert t.item(1, 0).text() == "pooled" and t.rowCount() == 2
    assert "two or more readers" in w.agreement_table.item(0, 1).text()
    assert "unsure answers are excluded" in w.convention.text()
    # Without the key (moved away by the organiser) the summary names what it needs; with it, it works.
    kept = rs.default_key_path(study).rename(tmp_path / "kept.json")
    assert not w.show_summary(study) and "answer key" in w.message.text()
    w.out_edit.setText(str(study))
    w.key_edit.setText(str(kept))
    w.summary_button.click()
    assert w.stack.currentWidget() is w.summary_page and t.item(0, 0).text() == "ann"


def _rating_buttons(w) -> list:
    return [b for row in w.ratings.values() for b in row.group.buttons()]


def test_nothing_looks_preselected_on_the_next_item(widget, qtbot, files2d, tmp_path):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    w = widget
    assert w.open_study(rs.create_study(*files2d, tmp_path / "s", 3, 3, seed=2).folder, "gil")
    four = w.ratings["realism"].group.button(4)
    qtbot.mouseMove(four)
    qtbot.mouseClick(four, Qt.MouseButton.LeftButton)
    four.setFocus()  # as after reaching it with Tab and pressing Space
    assert four.isChecked() and four.hasFocus() and four.underMouse()
    qtbot.keyClick(w, Qt.Key.Key_R)
    assert w.progress.text() == "Item 2 of 6"
    for b in _rating_buttons(w) + list(w.verdict_buttons.values()):
        assert not (b.hasFocus() or b.isChecked() or b.isDown() or b.underMouse()), b.text()
    assert QApplication.focusWidget() is w.viewer.slice_views[0]  # the image takes the keys
    # The same after a click on a verdict button, which takes focus when clicked.
    qtbot.mouseClick(w.ratings["anatomy"].group.button(2), Qt.MouseButton.LeftButton)
    qtbot.mouseMove(w.verdict_buttons["fake"])
    qtbot.mouseClick(w.verdict_buttons["fake"], Qt.MouseButton.LeftButton)
    assert w.progress.text() == "Item 3 of 6"
    for b in _rating_buttons(w) + list(w.verdict_buttons.values()):
        assert not (b.hasFocus() or b.isChecked() or b.isDown() or b.underMouse()), b.text()
    qtbot.keyClick(w.viewer.slice_views[0], Qt.Key.Key_U)  # R / F / U still answer from the focused image
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_R)  # R answers; it does not reset the view there
    assert w.progress.text() == "Item 5 of 6"
    answers = reader_session.load_answers(reader_session.answers_path(w.session.study.folder, "gil"))
    assert [(answers[i].verdict, answers[i].realism, answers[i].anatomy) for i in (1, 2, 3, 4)] == [
        ("real", 4, None), ("fake", None, 2), ("unsure", None, None), ("real", None, None)]


def test_reading_shows_no_crosshair_no_window_numbers_and_one_window(widget, qtbot, tmp_path):
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtWidgets import QAbstractButton, QComboBox, QLabel, QWidget

    w = widget
    # The synthetic file on another intensity scale (a model that wrote [-1, 1] values, say).
    real = make_phantoms(4, 16, dims=3, seed=1)
    synth = make_phantoms(4, 16, dims=3, seed=2)
    synth.kind = "synthetic"
    synth.images = (synth.images / 500.0 - 1.0).astype(np.float32)
    made = rs.create_study(write_image_set(tmp_path / "r.h5", real), write_image_set(tmp_path / "g.h5", synth),
                           tmp_path / "s", 3, 3, seed=1)
    assert w.open_study(made.folder, "hal")
    readouts = []
    w.viewer.readout.connect(readouts.append)
    for pane in w.viewer.slice_views:
        pane.readout.connect(readouts.append)
    levels = []
    while w.current is not None:
        qtbot.wait(10)
        panes = w.viewer.slice_views
        assert len(panes) == 3
        for pane in panes:
            assert not pane.v_line.isVisible() and not pane.h_line.isVisible() and not pane.wl_text.isVisible()
            levels.append(tuple(float(v) for v in pane.image_item.levels))
        texts = [x.text() for x in w.findChildren(QLabel) + w.findChildren(QAbstractButton) if x.isVisible()]
        texts += [x.toolTip() for x in w.findChildren(QWidget) if x.isVisible()]
        assert not [t for t in texts if re.search(r"\bW\b.*\bL\b|W/L|window|level", t)], texts
        assert not [c for c in w.findChildren(QComboBox) if c.isVisible()]  # no W/L presets to pick
        # Hover, click and a right-drag (window/level elsewhere) tell nothing and change nothing.
        pane = panes[0]
        centre = pane.mapFromScene(pane.scene_pos_of(tuple(n // 2 for n in w.viewer.state.spatial_shape)))
        qtbot.mouseMove(pane.viewport(), centre)
        qtbot.mouseClick(pane.viewport(), Qt.MouseButton.LeftButton, pos=centre)
        before = w.viewer.state.window_level
        qtbot.mousePress(pane.viewport(), Qt.MouseButton.RightButton, pos=centre)
        qtbot.mouseMove(pane.viewport(), centre + QPoint(60, 40))
        qtbot.mouseRelease(pane.viewport(), Qt.MouseButton.RightButton, pos=centre + QPoint(60, 40))
        assert w.viewer.state.window_level == before
        qtbot.keyClick(pane, Qt.Key.Key_W)
        assert not w.viewer.state.wl_mode
        qtbot.keyClick(w, Qt.Key.Key_U)
    assert readouts == []
    assert set(levels) == {rs.DISPLAY_LEVELS}  # every item, real or synthetic, through one window


def test_widget_reports_bad_input_in_place(widget, qtbot, files2d, tmp_path):
    w = widget
    with qtbot.waitSignal(w.failed, timeout=1000):
        assert w.new_study(files2d[0], files2d[1], tmp_path / "s", 50, 2, 0) is None
    assert "complete samples" in w.message.text() and w.stack.currentWidget() is w.start_page
    assert not w.open_study(tmp_path, "x")
    assert "study.json" in w.message.text()


def test_cli_creates_a_study_and_prints_its_summary(tmp_path, capsys):
    from engine.data.phantoms import make_phantoms
    from engine.evaluation import reader_study as rs
    from engine.io.medsynth_writer import write_image_set
    from medsynth.cli import main

    real = write_image_set(tmp_path / "real.h5", make_phantoms(6, size=16, seed=1))
    synth = write_image_set(tmp_path / "synth.h5", make_phantoms(6, size=16, seed=2))
    assert main(["reader-study", "create", str(real), str(synth), "--out", str(tmp_path / "study"),
                 "--n-real", "3", "--n-synth", "3", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    key = tmp_path / "study.key.json"
    assert f"answer key: {key}" in out and "do not give it to readers" in out
    assert not list((tmp_path / "study").glob("*key*"))
    session = reader_session.Session(tmp_path / "study", "dr_a")
    for item in rs.load_key(key).items:  # a perfect reader
        session.answer(item.id, "real" if item.truth == "real" else "fake")
    assert main(["reader-study", "summary", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert "dr_a" in out and "100.0%" in out and "Sensitivity" in out
    kept = key.rename(tmp_path / "elsewhere.json")
    assert main(["reader-study", "summary", str(tmp_path / "study")]) == 2
    assert "answer key" in capsys.readouterr().err
    assert main(["reader-study", "summary", str(tmp_path / "study"), "--key", str(kept)]) == 0
    assert "100.0%" in capsys.readouterr().out
    assert main(["reader-study", "create", str(real), str(synth), "--out", str(tmp_path / "s2"),
                 "--key", str(tmp_path / "s2" / "k.json")]) == 2
    assert "inside the study folder" in capsys.readouterr().err and not (tmp_path / "s2" / "k.json").exists()
    assert main(["reader-study", "create", str(real)]) == 2

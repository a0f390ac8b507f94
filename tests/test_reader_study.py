"""Reader study: blinded study files, crash-safe answers, hand-checked figures and kappas, and the reading widget."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine import reader_study as rs
from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.store import write_image_set

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
    return {it.id: it.truth for it in rs.load_study(study).items}


# -- the study file -----------------------------------------------------------------------------------------------
def test_blinded_order_is_shuffled_and_reproducible_from_the_seed(files2d, tmp_path):
    real, synth = files2d
    a = rs.create_study(real, synth, tmp_path / "a", 6, 6, seed=3)
    b = rs.create_study(real, synth, tmp_path / "b", 6, 6, seed=3)
    c = rs.create_study(real, synth, tmp_path / "c", 6, 6, seed=4)
    assert a == tmp_path / "a" / "study.json"
    items = lambda p: json.loads(p.read_text())["items"]  # noqa: E731
    assert items(a) == items(b) and items(a) != items(c)
    doc = json.loads(a.read_text())
    assert doc["seed"] == 3 and doc["spatial_dims"] == 2
    study = rs.load_study(a)
    order = [it.truth for it in study.items]
    assert [it.id for it in study.items] == list(range(1, 13))
    assert order.count("real") == 6 and order.count("synthetic") == 6
    assert order != sorted(order) and order != sorted(order, reverse=True)  # interleaved, not in blocks
    for truth in rs.TRUTHS:
        idx = [it.index for it in study.items if it.truth == truth]
        assert len(set(idx)) == 6 and all(0 <= i < 12 for i in idx)
    assert study.sources == {"real": real.resolve(), "synthetic": synth.resolve()}


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
    study = rs.create_study(real, synth, tmp_path / "ok", 2, 2, 0)
    with pytest.raises(InputError, match="not an empty folder"):
        rs.create_study(real, synth, tmp_path / "ok", 2, 2, 0)
    with pytest.raises(InputError, match="holds no study.json"):
        rs.Session(tmp_path, "ann")
    with pytest.raises(InputError, match="reader name"):
        rs.Session(study, "../evil")
    s = rs.Session(study, "ann")
    for kwargs, message in (({"verdict": "maybe"}, "verdict must be"), ({"realism": 6}, "1 to 5"),
                            ({"anatomy": 0}, "1 to 5"), ({"realism": True}, "1 to 5"),
                            ({"consistency": 3}, "volumes only"), ({"seconds": -1}, "seconds")):
        with pytest.raises(InputError, match=message):
            s.answer(1, **{"verdict": "real", **kwargs})
    with pytest.raises(InputError, match="has no item 99"):
        s.answer(99, "real")
    assert s.n_answered == 0 and not s.path.exists()  # a refused answer writes nothing


def test_engine_module_loads_no_qt():
    code = ("import sys, engine.reader_study\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'medsynth_gui')]"
            "\nsys.exit(f'Qt loaded: {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_items_are_blind_and_share_the_real_geometry(files3d, tmp_path):
    study = rs.create_study(*files3d, tmp_path / "v", 3, 3, seed=1)
    s = rs.Session(study, "ann")
    item = s.next_item()
    assert set(vars(item)) == {"id", "number", "total"}  # nothing that names a source or the truth
    truth = truths(study)
    shown = {truth[it.id]: s.image(it.id) for it in rs.load_study(study).items}
    for img in shown.values():
        assert set(vars(img)) == {"image", "spacing", "affine", "units", "spatial_dims"}
        assert img.image.shape == (16, 16, 16) and img.spacing == (1.5, 1.5, 3.0)
    it = rs.load_study(study).items[0]
    with h5py.File(files3d[0] if it.truth == "real" else files3d[1], "r") as f:
        stored = f["images"][it.index, 0]  # (D, H, W)
    assert np.array_equal(s.image(it.id).image, np.transpose(stored, (2, 1, 0)))


# -- answers and figures ------------------------------------------------------------------------------------------
# One reader's script, by truth: 6 synthetic items answered fake x4, real x1, unsure x1, and 4 real items
# answered real x2, fake x1, unsure x1. By hand: decided 8, correct 4 + 2 = 6 -> accuracy 6/8;
# sensitivity 4/5; specificity 2/3; unsure 2/10; unsure-as-wrong accuracy 6/10.
SCRIPT = {"synthetic": [("fake", 2), ("fake", 3), ("fake", 2), ("fake", 3), ("real", 2), ("unsure", None)],
          "real": [("real", 4), ("real", 4), ("fake", 5), ("unsure", 5)]}


def run_script(study: Path, reader: str) -> rs.Session:
    s = rs.Session(study, reader)
    truth = truths(study)
    todo = {k: list(v) for k, v in SCRIPT.items()}
    while (item := s.next_item()) is not None:
        verdict, realism = todo[truth[item.id]].pop(0)
        anatomy = 3 if truth[item.id] == "real" else 1
        s.answer(item.id, verdict, realism=realism, anatomy=anatomy, seconds=2.5)
    return s


def test_a_scripted_reader_gives_the_hand_computed_figures(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 4, 6, seed=7)
    s = run_script(study, "ann")
    assert s.done and s.next_item() is None
    lines = s.path.read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["reader"] == "ann"
    summary = rs.summarise(study.parent)
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
    assert summary["study"] == {"folder": str(study.parent), "items": 10, "real": 4, "synthetic": 6, "seed": 7,
                                "spatial_dims": 2}
    assert "unsure answers are excluded from accuracy" in summary["convention"]
    rows = rs.figure_rows(summary)
    assert rows[0][:6] == ["ann", "10 / 10", "75.0%", "80.0%", "66.7%", "20.0%"] and rows[1][0] == "pooled"
    assert rows[0][6] == "4.50 / 2.40"


def test_answering_twice_keeps_the_last_answer(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 2, 2, seed=0)
    s = rs.Session(study, "ann")
    first = s.next_item()
    s.answer(first.id, "real", realism=2)
    s.answer(first.id, "fake", realism=5)
    assert len(s.path.read_text().splitlines()) == 2
    again = rs.Session(study, "ann")
    assert again.n_answered == 1 and again.answers[first.id].verdict == "fake"
    assert again.answers[first.id].realism == 5 and again.next_item().number == 2
    assert rs.summarise(study)["readers"]["ann"]["answered"] == 1


def test_answers_survive_a_killed_process_and_the_session_resumes(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 4, 4, seed=2)
    k = 3
    code = textwrap.dedent(f"""
        import sys, time
        from engine.reader_study import Session
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
    s = rs.Session(study, "bob")
    order = [it.id for it in rs.load_study(study).items]
    assert sorted(s.answers) == sorted(order[:k])
    assert s.next_item().number == k + 1 and s.next_item().id == order[k]


def test_a_dropped_session_and_a_torn_last_line_lose_nothing(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 3, 3, seed=5)
    s = rs.Session(study, "cy")
    for _ in range(2):
        s.answer(s.next_item().id, "unsure")
    path = s.path
    del s  # never closed
    with open(path, "a") as fh:
        fh.write('{"reader": "cy", "item": 6, "verd')  # a write cut short by a crash
    s = rs.Session(study, "cy")
    assert s.n_answered == 2 and s.next_item().number == 3
    s.answer(s.next_item().id, "real")
    again = rs.Session(study, "cy")
    assert again.n_answered == 3 and again.next_item().number == 4


# -- agreement ----------------------------------------------------------------------------------------------------
def test_kappas_equal_hand_computed_values():
    # 2x2 table: both real 4, A real / B fake 2, A fake / B real 0, both fake 4.
    # p_o = 8/10; p_e = 0.6*0.4 + 0.4*0.6 = 0.48; Cohen = 0.32/0.52 = 8/13.
    a = ["real"] * 6 + ["fake"] * 4
    b = ["real"] * 4 + ["fake"] * 6
    assert rs.cohen_kappa(a, b) == pytest.approx(8 / 13)
    # Fleiss pools the marginals: p = (1/2, 1/2), P_e = 1/2, mean P_i = 8/10 -> 0.6.
    table = [[int(x == "real") + int(y == "real"), int(x == "fake") + int(y == "fake"), 0] for x, y in zip(a, b)]
    assert rs.fleiss_kappa(table) == pytest.approx(0.6)
    # Three raters, three categories: rows RRR, FFF, RFU, RRF. P_i = 1, 1, 0, 1/3 -> mean 7/12;
    # p = (6, 5, 1)/12 -> P_e = 62/144; kappa = (7/12 - 31/72) / (1 - 31/72) = 11/41.
    assert rs.fleiss_kappa([[3, 0, 0], [0, 3, 0], [1, 1, 1], [2, 1, 0]]) == pytest.approx(float(Fraction(11, 41)))
    mixed = ["real", "fake", "unsure", "fake"]
    assert rs.cohen_kappa(mixed, mixed) == 1.0
    assert rs.fleiss_kappa([[2, 0, 0], [0, 2, 0], [0, 0, 2]]) == 1.0
    assert rs.cohen_kappa(["real"] * 3, ["real"] * 3) is None  # p_e = 1: undefined
    assert rs.cohen_kappa([], []) is None and rs.fleiss_kappa([]) is None
    # Opposite calls on a balanced set: kappa -1.
    assert rs.cohen_kappa(["real", "fake"], ["fake", "real"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        rs.fleiss_kappa([[2, 0, 0], [1, 0, 0]])


def test_summary_agreement_over_shared_items(files2d, tmp_path):
    study = rs.create_study(*files2d, tmp_path / "s", 5, 5, seed=9)
    order = [it.id for it in rs.load_study(study).items]
    plans = {"a": ["real"] * 6 + ["fake"] * 4, "b": ["real"] * 4 + ["fake"] * 6,
             "c": ["real"] * 6 + ["fake"] * 2}  # c answers the first 8 items only, as a copies a
    for reader, verdicts in plans.items():
        s = rs.Session(study, reader)
        for item_id, v in zip(order, verdicts):
            s.answer(item_id, v)
    ag = rs.summarise(study)["agreement"]
    cohen = {tuple(c["readers"]): (c["items"], c["kappa"]) for c in ag["cohen"]}
    assert cohen[("a", "b")] == (10, pytest.approx(8 / 13))
    assert cohen[("a", "c")] == (8, pytest.approx(1.0))
    # b vs c on 8 items: both real 4, c real / b fake 2, both fake 2: p_o = 3/4, p_e = 1/2*3/4 + 1/2*1/4 = 1/2.
    assert cohen[("b", "c")] == (8, pytest.approx(0.5))
    # Fleiss on the 8 items all three answered: rows RRR x4, RFR x2, FFF x2 -> mean P_i = 5/6,
    # p = (16, 8)/24 -> P_e = 5/9; kappa = (5/6 - 5/9) / (4/9) = 5/8.
    assert ag["fleiss"] == {"readers": ["a", "b", "c"], "items": 8, "kappa": pytest.approx(5 / 8)}
    rows = rs.agreement_rows(rs.summarise(study))
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
    item = {it.id: it for it in rs.load_study(study).items}[w.current.id]
    names = [n for f in files for n in (f.name, f.stem)] + ["chestsrc", "volsrc"]
    # No file name anywhere in the widget, shown or not; on screen, nothing like "#3" or "seed 17".
    assert not [t for t in screen_texts(w, False) for n in names if n in t]
    shown = screen_texts(w, True)
    assert not [t for t in shown if "#" in t or "seed" in t.lower() or f"index {item.index}" in t]
    assert any(t.startswith("Item ") for t in shown)


def test_widget_records_keys_buttons_and_ratings_and_stays_blind(widget, qtbot, files2d, tmp_path):
    from PySide6.QtCore import Qt

    w = widget
    study = w.new_study(*files2d, tmp_path / "s", 3, 3, 11)
    assert study is not None and w.study_edit.text() == str(study.parent)
    assert w.open_study(study.parent, "dana")
    assert w.stack.currentWidget() is w.reading_page
    assert w.progress.text() == "Item 1 of 6"
    assert len(w.viewer.slice_views) == 1  # a 2D image fills the view
    assert not w.ratings["consistency"].isVisible() and w.ratings["realism"].isVisible()
    assert_blind(w, files2d, study)
    order = [it.id for it in rs.load_study(study).items]

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

    answers = rs.load_answers(rs.answers_path(study, "dana"))
    assert [answers[i].verdict for i in order[:5]] == ["real", "fake", "unsure", "fake", "real"]
    assert (answers[order[0]].realism, answers[order[0]].anatomy, answers[order[0]].consistency) == (4, 3, None)
    assert answers[order[2]].realism is None
    assert all(a.seconds >= 0 for a in answers.values())

    w.previous()  # back to item 5: its answer is shown and can be changed
    assert w.progress.text() == "Item 5 of 6" and "Real" in w.previous_note.text()
    qtbot.keyClick(w, Qt.Key.Key_U)
    assert w.progress.text() == "Item 6 of 6"
    assert rs.load_answers(rs.answers_path(study, "dana"))[order[4]].verdict == "unsure"

    w.stop()
    qtbot.keyClick(w, Qt.Key.Key_R)  # the letters do nothing away from the reading page
    assert rs.Session(study, "dana").n_answered == 5
    assert w.open_study(study.parent, "dana") and w.progress.text() == "Item 6 of 6"  # resumes
    with qtbot.waitSignal(w.finished, timeout=2000):
        qtbot.keyClick(w, Qt.Key.Key_F)
    assert w.stack.currentWidget() is w.done_page and "All 6 items answered" in w.done_label.text()


def test_widget_shows_volumes_in_three_views_with_slice_consistency(widget, qtbot, files3d, tmp_path):
    from PySide6.QtCore import Qt

    w = widget
    study = rs.create_study(*files3d, tmp_path / "v", 2, 2, seed=4)
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
    a = rs.load_answers(rs.answers_path(study, "eve"))[first]
    assert (a.verdict, a.realism, a.anatomy, a.consistency) == ("unsure", 5, 4, 2)


def test_widget_summary_shows_the_figures(widget, qtbot, files2d, tmp_path):
    w = widget
    study = rs.create_study(*files2d, tmp_path / "s", 4, 6, seed=7)
    run_script(study, "ann")
    assert w.open_study(study.parent, "ann")
    assert w.stack.currentWidget() is w.done_page  # nothing left to read
    assert w.show_summary()
    t = w.figures_table
    row = [t.item(0, c).text() for c in range(t.columnCount())]
    assert row[:6] == ["ann", "10 / 10", "75.0%", "80.0%", "66.7%", "20.0%"]
    assert t.item(1, 0).text() == "pooled" and t.rowCount() == 2
    assert "two or more readers" in w.agreement_table.item(0, 1).text()
    assert "unsure answers are excluded" in w.convention.text()


def test_widget_reports_bad_input_in_place(widget, qtbot, files2d, tmp_path):
    w = widget
    with qtbot.waitSignal(w.failed, timeout=1000):
        assert w.new_study(files2d[0], files2d[1], tmp_path / "s", 50, 2, 0) is None
    assert "complete samples" in w.message.text() and w.stack.currentWidget() is w.start_page
    assert not w.open_study(tmp_path, "x")
    assert "study.json" in w.message.text()


def test_cli_creates_a_study_and_prints_its_summary(tmp_path, capsys):
    from engine import reader_study as rs
    from engine.cli import main
    from engine.data.phantoms import make_phantoms
    from engine.store import write_image_set

    real = write_image_set(tmp_path / "real.h5", make_phantoms(6, size=16, seed=1))
    synth = write_image_set(tmp_path / "synth.h5", make_phantoms(6, size=16, seed=2))
    assert main(["reader-study", "create", str(real), str(synth), "--out", str(tmp_path / "study"),
                 "--n-real", "3", "--n-synth", "3", "--seed", "4"]) == 0
    session = rs.Session(tmp_path / "study", "dr_a")
    study = rs.load_study(tmp_path / "study")
    for item in study.items:  # a perfect reader
        session.answer(item.id, "real" if item.truth == "real" else "fake")
    capsys.readouterr()
    assert main(["reader-study", "summary", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert "dr_a" in out and "100.0%" in out and "Sensitivity" in out
    assert main(["reader-study", "create", str(real)]) == 2

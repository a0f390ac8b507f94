"""A reader study's files stay in its folder, and a damaged study.json or key is one line, never a traceback.

The study is made by `create_study` from phantom files; each test then damages one thing the way a
careless copy, a hand edit or a hostile colleague would: a link where an answers file should be, a
study.json of the wrong shape, an answer key listing an item twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.evaluation import reader_study as rs
from engine.evaluation import reader_summary
from engine.evaluation.reader_session import Session, answers_path, load_answers
from engine.io.medsynth_writer import write_image_set
from medsynth.cli import main


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    synth = make_phantoms(6, 16, seed=2)
    synth.kind = "synthetic"
    return (write_image_set(folder / "real.h5", make_phantoms(6, 16, seed=1)),
            write_image_set(folder / "gen.h5", synth))


@pytest.fixture()
def study(tmp_path, sources) -> Path:
    return rs.create_study(*sources, tmp_path / "study", 3, 3, seed=0).folder


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def cli_error(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ----------------------------------------------------------------------------- links and paths
def test_an_answers_file_that_is_a_link_is_never_written_through(tmp_path, study):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("someone else's file\n")
    (study / "answers-ann.jsonl").symlink_to(outside)
    with pytest.raises(InputError, match=r"answers-ann\.jsonl: is a link"):
        Session(study, "ann").answer(1, "real")
    assert outside.read_text() == "someone else's file\n"
    with pytest.raises(InputError, match="is a link"):  # nor read by the summary
        reader_summary.summarise(study)


def test_a_link_made_after_the_session_opened_is_not_followed(tmp_path, study):
    session = Session(study, "bob")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("")
    session.path.symlink_to(outside)  # swapped in between the check and the write
    with pytest.raises(InputError, match="is a link"):
        session.answer(1, "fake")
    assert outside.read_text() == ""


def test_a_dangling_link_is_refused_and_nothing_is_created_at_its_target(tmp_path, study):
    target = tmp_path / "created-by-medsynth.jsonl"
    (study / "answers-cy.jsonl").symlink_to(target)
    with pytest.raises(InputError, match="is a link"):
        Session(study, "cy").answer(1, "real")
    assert not target.exists()
    with pytest.raises(InputError, match="is a link"):
        load_answers(study / "answers-cy.jsonl")


def test_a_hard_link_to_a_file_elsewhere_is_not_appended_to(tmp_path, study):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("someone else's file\n")
    os.link(outside, study / "answers-dee.jsonl")
    with pytest.raises(InputError, match=r"answers-dee\.jsonl: has another name elsewhere \(a hard link\)"):
        Session(study, "dee").answer(1, "real")
    assert outside.read_text() == "someone else's file\n"


def test_a_folder_in_place_of_an_answers_file_is_one_line(study, capsys):
    (study / "answers-eve.jsonl").mkdir()
    assert "answers-eve.jsonl: is not a plain file" in cli_error(["reader-study", "summary", str(study)], capsys)


def test_study_json_and_items_that_are_links_are_refused(tmp_path, study, sources, capsys):
    other = rs.create_study(*sources, tmp_path / "other", 3, 3, seed=1).folder
    (study / rs.ITEMS_FILE).unlink()
    (study / rs.ITEMS_FILE).symlink_to(other / rs.ITEMS_FILE)
    with pytest.raises(InputError, match=r"items\.h5: is a link"):
        Session(study, "ann")
    os.replace(study / rs.STUDY_FILE, tmp_path / "moved.json")
    (study / rs.STUDY_FILE).symlink_to(tmp_path / "moved.json")
    assert "study.json: is a link" in cli_error(["reader-study", "summary", str(study)], capsys)


def test_an_items_file_named_outside_the_folder_is_refused(tmp_path, study):
    doc = json.loads((study / rs.STUDY_FILE).read_text())
    for name in ("../other/items.h5", str(tmp_path / "items.h5"), ".."):
        (study / rs.STUDY_FILE).write_text(json.dumps(doc | {"items_file": name}))
        with pytest.raises(InputError, match="study folder"):
            rs.load_study(study)


def test_plain_answers_still_work(study):
    s = Session(study, "ann")
    s.answer(1, "real", realism=4)
    s.answer(2, "fake")
    assert set(load_answers(answers_path(study, "ann"))) == {1, 2}
    assert Session(study, "ann").n_answered == 2


# ----------------------------------------------------------------------------- study.json shapes
DAMAGED = [
    ({"items": "six"}, "'items' must be a whole number of items"),
    ({"items": [1, 2, 3]}, "'items' must be a whole number of items"),
    ({"items": -4}, "'items' must be a whole number of items"),
    ({"items": True}, "'items' must be a whole number of items"),
    ({"version": "two"}, "'version' must be a whole number"),
    ({"version": None}, "'version' must be a whole number"),
    ({"geometry": "axial"}, "'geometry' must be an object"),
    ({"geometry": {"spacing": [1.0, "x"]}}, "'geometry.spacing' must be positive numbers"),
    ({"geometry": {"spacing": [1.0, -2.0]}}, "'geometry.spacing' must be positive numbers"),
    ({"geometry": {"affine": [[1, 0], [0, 1]]}}, "'geometry.affine' must be 4 rows of 4 numbers"),
    ({"spatial_dims": 7}, "'spatial_dims' must be 2 or 3"),
    ({"spatial_dims": "2"}, "'spatial_dims' must be 2 or 3"),
    ({"study_id": None}, "it has no 'study_id'"),
    ({"study_id": 12}, "'study_id' must be a non-empty text"),
    ({"image_shape": "16x16"}, "'image_shape' must be a list of positive sizes"),
    ({"items_file": ["items.h5"]}, "'items_file' must be a file name"),
]


@pytest.mark.parametrize("change, fault", DAMAGED, ids=[f"{k}={v!r}" for (c, _) in DAMAGED for k, v in c.items()])
def test_a_damaged_study_json_is_one_line_naming_it(study, change, fault, capsys):
    file = study / rs.STUDY_FILE
    doc = json.loads(file.read_text())
    doc.update(change)
    if change.get("study_id", 0) is None:
        del doc["study_id"]
    file.write_text(json.dumps(doc))
    before = tree(study)
    with pytest.raises(InputError) as err:
        Session(study, "ann")
    assert str(err.value).startswith(f"{file}: is a damaged study file: {fault}") and "\n" not in str(err.value)
    for argv in (["reader-study", "summary", str(study)], ["reader-study", "summary", str(file)]):
        line = cli_error(argv, capsys)
        assert f"{file}: is a damaged study file: {fault}" in line
    assert tree(study) == before  # nothing written


@pytest.mark.parametrize("doc", [[1, 2, 3], "study", None, 5])
def test_a_study_json_that_is_not_an_object_is_one_line(study, doc, capsys):
    (study / rs.STUDY_FILE).write_text(json.dumps(doc))
    assert "study.json: is not a study file" in cli_error(["reader-study", "summary", str(study)], capsys)


# ----------------------------------------------------------------------------- item ids
def _rewrite_key(study: Path, edit) -> Path:
    key = rs.default_key_path(study)
    doc = json.loads(key.read_text())
    edit(doc["items"])
    key.write_text(json.dumps(doc))
    return key


@pytest.mark.parametrize("edit, fault", [
    (lambda items: items[1].update(id=items[0]["id"]), "item id 1 appears more than once"),
    (lambda items: items[4].update(truth=items[3]["truth"], index=items[3]["index"]), "appears more than once"),
    (lambda items: items[0].update(id="one"), "is not an item"),
    (lambda items: items[0].update(truth="fake"), "is not an item"),
    (lambda items: items[0].update(index=-1), "is not an item"),
    (lambda items: items.append(7), "is not an item"),
])
def test_an_answer_key_with_a_repeated_or_bad_item_is_refused(study, edit, fault, capsys):
    key = _rewrite_key(study, edit)
    with pytest.raises(InputError, match="damaged answer key") as err:
        rs.load_key(key)
    assert fault in str(err.value) and str(err.value).startswith(str(key))
    assert fault in cli_error(["reader-study", "summary", str(study)], capsys)


def test_a_first_version_study_with_repeated_ids_is_refused(study, capsys):
    key = json.loads(rs.default_key_path(study).read_text())
    items = key["items"]
    items[2]["id"] = items[1]["id"]
    legacy = {"format": rs.FORMAT, "version": 1, "spatial_dims": 2, "seed": 0, "sources": key["sources"],
              "items": items}
    (study / rs.STUDY_FILE).write_text(json.dumps(legacy))
    assert "item id 2 appears more than once" in cli_error(["reader-study", "summary", str(study)], capsys)


def test_create_refuses_a_draw_that_repeats_an_item_before_writing(tmp_path, sources, monkeypatch):
    """Ids are numbered 1..n, and each source sample may be drawn once: a draw that repeats one is refused."""
    real_rng = np.random.default_rng

    class Repeating:
        def __init__(self, seed):
            self.rng = real_rng(seed)

        def choice(self, n, k, replace=True):
            picked = self.rng.choice(n, k, replace=False)
            picked[1] = picked[0]  # as a draw with replacement could
            return picked

        def permutation(self, n):
            return self.rng.permutation(n)

    monkeypatch.setattr(np.random, "default_rng", Repeating)
    out = tmp_path / "study"
    with pytest.raises(InputError, match="appears more than once"):
        rs.create_study(*sources, out, 3, 3, seed=0)
    assert not out.exists() and not rs.default_key_path(out).exists()

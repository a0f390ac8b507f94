"""Prompts from the data: a prompts.csv beside a picture folder, class names in a template, and the prompts file
`medsynth sample` reads. Folders are made here shaped like what users bring: a chest X-ray folder (16-bit PNGs,
labels.csv naming "normal" / "pneumonia"), a Kvasir-SEG folder (images/ + masks/ JPEGs) with a prompts.csv saved by
Excel (a byte-order mark, quoted prompts holding commas), and a MedMNIST .npz."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.dataset import ImageSet, validate
from engine.data.prompts import DEFAULT_TEMPLATE, class_prompt, training_prompts
from engine.errors import InputError
from engine.io.load import load_images
from engine.io.prompts_csv import PromptRow, read_prompt_rows
from engine.io.sources.pictures import read_folder_pairs

TOP = 4095  # 12-bit detector values in 16-bit PNGs, as X-ray archives store them


def cxr_folder(root: Path, classes: dict[str, str]) -> Path:
    """images/<stem>.png, 16-bit, each image's mean brightness its index (so an image is known by its pixels), and
    labels.csv `stem,class` listed in reverse stem order."""
    (root / "images").mkdir(parents=True)
    for i, stem in enumerate(sorted(classes)):
        value = np.full((24, 20), 100 * (i + 1), np.uint16)
        value[:4, :4] = TOP
        Image.fromarray(value).save(root / "images" / f"{stem}.png")
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("stem", "class"), *sorted(classes.items(), reverse=True)])
    return root


def kvasir_folder(root: Path, stems: list[str]) -> Path:
    """Kvasir-SEG's layout: images/*.jpg (RGB, each a different red) and masks/*.jpg."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        rgb = np.zeros((32, 40, 3), np.uint8)
        rgb[..., 0] = 40 * (i + 1)
        Image.fromarray(rgb).save(root / "images" / f"{stem}.jpg", quality=95)
        mask = np.zeros((32, 40), np.uint8)
        mask[8:20, 10:30] = 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.jpg", quality=95)
    return root


def write_csv(path: Path, rows: list[tuple[str, ...]], bom: bool = False) -> Path:
    """As Excel's "CSV UTF-8" saves it (with `bom`): quoted where a value holds a comma or a quote."""
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def fault(fn, *args: object, **kwargs: object) -> str:
    with pytest.raises(InputError) as exc:
        fn(*args, **kwargs)
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


KVASIR = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv"]
KVASIR_PROMPTS = {
    KVASIR[0]: "colonoscopy, sessile polyp, 6 mm, ascending colon",
    KVASIR[1]: 'colonoscopy, pedunculated polyp, "large", sigmoid',
    KVASIR[2]: "colonoscopy, polyp {flat}, rectum",  # a brace is the user's text, not a field
}


# ---------------------------------------------------------------- prompts.csv beside pictures


def test_kvasir_prompts_csv_with_bom_and_quoted_commas_lands_on_each_image(tmp_path):
    root = kvasir_folder(tmp_path / "kvasir", KVASIR)
    # Rows in an order of their own, one given by its file name, the prompts quoted with their commas.
    rows = [("stem", "prompt"), (KVASIR[2], KVASIR_PROMPTS[KVASIR[2]]),
            (f"{KVASIR[0]}.jpg", "  " + KVASIR_PROMPTS[KVASIR[0]] + " "), (KVASIR[1], KVASIR_PROMPTS[KVASIR[1]])]
    text = write_csv(root / "prompts.csv", rows, bom=True).read_bytes()
    assert text.startswith(b"\xef\xbb\xbf") and b'"colonoscopy, pedunculated polyp, ""large""' in text
    s = load_images(root)
    assert s.masks is not None and s.prompts is not None and len(s.prompts) == len(s) == 3
    # The images' order is by stem; each red level says which file an image was.
    for i, stem in enumerate(KVASIR):
        assert abs(float(s.images[i, 0].mean()) - 40 * (KVASIR.index(stem) + 1)) < 3
        assert s.prompts[i] == KVASIR_PROMPTS[stem]
    assert s.labels is None


def test_picture_only_folder_reads_prompts_csv_beside_the_pictures(tmp_path):
    root = tmp_path / "isic"
    root.mkdir()
    for i, stem in enumerate(["ISIC_0000002", "ISIC_0000000", "ISIC_0000001"]):
        Image.fromarray(np.full((16, 16, 3), 50 * (i + 1), np.uint8)).save(root / f"{stem}.png")
    write_csv(root / "prompts.csv", [("Stem ", " Prompt"), ("ISIC_0000001", "dermoscopy, nevus"),
                                     ("ISIC_0000000", "dermoscopy,\nmelanoma"), ("ISIC_0000002", "dermoscopy, bcc")])
    s = read_folder_pairs(root)
    # A line break inside a quoted prompt is a space, as CLIP's tokenizer reads it.
    assert s.prompts == ["dermoscopy, melanoma", "dermoscopy, nevus", "dermoscopy, bcc"]
    assert [round(float(s.images[i].mean())) for i in range(3)] == [100, 150, 50]


def test_cxr_labels_csv_and_prompts_csv_together_give_class_and_prompt_per_image(tmp_path):
    classes = {"cxr_000": "normal", "cxr_001": "pneumonia", "cxr_002": "pneumonia", "cxr_003": "normal"}
    root = cxr_folder(tmp_path / "cxr", classes)
    findings = {"cxr_000": "no acute cardiopulmonary process", "cxr_001": "right lower lobe consolidation",
                "cxr_002": "patchy bilateral opacities", "cxr_003": "clear lungs, normal heart size"}
    write_csv(root / "prompts.csv", [("stem", "prompt"), *findings.items()])
    s = load_images(root)
    assert s.images.max() == TOP and s.images.dtype == np.float32  # 16-bit values kept
    assert s.class_names == ["normal", "pneumonia"]
    assert [s.class_names[k] for k in s.labels] == [classes[k] for k in sorted(classes)]
    assert s.prompts == [findings[k] for k in sorted(findings)]
    for i in range(4):
        assert float(np.median(s.images[i])) == 100 * (i + 1)
    # The data's own prompts win over one prompt for all and over the template.
    assert training_prompts(s, "chest x-ray, {class}", "ignored") == s.prompts


def test_cxr_class_names_fill_the_template(tmp_path):
    classes = {"p_07": "pneumonia", "n_01": "normal", "p_02": "pneumonia"}
    s = load_images(cxr_folder(tmp_path / "cxr", classes))
    assert s.prompts is None
    got = training_prompts(s, "chest x-ray, {class}", "")
    assert got == [f"chest x-ray, {classes[k]}" for k in sorted(classes)]
    assert training_prompts(s, DEFAULT_TEMPLATE, "  ") == [classes[k] for k in sorted(classes)]
    assert training_prompts(s, "chest x-ray, {class}", " one  for all ") == ["one for all"] * 3


def test_medmnist_npz_labels_give_template_prompts(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pneumoniamnist.npz"
    labels = np.array([[1], [0], [0], [1], [1]], np.uint8)
    np.savez(path, train_images=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), train_labels=labels,
             val_images=rng.integers(0, 256, (1, 28, 28), dtype=np.uint8), val_labels=labels[:1])
    s = load_images(path, class_names=["normal", "pneumonia"])
    assert s.prompts is None
    assert training_prompts(s, "{class} chest x-ray", "") == [
        "pneumonia chest x-ray", "normal chest x-ray", "normal chest x-ray", "pneumonia chest x-ray",
        "pneumonia chest x-ray"]
    # Without names from anywhere, a class is its index.
    assert training_prompts(load_images(path), "class {class}", "")[:2] == ["class 1", "class 0"]


@pytest.mark.parametrize("rows, words", [
    ([("stem", "prompt"), ("a", "one"), ("b", "two"), ("a", "again"), ("c", "three")],
     ["'a' twice", "rows 2 and 4"]),
    ([("stem", "prompt"), ("a", "one"), ("b", "two"), ("c", "three"), ("ghost", "four")],
     ["'ghost'", "row 5", "which has no image"]),
    ([("stem", "prompt"), ("a", "one"), ("b", "  "), ("c", "three")], ["'b'", "empty prompt", "row 3"]),
    ([("stem", "prompt"), ("", "one"), ("b", "two")], ["row 2 has no stem"]),
    ([("a", "one"), ("b", "two"), ("c", "three")], ["header row", "stem,prompt", "'a,one'"]),
    ([("stem", "text"), ("a", "one")], ["header row", "no column prompt"]),
    ([("stem", "prompt")], ["no rows below its header"]),
    ([], ["is empty"]),
], ids=["stem twice", "stem without image", "empty prompt", "no stem", "no header", "no prompt column",
        "header only", "empty file"])
def test_prompts_csv_faults_are_one_line_naming_the_file(tmp_path, rows, words):
    root = cxr_folder(tmp_path / "cxr", {"a": "normal", "b": "normal", "c": "pneumonia"})
    write_csv(root / "prompts.csv", rows)
    text = fault(load_images, root)
    assert str(root / "prompts.csv") in text
    for w in words:
        assert w in text, text


def test_prompts_csv_images_without_a_row_are_counted_and_the_first_named(tmp_path):
    stems = [f"img{i:02d}" for i in range(12)]
    root = cxr_folder(tmp_path / "cxr", dict.fromkeys(stems, "normal"))
    write_csv(root / "prompts.csv", [("stem", "prompt"), ("img03", "chest x-ray"), ("img07", "chest x-ray")])
    text = fault(load_images, root)
    assert str(root / "prompts.csv") in text
    assert "no prompt for 10 of the 12 images: img00, img01, img02, img04, img05, ..." in text, text
    assert "img11" not in text


def test_prompts_csv_unquoted_comma_is_a_fault_not_a_cut_prompt(tmp_path):
    root = kvasir_folder(tmp_path / "kvasir", KVASIR[:2])
    (root / "prompts.csv").write_text(f"stem,prompt\n{KVASIR[0]},polyp\n{KVASIR[1]},colonoscopy, polyp\n")
    text = fault(load_images, root)
    assert "prompts.csv" in text and "row 3 has 3 fields for 2 columns" in text and "double quotes" in text
    # A trailing empty field (a spreadsheet's stray column) is no fault.
    (root / "prompts.csv").write_text(f"stem,prompt\n{KVASIR[0]},polyp,\n{KVASIR[1]},\"colonoscopy, polyp\",\n")
    assert load_images(root).prompts == ["polyp", "colonoscopy, polyp"]


def test_prompts_csv_not_utf8_is_one_line(tmp_path):
    root = cxr_folder(tmp_path / "cxr", {"a": "normal"})
    (root / "prompts.csv").write_bytes("stem,prompt\na,Röntgen thorax\n".encode("latin-1"))
    text = fault(load_images, root)
    assert str(root / "prompts.csv") in text and "not UTF-8" in text


def test_labels_csv_saved_with_a_bom_reads(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark: the header's first column was '\\ufeffstem',
    and the folder was refused for having no header."""
    root = cxr_folder(tmp_path / "cxr", {"a": "normal", "b": "pneumonia"})
    write_csv(root / "labels.csv", [("stem", "class"), ("b", "pneumonia"), ("a", "normal")], bom=True)
    s = load_images(root)
    assert s.class_names == ["normal", "pneumonia"] and s.labels.tolist() == [0, 1]


def test_labels_csv_stem_twice_is_refused_not_last_wins(tmp_path):
    root = cxr_folder(tmp_path / "cxr", {"a": "normal", "b": "pneumonia"})
    write_csv(root / "labels.csv", [("stem", "class"), ("a", "normal"), ("b", "pneumonia"), ("a", "pneumonia")])
    text = fault(load_images, root)
    assert "labels.csv" in text and "'a' twice" in text and "rows 2 and 4" in text


def test_prompts_csv_fault_comes_before_the_pictures_are_read(tmp_path):
    root = cxr_folder(tmp_path / "cxr", {"a": "normal", "b": "normal"})
    (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    write_csv(root / "prompts.csv", [("stem", "prompt"), ("a", "x")])
    assert "prompts.csv" in fault(load_images, root)


# ---------------------------------------------------------------- the template and which prompt each image gets


def test_class_prompt_fills_only_the_class_field():
    assert class_prompt("chest x-ray, {class}", "pneumonia") == "chest x-ray, pneumonia"
    assert class_prompt("{class}", "normal") == "normal"
    # Other braces are text: str.format would raise on "{0" or read "{x}" as a field.
    assert class_prompt("{x} {0 {class}}", "effusion") == "{x} {0 effusion}"
    assert class_prompt("{class}, a {class} case", "normal") == "normal, a normal case"
    text = fault(class_prompt, "chest x-ray {klass}", "pneumonia")
    assert "'chest x-ray {klass}'" in text and "{class}" in text
    assert "{class}" in fault(class_prompt, "", "pneumonia")


def test_training_prompts_without_any_source_names_the_data():
    s = ImageSet(images=np.zeros((3, 1, 8, 8), np.float32), source="/data/unlabelled")
    text = fault(training_prompts, s, "chest x-ray, {class}", "")
    assert text.startswith("/data/unlabelled: ") and "prompt" in text
    # A template without its field is only a fault where classes are filled in.
    labelled = ImageSet(images=np.zeros((2, 1, 8, 8), np.float32), labels=np.array([0, 1]),
                        class_names=["normal", "pneumonia"])
    assert training_prompts(labelled, "no field", "one") == ["one", "one"]
    assert "'no field'" in fault(training_prompts, labelled, "no field", "")


def test_prompts_travel_with_images_and_are_checked_against_them():
    s = ImageSet(images=np.zeros((2, 1, 8, 8), np.float32), prompts=["a", "b", "c"], source="x.h5")
    assert "3 prompts do not match 2 images" in fault(validate, s)
    assert ImageSet(images=np.zeros((2, 1, 8, 8), np.float32)).prompts is None


# ---------------------------------------------------------------- the sampling prompts file


def test_prompt_rows_with_n_and_class_by_name_or_index(tmp_path):
    path = write_csv(tmp_path / "prompts.csv", [
        ("prompt", "n", "class"), ("chest x-ray, pneumonia", "8", "pneumonia"), ("chest x-ray, normal", "", "0"),
        ("chest x-ray, {unusual} finding", "2", ""), ("chest x-ray, Normal", "3", "Normal")], bom=True)
    assert read_prompt_rows(path, ["normal", "pneumonia"]) == [
        PromptRow("chest x-ray, pneumonia", 1, 8), PromptRow("chest x-ray, normal", 0, 1),
        PromptRow("chest x-ray, {unusual} finding", None, 2), PromptRow("chest x-ray, Normal", 0, 3)]
    # Without the model's class names a name is kept for later; an index is an index.
    rows = read_prompt_rows(path)
    assert rows[0] == PromptRow("chest x-ray, pneumonia", None, 8, class_name="pneumonia")
    assert rows[1].class_index == 0 and rows[1].class_name is None


def test_prompt_rows_one_column_file(tmp_path):
    path = tmp_path / "findings.csv"
    path.write_text('Prompt\n"chest x-ray, cardiomegaly"\n\n"chest x-ray, small left effusion"\nchest x-ray\n')
    assert read_prompt_rows(path) == [PromptRow("chest x-ray, cardiomegaly", None, 1),
                                      PromptRow("chest x-ray, small left effusion", None, 1),
                                      PromptRow("chest x-ray", None, 1)]
    # The comma unquoted: the row has two fields for one column, said with its row (the blank line counts).
    path.write_text("prompt\nchest x-ray\n\nchest x-ray, cardiomegaly\n")
    text = fault(read_prompt_rows, path)
    assert str(path) in text and "row 4 has 2 fields for 1 columns" in text


@pytest.mark.parametrize("rows, words", [
    ([("prompt", "n"), ("a", "1"), ("b", "0")], ["row 3", "'0' samples", "1 or more"]),
    ([("prompt", "n"), ("a", "-2")], ["row 2", "'-2' samples"]),
    ([("prompt", "n"), ("a", "1.5")], ["row 2", "'1.5' samples"]),
    ([("prompt", "n"), ("a", "many")], ["row 2", "'many' samples"]),
    ([("prompt", "n"), ("a", "9" * 5000)], ["row 2", "samples (n)"]),
    ([("prompt", "n"), ("a", "2"), ("", "3")], ["row 3 has an empty prompt"]),
    ([("text", "n"), ("a", "2")], ["header row", "no column prompt"]),
    ([("prompt", "count"), ("a", "2")], ["column 'count'", "prompt, n, class"]),
    ([("prompt", "class"), ("a", "effusion")], ["row 2", "class 'effusion'", "0 normal, 1 pneumonia"]),
    ([("prompt", "class"), ("a", "2")], ["row 2", "class 2", "0 normal, 1 pneumonia"]),
    ([("prompt", "class"), ("a", "9" * 40)], ["row 2", "is not one of the model's classes"]),
    ([("prompt", "prompt"), ("a", "b")], ["column 'prompt' twice"]),
    ([("prompt",)], ["no rows below its header"]),
], ids=["n 0", "n negative", "n fraction", "n word", "n 5000 digits", "empty prompt", "no prompt column",
        "unknown column", "unknown class name", "class index too high", "class index 40 digits", "column twice",
        "header only"])
def test_prompt_rows_faults_name_the_file_and_row(tmp_path, rows, words):
    path = write_csv(tmp_path / "sample_prompts.csv", rows)
    text = fault(read_prompt_rows, path, ["normal", "pneumonia"])
    assert text.startswith(f"{path}: "), text
    for w in words:
        assert w in text, text


def test_prompt_rows_class_for_a_model_without_classes_or_beyond_int64(tmp_path):
    path = write_csv(tmp_path / "p.csv", [("prompt", "class"), ("a", "pneumonia")])
    assert "the model has no classes" in fault(read_prompt_rows, path, [])
    path = write_csv(tmp_path / "p.csv", [("prompt", "class"), ("a", "9" * 40)])
    assert "is not a class index" in fault(read_prompt_rows, path)


def test_prompt_rows_not_utf8_or_missing_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("prompt\nThorax-Röntgen\n".encode("utf-16"))
    assert "not UTF-8" in fault(read_prompt_rows, path)
    assert str(tmp_path / "none.csv") in fault(read_prompt_rows, tmp_path / "none.csv")

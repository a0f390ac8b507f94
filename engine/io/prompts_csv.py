"""A sampling prompts file: which prompts to generate from, how many samples of each, and the class each stands for.

    prompt,n,class
    "chest x-ray, pneumonia",8,pneumonia
    "chest x-ray, no finding",8,0

`prompt` is required (a file of that one column is a list of prompts, one sample each); `n` is how many samples
of the prompt (a whole number, 1 when left out); `class` is the class the prompt stands for, by name or index,
which the file stores with each sample so that evaluation and the gallery's class filter see classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.data.prompts import clean_prompt
from engine.errors import InputError
from engine.io.sources.csv_table import read_table

COLUMNS = ("prompt",)
OPTIONAL = ("n", "class")
# Digits beyond int64: no count of samples, and int() refuses very long digit strings outright.
MAX_DIGITS = 18
# How many of the model's classes a fault lists.
LISTED = 10


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    class_index: int | None  # the class the prompt stands for, None when it names none (or only by name)
    n: int
    # A class given by name while no class names were at hand to index it: resolved against the model's.
    class_name: str | None = None


def read_prompt_rows(path: str | Path, class_names: list[str] | None = None) -> list[PromptRow]:
    """The rows of a prompts file, in its order. With `class_names` (the model's) a class given by name is
    indexed and an index is checked against them; without, a name is kept in `class_name` for later."""
    path = Path(path)
    out = []
    for row in read_table(path, "a CSV file with a column prompt (and optional n, class)", COLUMNS, OPTIONAL):
        prompt = clean_prompt(row.values["prompt"])
        if not prompt:
            raise InputError(path, f"row {row.number} has an empty prompt")
        n = _count(path, row.number, row.values.get("n", ""))
        index, name = _class(path, row.number, row.values.get("class", ""), class_names)
        out.append(PromptRow(prompt, index, n, name))
    return out


def _count(path: Path, number: int, text: str) -> int:
    if not text:
        return 1
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS or int(text) < 1:
        raise InputError(path, f"row {number} asks for '{text}' samples (n): a whole number of 1 or more")
    return int(text)


def _class(path: Path, number: int, text: str, class_names: list[str] | None) -> tuple[int | None, str | None]:
    if not text:
        return None, None
    if class_names is not None and not class_names:
        raise InputError(path, f"row {number} names class '{text}', but the model has no classes")
    known = "" if class_names is None else ", ".join(f"{i} {c}" for i, c in enumerate(class_names[:LISTED])) \
        + (", ..." if len(class_names) > LISTED else "")
    if text.isascii() and text.isdigit():
        if len(text) > MAX_DIGITS or (class_names is not None and int(text) >= len(class_names)):
            raise InputError(path, f"row {number} names class {text}, which is not "
                                   + (f"one of the model's classes ({known})" if known else "a class index"))
        return int(text), None
    if class_names is None:
        return None, text
    if text in class_names:
        return class_names.index(text), None
    # "Pneumonia" for "pneumonia": the same class unless the model has both.
    folded = [i for i, c in enumerate(class_names) if c.casefold() == text.casefold()]
    if len(folded) == 1:
        return folded[0], None
    raise InputError(path, f"row {number} names class '{text}', which is not one of the model's classes ({known})")

"""The evaluation's stages, in the order they run: one list that the job, the CLI and the app share.

A light module (no torch) so that the CLI and the app can name stages without loading the metrics.
A stage's value is its name in settings (``EvalSettings.skip``), in the recorded timings and in progress.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    LOAD = "load"
    FID = "fid"
    FEATURES = "features"
    RADIOMICS = "radiomics"
    DIVERSITY = "diversity"
    MEMORIZATION = "memorization"
    LABELS = "labels"  # trains a segmenter / classifier: reports its own step progress
    UTILITY = "utility"  # trains three segmenters: reports its own step progress
    REPORT = "report"


# Stages that train networks report steps under their own name, not only as one step of the evaluation.
STEPPED = (Stage.LABELS, Stage.UTILITY)

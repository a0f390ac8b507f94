"""The 2D readers' old home; they live in engine.io.sources now, one module per kind of source.

Kept for tests/test_export_volumes.py and tests/test_nifti_label_coding.py, which import from here.
"""

from engine.io.sources.msd import read_msd
from engine.io.sources.nifti import read_nifti, read_nifti_cases
from engine.io.sources.npz import read_npz
from engine.io.sources.pictures import read_folder_pairs

__all__ = ["read_folder_pairs", "read_msd", "read_nifti", "read_nifti_cases", "read_npz"]

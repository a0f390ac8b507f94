"""The issue's "done when": a folder of NIfTI volumes with masks → `medsynth train` → `medsynth sample`
→ NIfTI and nnU-Net exports → the viewer, with the physical frame and orientation kept throughout."""

import json

import nibabel as nib
import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from medsynth.cli import main


def write_nifti_folder(folder, n: int = 4):
    """Phantom volumes as NIfTI files in LPS voxel order with 2 mm voxels, each with a _seg partner."""
    folder.mkdir()
    s = make_phantoms(n, size=20, dims=3, seed=4)
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [40.0, 60.0, -30.0]
    for i in range(n):
        vol = np.transpose(s.images[i, 0], (2, 1, 0)).astype(np.float32)  # (D,H,W) -> (x,y,z)
        seg = np.transpose(s.masks[i], (2, 1, 0)).astype(np.uint8)
        nib.save(nib.Nifti1Image(vol, affine), folder / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(seg, affine), folder / f"case{i}_seg.nii.gz")
    return folder


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    data = write_nifti_folder(root / "nifti")
    toml = root / "tiny.toml"
    toml.write_text("[model]\nblock_out_channels = [8, 16]\nattention_levels = [false, true]\n"
                    "attention_head_dim = 8\n[train]\nlog_every = 1\ncheckpoint_every = 1000\n")
    run = root / "run"
    assert main(["train", str(data), "--preset", "demo-3d", "--config", str(toml), "--size", "16",
                 "--steps", "2", "--out", str(run)]) == 0
    synth = root / "synth.h5"
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--out", str(synth)]) == 0
    return root, run, synth


def test_training_read_the_folder_as_volumes_at_a_spacing_that_fits(workflow):
    _, run, synth = workflow
    facts = json.loads((run / "run.json").read_text())
    spacing = facts["spacing"]
    assert len(spacing) == 3 and spacing[0] == spacing[1] == spacing[2]
    # The 20^3 phantoms at 2 mm must fit 16^3: the spacing grows to at least 2 mm * 20 / 16 minus the margin.
    assert 2.0 < spacing[0] <= 3.2
    affine = np.asarray(facts["affine"])
    np.testing.assert_allclose(np.diag(affine)[:3], spacing)  # RAS, voxel size on the diagonal


def test_samples_export_as_nifti_with_the_affine_of_the_file(workflow, tmp_path, capsys):
    from engine.io.medsynth_h5 import attrs_dict, open_file

    _, _, synth = workflow
    with open_file(synth) as f:
        a = attrs_dict(f)
        image0 = f["images"][0, 0]
        mask0 = f["masks"][0]
    assert main(["export", str(synth), "--to", str(tmp_path / "nii"), "--format", "nifti"]) == 0
    img = nib.load(str(tmp_path / "nii" / "synth_00000.nii.gz"))
    seg = nib.load(str(tmp_path / "nii" / "synth_00000_seg.nii.gz"))
    np.testing.assert_allclose(img.affine, np.asarray(a["affine"]), atol=1e-5)
    np.testing.assert_allclose(seg.affine, img.affine)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.asarray(img.dataobj), np.transpose(image0, (2, 1, 0)), atol=1e-4)
    assert np.array_equal(np.asarray(seg.dataobj), np.transpose(mask0, (2, 1, 0)))


def test_samples_export_as_an_nnunet_dataset(workflow, tmp_path):
    _, _, synth = workflow
    out = tmp_path / "Dataset501_Synth"
    assert main(["export", str(synth), "--to", str(out), "--format", "nnunet"]) == 0
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 2 and ds["file_ending"] == ".nii.gz" and ds["labels"]["background"] == 0
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["synth_00000_0000.nii.gz",
                                                                    "synth_00001_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["synth_00000.nii.gz", "synth_00001.nii.gz"]
    lab = nib.load(str(out / "labelsTr" / "synth_00000.nii.gz"))
    assert lab.shape == (16, 16, 16) and nib.aff2axcodes(lab.affine) == ("R", "A", "S")


def test_the_viewer_shows_a_sample_with_ras_letters(workflow, qtbot):
    from engine.io.sources.h5 import sample_view
    from medsynth_gui.viewer import Viewer

    _, _, synth = workflow
    d = sample_view(synth, 1)
    assert d.image.shape == (16, 16, 16) and d.mask is not None
    v = Viewer()
    qtbot.addWidget(v)
    v.resize(900, 320)
    v.show()
    qtbot.waitExposed(v)
    v.set_image(d.image, mask=d.mask, affine=d.affine, spacing=d.spacing, units=d.units)
    assert ["".join(p.letters[e].text() for e in ("left", "right", "top", "bottom")) for p in v.slice_views] == \
           ["RLAP", "RLSI", "APSI"]

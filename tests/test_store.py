import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.errors import InputError
from engine.store import SampleWriter, open_file, read_image_set, write_image_set


def test_phantom_set_round_trips_through_hdf5(tmp_path, phantoms16):
    path = write_image_set(tmp_path / "p.h5", phantoms16)
    back = read_image_set(path)
    np.testing.assert_array_equal(back.images, phantoms16.images)
    np.testing.assert_array_equal(back.masks, phantoms16.masks)
    np.testing.assert_array_equal(back.labels, phantoms16.labels)
    assert back.class_names == phantoms16.class_names and back.label_names == phantoms16.label_names
    assert back.modality == "MR" and back.kind == "real"


def test_count_only_covers_written_batches(tmp_path):
    w = SampleWriter(tmp_path / "w.h5", 5, (1, 4, 4), masks=True, labels=False)
    w.append(np.ones((2, 1, 4, 4), np.float32), np.array([7, 8]), np.ones((2, 4, 4), np.uint8))
    # A second reader sees the two complete samples while the writer still holds the file.
    with open_file(tmp_path / "w.h5") as f:
        assert f.attrs["n_complete"] == 2 and list(f["seeds"][:2]) == [7, 8]
    with pytest.raises(ValueError):
        w.append(np.ones((4, 1, 4, 4), np.float32), np.arange(4))
    w.close()
    assert read_image_set(tmp_path / "w.h5").images.shape == (2, 1, 4, 4)


def test_not_medsynth_files_are_named(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match="plain.h5.*not a MedSynth file"):
        open_file(plain)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="junk.h5.*not a readable HDF5"):
        open_file(junk)


@pytest.mark.slow
def test_file_stays_readable_when_the_writer_is_killed(tiny_run, tmp_path):
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "medsynth", "sample", str(tiny_run), "--n", "20000", "--batch", "2",
           "--steps", "8", "--out", str(out), "--keep-mismatched"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.time() + 120
        complete = 0
        while time.time() < deadline and complete < 6:
            time.sleep(0.3)
            if out.exists():
                try:
                    # The writer holds HDF5's file lock; readers of a growing file skip it.
                    with h5py.File(out, "r", locking=False) as f:
                        complete = int(f.attrs["n_complete"])
                except OSError:
                    pass  # opened between creation and the first flush
        assert complete >= 6, "the sampler never got going"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with h5py.File(out, "r") as f:
        n = int(f.attrs["n_complete"])
        assert 6 <= n < 20000
        images = f["images"][:n]
        assert np.isfinite(images).all() and (np.abs(images).reshape(n, -1).max(axis=1) > 0).all()
        assert list(f["seeds"][:n]) == list(range(n))
    assert len(read_image_set(out)) == n


def test_a_set_of_volumes_keeps_its_affine_through_the_file(tmp_path):
    from engine.data.phantoms import make_phantoms
    from engine.store import read_image_set, write_image_set

    s = make_phantoms(2, size=8, dims=3)
    s.spacing = (1.5, 1.5, 2.0)
    s.affine = np.diag([1.5, 1.5, 2.0, 1.0])
    s.affine[:3, 3] = [-5.25, -5.25, -7.0]
    back = read_image_set(write_image_set(tmp_path / "v.h5", s))
    np.testing.assert_allclose(back.affine, s.affine)
    assert back.spacing == (1.5, 1.5, 2.0)

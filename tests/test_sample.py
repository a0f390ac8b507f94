import json

import h5py
import numpy as np
import pytest

from engine.errors import InputError
from engine.inference.sample import Generator, SampleJob, parse_class_mix
from engine.jobs import Cancelled, Progress, Requests
from tests.conftest import StopAfter


def sample(run, out, **kw):
    events = []
    kw.setdefault("redraw_mismatches", False)  # these tests are about seeds: sample i has seed SEED + i
    result = SampleJob(run, out=out, **kw).run(events.append, Requests())
    return result, events


def test_sample_file_matches_the_schema(tiny_run, tmp_path):
    out = tmp_path / "s.h5"
    result, events = sample(tiny_run, out, n=10, steps=4, batch=4, seed=100)
    assert result["n"] == 10
    assert [e.done for e in events if isinstance(e, Progress)] == [4, 8, 10]
    with h5py.File(out, "r") as f:
        a = f.attrs
        assert a["format"] == "medsynth" and a["format_version"] == 1 and a["kind"] == "synthetic"
        assert a["spatial_dims"] == 2 and a["n_complete"] == 10
        assert f["images"].dtype == np.float32 and f["images"].shape == (10, 1, 16, 16)
        assert f["images"].chunks == (1, 1, 16, 16) and f["images"].compression == "gzip"
        assert f["masks"].dtype == np.uint8 and f["masks"].shape == (10, 16, 16)
        assert f["labels"].dtype == np.int64 and set(f["labels"][:]) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(f["seeds"][:], np.arange(100, 110))
        assert json.loads(a["class_names"])[0] == "no lesion"
        assert json.loads(a["label_names"]) == {"0": "background", "1": "bright lesion", "2": "dark lesion"}
        norm = json.loads(a["normalisation"])
        assert norm["modality"] == "MR" and norm["hi"] > norm["lo"]
        assert len(a["checkpoint_sha256"]) == 64 and a["created"].startswith("20")
        assert json.loads(a["config"])["model"]["image_size"] == 16
        assert "metrics" in f and "summary" in f["metrics"].attrs
        # Intensities come back in the data's units (phantoms span 0..1000), not [-1, 1].
        assert f["images"][:].max() > 50


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm"])
def test_a_sample_regenerated_from_its_seed_equals_the_original(tiny_run, tmp_path, sampler):
    _, _ = sample(tiny_run, tmp_path / "all.h5", n=6, steps=5, batch=3, seed=40, sampler_name=sampler)
    _, _ = sample(tiny_run, tmp_path / "one.h5", n=1, steps=5, batch=1, seed=44, sampler_name=sampler)
    with h5py.File(tmp_path / "all.h5") as a, h5py.File(tmp_path / "one.h5") as b:
        assert a["seeds"][4] == b["seeds"][0] == 44
        assert a["labels"][4] == b["labels"][0]
        # Batch composition changes CPU kernels' summation order, hence a tolerance.
        np.testing.assert_allclose(a["images"][4], b["images"][0], rtol=1e-3, atol=1e-2)
        np.testing.assert_array_equal(a["masks"][4], b["masks"][0])


def test_same_seed_same_batch_is_bit_identical(tiny_run):
    gen = Generator(tiny_run)
    x1, m1 = gen.generate([1, 2], [0, 3], "ddpm", 5)
    x2, m2 = gen.generate([1, 2], [0, 3], "ddpm", 5)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(m1, m2)


def test_class_choice_and_class_mix(tiny_run, tmp_path):
    sample(tiny_run, tmp_path / "c.h5", n=5, steps=2, class_index=2)
    with h5py.File(tmp_path / "c.h5") as f:
        assert list(f["labels"][:]) == [2] * 5
    sample(tiny_run, tmp_path / "m.h5", n=40, steps=2, class_mix="0:1,3:1", batch=40)
    with h5py.File(tmp_path / "m.h5") as f:
        assert set(f["labels"][:]) == {0, 3}
    assert parse_class_mix("no lesion:3,1 lesion:1", ["no lesion", "1 lesion"]) == {0: 0.75, 1: 0.25}


def test_guidance_runs_and_changes_the_sample(tiny_run):
    gen = Generator(tiny_run)
    plain, _ = gen.generate([5], [1], "ddim", 4, guidance=1.0)
    guided, _ = gen.generate([5], [1], "ddim", 4, guidance=3.0)
    assert plain.shape == guided.shape and not np.allclose(plain, guided)


def test_bad_sampling_requests_fail_before_writing(tiny_run, tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(InputError, match="classes 0..3"):
        sample(tiny_run, out, n=2, steps=2, class_index=9)
    assert not out.exists()
    with pytest.raises(InputError, match="sampler"):
        SampleJob(tiny_run, 2, out, sampler_name="bogus")
    with pytest.raises(InputError, match=r"v_prediction objective: sample it with dpm or ddim or ddpm \(not euler\)"):
        sample(tiny_run, out, n=2, steps=2, sampler_name="euler")
    assert not out.exists() and not list(tmp_path.glob("x.h5*"))
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        SampleJob(tiny_run, 2, out)
    assert out.read_bytes() == b"precious"


def test_cancel_keeps_complete_batches(tiny_run, tmp_path):
    out = tmp_path / "c.h5"
    stop = StopAfter(8)  # partway through the second batch of 5-step denoising
    with pytest.raises(Cancelled) as stopped:
        SampleJob(tiny_run, 9, out, steps=5, batch=3, redraw_mismatches=False).run(lambda ev: None, stop)
    assert stopped.value.result["n"] == 3 and stop.polls == 9
    with h5py.File(out) as f:
        assert f.attrs["n_complete"] == 3 and f.attrs["n_planned"] == 9
        assert np.abs(f["images"][:3]).sum() > 0

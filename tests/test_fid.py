"""FID / KID arithmetic on known answers, and the FID Inception network's structure and plumbing.

The real weights are not on test machines, so the network is checked by its structure (the
keys and shapes of pytorch-fid's weights file, the parameter count) and by the FID-specific
pooling of its blocks; the distances are checked against closed forms.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from engine.errors import InputError
from engine.evaluation.metrics import inception as inc
from engine.evaluation.metrics.frechet import frechet_distance, frechet_from_features, gaussian, kid
from engine.evaluation.metrics.inception import (
    FIDInception,
    find_weights,
    inception_features,
    load_fid_inception,
    volume_slices,
    weights_sha256,
)

# ---------------------------------------------------------------- Fréchet distance


def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_full_covariances_match_sqrtm():
    rng = np.random.default_rng(3)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(direct, rel=1e-8)


def test_frechet_identical_and_shifted_sets():
    a = np.random.default_rng(0).normal(size=(300, 8))
    shift = np.linspace(-1.0, 2.0, 8)
    assert frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
    # A shift moves only the mean, so only |mu1 - mu2|² remains.
    assert frechet_from_features(a, a + shift) == pytest.approx(shift @ shift, rel=1e-8)


def test_frechet_fewer_samples_than_dims_is_finite():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 64)), rng.normal(0.3, 1.2, size=(12, 64))
    mu, sigma = gaussian(a)
    assert sigma.shape == (64, 64) and np.linalg.matrix_rank(sigma) < 64
    d = frechet_from_features(a, b)
    assert np.isfinite(d) and d >= 0.0
    assert frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_rejects_a_single_vector():
    with pytest.raises(ValueError):
        gaussian(np.zeros((1, 4)))


# ---------------------------------------------------------------- KID


def test_kid_same_distribution_near_zero_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, _ = kid(a, b, subsets=20, subset_size=200)
    assert abs(same) < 0.02
    values = []
    for s in (0.25, 0.5, 1.0):
        mean, std = kid(a, b + s, subsets=20, subset_size=200)
        assert mean > 3 * std
        values.append(mean)
    assert values[0] > 0.1 and values[0] < values[1] < values[2]


# ---------------------------------------------------------------- the network's structure

# Convolutions (each a conv + batch norm) in every top-level module, by block type.
_CONVS = {
    "stem": ["conv"],
    "A": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
          "branch_pool"],
    "B": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "C": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"],
    "D": ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"],
    "E": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}
_MODULES = {
    "Conv2d_1a_3x3": "stem", "Conv2d_2a_3x3": "stem", "Conv2d_2b_3x3": "stem", "Conv2d_3b_1x1": "stem",
    "Conv2d_4a_3x3": "stem", "Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B",
    "Mixed_6b": "C", "Mixed_6c": "C", "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E",
    "Mixed_7c": "E",
}


def _expected_keys() -> set[str]:
    keys = {"fc.weight", "fc.bias"}
    for module, kind in _MODULES.items():
        for conv in _CONVS[kind]:
            prefix = module if kind == "stem" else f"{module}.{conv}"
            keys.add(f"{prefix}.conv.weight")
            keys.update(f"{prefix}.bn.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked"))
    return keys


@pytest.fixture(scope="module")
def net() -> FIDInception:
    torch.manual_seed(0)
    return FIDInception().eval()


def test_state_dict_keys_are_pytorch_fids(net):
    keys = set(net.state_dict())
    assert keys == _expected_keys()
    assert len(keys) == 94 * 6 + 2  # 94 conv+bn units (5 stem, 3x7 A, 4 B, 4x10 C, 6 D, 2x9 E) and the fc


def test_named_tensor_shapes_and_tf_batchnorm_eps(net):
    sd = net.state_dict()
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Conv2d_4a_3x3.conv.weight"].shape == (192, 80, 3, 3)
    assert sd["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert sd["Mixed_6e.branch7x7dbl_2.conv.weight"].shape == (192, 192, 7, 1)
    assert sd["Mixed_7a.branch3x3_2.conv.weight"].shape == (320, 192, 3, 3)
    assert sd["Mixed_7b.branch3x3dbl_1.conv.weight"].shape == (448, 1280, 1, 1)
    assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert sd["fc.weight"].shape == (1008, 2048) and sd["fc.bias"].shape == (1008,)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and all(m.eps == 1e-3 for m in bns)
    assert not any(m.bias is not None for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_parameter_count(net):
    # torchvision documents inception_v3 (with AuxLogits, 1000 classes) at 27,161,264 parameters.
    # pytorch-fid's network drops AuxLogits (conv0 768->128 1x1 + bn, conv1 128->768 5x5 + bn,
    # fc 768->1000) and has a 1008-way fc instead of 1000.
    aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    expected = 27_161_264 - aux + 8 * 2048 + 8
    assert expected == 23_850_960
    assert sum(p.numel() for p in net.parameters()) == expected
    # One block by hand: Mixed_5b's convolutions plus two batch-norm parameters per channel.
    conv = 192 * 64 + 192 * 48 + 48 * 64 * 25 + 192 * 64 + 64 * 96 * 9 + 96 * 96 * 9 + 192 * 32
    assert sum(p.numel() for p in net.Mixed_5b.parameters()) == conv + 2 * (64 + 48 + 64 + 96 + 96 + 32 + 64)


def _select_pool_branch(block: torch.nn.Module, n: int) -> None:
    """Zero the block's convolutions but let branch_pool copy its first n input channels."""
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
        w = block.branch_pool.conv.weight
        w[torch.arange(n), torch.arange(n)] = 1.0


@pytest.mark.parametrize("name, cin, n, pool", [
    ("Mixed_5b", 192, 32, "avg"),
    ("Mixed_6b", 768, 192, "avg"),
    ("Mixed_7b", 1280, 192, "avg"),
    ("Mixed_7c", 2048, 192, "max"),
])
def test_pool_branches_follow_the_tf_graph(name, cin, n, pool):
    # Fresh blocks (batch norm at its initial identity statistics) so the fixture stays untouched.
    block = getattr(FIDInception(), name).eval()
    _select_pool_branch(block, n)
    x = torch.rand(1, cin, 8, 8) + 0.5
    with torch.no_grad():
        out = block(x)[:, -n:]
    if pool == "max":
        pooled = F.max_pool2d(x, 3, stride=1, padding=1)
    else:
        # TensorFlow's average pool leaves the padding out of the mean.
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        wrong = F.avg_pool2d(x, 3, stride=1, padding=1)
        assert not torch.allclose(out, wrong[:, :n] / (1 + 1e-3) ** 0.5, atol=1e-4)
    torch.testing.assert_close(out, pooled[:, :n] / (1 + 1e-3) ** 0.5, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- features


def test_feature_widths_for_small_grey_images(net):
    images = np.random.default_rng(0).random((2, 1, 40, 40), dtype=np.float32)
    feats = inception_features(images, (64, 192, 768, 2048), net, batch=2)
    assert {d: f.shape for d, f in feats.items()} == {64: (2, 64), 192: (2, 192), 768: (2, 768), 2048: (2, 2048)}
    assert all(f.dtype == np.float64 and np.isfinite(f).all() for f in feats.values())


def test_only_the_layers_needed_run(net):
    calls = []
    hook = net.Mixed_5b.register_forward_hook(lambda *_: calls.append(1))
    try:
        feats = inception_features(np.zeros((1, 1, 32, 32), np.float32), (64,), net)
    finally:
        hook.remove()
    assert list(feats) == [64] and calls == []


def test_grey_equals_repeated_rgb_and_batches_do_not_mix(net):
    grey = np.random.default_rng(2).random((3, 1, 24, 24), dtype=np.float32)
    rgb = np.repeat(grey, 3, axis=1)
    one_by_one = inception_features(grey, (64, 192), net, batch=1)
    together = inception_features(rgb, (64, 192), net, batch=3)
    for d in (64, 192):
        np.testing.assert_allclose(one_by_one[d], together[d], rtol=1e-4, atol=1e-6)


def test_input_is_resized_then_scaled_to_minus_one_one(net):
    x = torch.rand(1, 1, 20, 30)
    prepared = net.prepare(x)
    expected = 2 * F.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear",
                                 align_corners=False) - 1
    assert prepared.shape == (1, 3, 299, 299)
    torch.testing.assert_close(prepared, expected)


def test_bad_dims_and_shapes_are_refused(net):
    with pytest.raises(ValueError):
        inception_features(np.zeros((1, 1, 8, 8), np.float32), (100,), net)
    with pytest.raises(ValueError):
        inception_features(np.zeros((1, 2, 8, 8), np.float32), (64,), net)


# ---------------------------------------------------------------- weights files


def _random_state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = FIDInception()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


def test_saved_weights_round_trip(tmp_path):
    state = _random_state()
    path = tmp_path / inc.WEIGHTS_FILE
    torch.save(state, path)
    loaded = load_fid_inception(path)
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    # Files written before batch norm counted its batches lack num_batches_tracked.
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    assert torch.equal(load_fid_inception(tmp_path / "old.pth").fc.weight, state["fc.weight"])


@pytest.mark.parametrize("content, words", [
    (b"not a torch file", "cannot read"),
    (None, "keys missing"),
    ("shape", "do not fit"),
])
def test_bad_weights_files_are_named(tmp_path, content, words):
    path = tmp_path / "weights.pth"
    if content is None:
        torch.save({"conv.weight": torch.zeros(3)}, path)
    elif content == "shape":
        state = _random_state()
        state["fc.weight"] = torch.zeros(1000, 2048)
        torch.save(state, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_fid_inception(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nothing.pth"):
        load_fid_inception(tmp_path / "nothing.pth")


def test_find_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert find_weights() is None
    assert find_weights(tmp_path / "mine.pth") == tmp_path / "mine.pth"
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(tmp_path / "env.pth"))
    assert find_weights() == tmp_path / "env.pth"
    assert find_weights(str(tmp_path / "mine.pth")) == tmp_path / "mine.pth"
    monkeypatch.delenv(inc.WEIGHTS_ENV)
    cached = hub / "checkpoints" / inc.WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_weights() == cached


def test_weights_sha256(tmp_path):
    path = tmp_path / "w.pth"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert weights_sha256(path) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- volume slices


def test_volume_slice_shapes():
    vols = np.random.default_rng(0).random((2, 1, 8, 12, 16), dtype=np.float32)
    out = volume_slices(vols, per_axis=4)
    assert out.shape == (2 * 3 * 4, 1, 16, 16) and out.dtype == np.float32
    assert volume_slices(vols, per_axis=2, size=20).shape == (12, 1, 20, 20)
    with pytest.raises(ValueError):
        volume_slices(vols[0], per_axis=2)


def test_volume_slices_come_from_all_three_axes():
    # value = d + 100 h + 10000 w: a slice at fixed d keeps value % 100 constant, and so on.
    d, h, w = np.meshgrid(np.arange(9), np.arange(9), np.arange(9), indexing="ij")
    vol = (d + 100 * h + 10000 * w).astype(np.float32)
    vols = np.stack([vol, -vol])[:, None]  # second volume negated to check the ordering
    out = volume_slices(vols, per_axis=3)
    assert out.shape == (18, 1, 9, 9)
    decode = [lambda v: v % 100, lambda v: (v // 100) % 100, lambda v: v // 10000]
    for n, sign in enumerate((1, -1)):
        for axis in range(3):
            positions = []
            for k in range(3):
                s = sign * out[n * 9 + axis * 3 + k, 0]
                assert (s >= 0).all()
                fixed = np.unique(decode[axis](s))
                assert len(fixed) == 1, (n, axis, k)
                positions.append(int(fixed[0]))
                # the other two coordinates vary across the slice
                assert all(len(np.unique(decode[o](s))) == 9 for o in range(3) if o != axis)
            assert positions == [2, 4, 6]  # evenly through the central half of 0..8

"""Known-answer tests for the phantom fidelity metrics: real phantoms are the reference."""

import numpy as np
import pytest

from engine.data.phantoms import make_phantoms
from engine.evaluation.metrics.phantom_fidelity import (
    count_mismatches,
    count_rule,
    image_mask_agreement,
    lesion_contrast_signs,
    lesion_pixel_share,
    mask_class_agreement,
    phantom_fidelity,
)


@pytest.fixture(scope="module")
def real():
    # The bench's reference set: 512 phantoms at 32 px, seed 0.
    return make_phantoms(512, size=32, seed=0)


def test_real_phantoms_score_almost_perfectly(real):
    f = phantom_fidelity(real.images, real.masks, real.labels)
    # Every one of the 811 lesions has the contrast sign its label says.
    assert len(lesion_contrast_signs(real.images, real.masks)) == 811
    assert f["image_mask_agreement"] == 1.0
    # Lesion centres are kept apart by their enlarged radii plus a margin of over a pixel,
    # so every lesion is its own connected component and the mask shows the class.
    assert f["mask_class_agreement"] == 1.0
    # Lesions cover about 2% of a 32 px phantom on average (2D).
    assert 0.015 < f["lesion_pixel_share"] < 0.025


def test_first_64_phantoms_are_perfect(real):
    # The bench compares its n = 64 samples with these; none of them has touching lesions.
    f = phantom_fidelity(real.images[:64], real.masks[:64], real.labels[:64])
    assert f["mask_class_agreement"] == 1.0 and f["image_mask_agreement"] == 1.0


def test_shuffled_labels_score_much_lower(real):
    labels = np.random.default_rng(0).permutation(real.labels)
    # Four roughly balanced classes: a random pairing agrees about a quarter of the time.
    assert mask_class_agreement(real.masks, labels) < 0.4


def test_swapped_lesion_labels_break_image_agreement(real):
    swapped = real.masks.copy()
    swapped[real.masks == 1] = 2
    swapped[real.masks == 2] = 1
    assert image_mask_agreement(real.images, swapped) == 0.0
    # The count of lesions does not depend on their kind.
    assert mask_class_agreement(swapped, real.labels) == mask_class_agreement(real.masks, real.labels)


def test_empty_masks_with_class_zero():
    images = np.full((5, 1, 16, 16), 500.0, np.float32)
    masks = np.zeros((5, 16, 16), np.uint8)
    assert mask_class_agreement(masks, np.zeros(5, np.int64)) == 1.0
    assert mask_class_agreement(masks, np.ones(5, np.int64)) == 0.0
    assert np.isnan(image_mask_agreement(images, masks))
    assert lesion_pixel_share(masks) == 0.0


def test_specks_below_min_size_are_not_lesions():
    masks = np.zeros((1, 16, 16), np.uint8)
    masks[0, 3, 3] = 1  # a one-pixel speck, as a noisy generator leaves behind
    masks[0, 8:11, 8:11] = 2
    assert mask_class_agreement(masks, [1]) == 1.0
    assert mask_class_agreement(masks, [2], min_size=1) == 1.0


def test_contrast_is_judged_against_the_surrounding_ring_inside_the_body():
    image = np.full((1, 1, 20, 20), 400.0, np.float32)
    image[0, 0, :, :2] = 0.0  # air at the left edge: not part of the body
    image[0, 0, 8:12, 2:6] = 300.0  # darker than the tissue around it, brighter than air
    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 8:12, 2:6] = 2
    assert image_mask_agreement(image, mask) == 1.0
    mask[0, 8:12, 2:6] = 1
    assert image_mask_agreement(image, mask) == 0.0


def test_a_mask_of_all_lesion_has_no_surroundings_and_fails():
    images = np.full((1, 1, 8, 8), 800.0, np.float32)
    masks = np.ones((1, 8, 8), np.uint8)
    assert image_mask_agreement(images, masks) == 0.0
    assert lesion_pixel_share(masks) == 1.0


def test_3d_phantoms():
    s = make_phantoms(16, size=32, dims=3, seed=0)
    assert s.images.shape == (16, 1, 32, 32, 32)
    f = phantom_fidelity(s.images, s.masks, s.labels)
    assert f["mask_class_agreement"] == 1.0 and f["image_mask_agreement"] == 1.0
    # A lesion ball fills far less of a volume than a lesion disc of an image.
    assert 0.0005 < f["lesion_pixel_share"] < 0.005
    assert mask_class_agreement(s.masks, (s.labels + 1) % 4) == 0.0


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError):
        phantom_fidelity(np.zeros((2, 1, 8, 8)), np.zeros((2, 9, 9), np.uint8), [0, 0])
    with pytest.raises(ValueError):
        mask_class_agreement(np.zeros((2, 8, 8), np.uint8), [0])


def test_count_rule_flags_a_mask_that_contradicts_its_class():
    rule = count_rule(["no lesion", "1 lesion", "2 lesions", "3 lesions"])
    assert rule is not None and rule.counts == (0, 1, 2, 3) and rule.noun == "lesion"
    empty = np.zeros((16, 16), np.uint8)
    one = empty.copy()
    one[4:7, 4:7] = 1
    two = one.copy()
    two[10:13, 10:13] = 2
    assert rule.mismatch(empty, 1) == "mask shows 0 lesions, class says 1"
    assert rule.mismatch(two, 1) == "mask shows 2 lesions, class says 1"
    assert rule.mismatch(one, 2) == "mask shows 1 lesion, class says 2"
    assert rule.mismatch(one, 1) == "" and rule.mismatch(empty, 0) == "" and rule.mismatch(two, 2) == ""
    flags = count_mismatches(np.stack([empty, one, two]), np.array([1, 1, 2]), ["0 lesions", "1 lesion", "2 lesions"])
    assert flags.tolist() == [True, False, False]


def test_count_rule_only_where_the_class_names_are_counts():
    assert count_rule(["benign", "malignant"]) is None
    assert count_rule(["1 lesion", "2 nodules"]) is None  # not counts of one thing
    assert count_rule(["1 lesion"]) is None
    assert count_rule([]) is None
    assert count_mismatches(np.zeros((1, 8, 8), np.uint8), np.array([0]), ["adipose", "tumour"]) is None

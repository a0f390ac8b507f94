import numpy as np
from scipy.ndimage import label as connected

from engine.data.phantoms import LABEL_NAMES, make_phantoms, phantom


def test_phantoms_are_deterministic_and_independent_of_batch():
    a = make_phantoms(6, size=24, seed=3)
    b = make_phantoms(3, size=24, seed=6)
    np.testing.assert_array_equal(a.images[3:], b.images)
    np.testing.assert_array_equal(a.masks[3:], b.masks)
    assert not np.array_equal(a.images[0], a.images[1])


def test_class_is_the_lesion_count_and_mask_holds_lesion_labels():
    s = make_phantoms(40, size=48, seed=0)
    assert s.images.shape == (40, 1, 48, 48) and s.images.dtype == np.float32
    assert set(np.unique(s.masks)) <= set(LABEL_NAMES)
    assert set(np.unique(s.labels)) == {0, 1, 2, 3}
    for mask, count in zip(s.masks, s.labels):
        # Lesions are placed apart, so each is one connected component of the mask.
        _, n = connected(mask > 0)
        assert n == count


def test_lesions_differ_in_contrast_from_their_surroundings():
    image, mask, count = phantom(5, size=64)
    assert count > 0
    body = image[(mask == 0) & (image > 100)]
    for k, sign in ((1, 1), (2, -1)):
        if (mask == k).any():
            assert sign * (image[mask == k].mean() - body.mean()) > 100


def test_3d_phantoms():
    s = make_phantoms(2, size=20, dims=3)
    assert s.images.shape == (2, 1, 20, 20, 20) and s.masks.shape == (2, 20, 20, 20)

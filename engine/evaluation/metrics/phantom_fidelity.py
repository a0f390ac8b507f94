"""Fidelity of generated phantom samples, judged against the phantom generator's own rules.

The phantoms (engine.data.phantoms) have known ground truth: the class is the lesion
count, each lesion is one connected component of the mask (lesions are placed apart),
label 1 lesions are brighter than their surroundings and label 2 lesions darker, and
lesions cover a few per cent of the image. A generator that learned the data should
reproduce all of this, so these checks need no reference network (unlike FID) and
work in 2D and 3D alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Label values of the phantom masks.
BRIGHT = 1
DARK = 2


def _components(mask: np.ndarray, min_size: int) -> tuple[np.ndarray, list[int]]:
    """Connected lesion components of one mask and the ids of those kept.

    Generated masks carry speckle: isolated pixels where a mask channel crossed zero.
    Counting those as lesions would punish noise that a human reader would ignore.
    """
    comps, n = ndimage.label(mask > 0)
    if n == 0:
        return comps, []
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    return comps, [i for i in range(1, n + 1) if sizes[i] >= min_size]


def _spatial_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim < 3:
        raise ValueError(f"masks should be (N, H, W) or (N, D, H, W); got shape {masks.shape}")
    return masks


def _spatial_images(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 1, *spatial) → (N, *spatial), checked against the masks' shape."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == masks.ndim + 1:
        if images.shape[1] != 1:
            raise ValueError(f"expected one image channel; got shape {images.shape}")
        images = images[:, 0]
    if images.shape != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} do not match")
    return images


def mask_class_agreement(masks: np.ndarray, labels: np.ndarray, min_size: int = 2) -> float:
    """Share of samples whose count of lesion components (>= min_size pixels) equals the class."""
    masks = _spatial_masks(masks)
    labels = np.asarray(labels)
    if len(masks) != len(labels):
        raise ValueError(f"{len(masks)} masks but {len(labels)} labels")
    if len(masks) == 0:
        return float("nan")
    hits = [lesion_count(m, min_size) == int(k) for m, k in zip(masks, labels)]
    return float(np.mean(hits))


def lesion_count(mask: np.ndarray, min_size: int = 2) -> int:
    """Connected components of one mask (>= min_size pixels): the phantoms' lesion count."""
    return len(_components(np.asarray(mask), min_size)[1])


# "no lesion", "1 lesion", "2 lesions", "3 nodules": a count, then what is counted.
_COUNT_NAME = re.compile(r"^\s*(no|\d+)\s+([a-z][a-z ]*?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class CountRule:
    """Classes that are counts of one kind of thing, which a mask's components can be checked against.

    It holds only where the file says so through its class names ("no lesion", "1 lesion",
    "2 lesions", ...); a class of other data (a diagnosis, an organ) says nothing a mask
    can contradict, so no rule is made for it.
    """

    counts: tuple[int, ...]  # the count each class index names
    noun: str  # singular: "lesion"

    def mismatch(self, mask: np.ndarray, class_index: int, min_size: int = 2) -> str:
        """Why the mask disagrees with its class ("mask shows 0 lesions, class says 1"), or ""."""
        if not 0 <= class_index < len(self.counts):
            return ""
        found, expected = lesion_count(mask, min_size), self.counts[class_index]
        if found == expected:
            return ""
        return f"mask shows {found} {self.noun if found == 1 else self.noun + 's'}, class says {expected}"


def count_rule(class_names: list[str]) -> CountRule | None:
    """The count rule the class names spell out, or None when they are not all counts of one thing."""
    counts, stems = [], set()
    for name in class_names:
        m = _COUNT_NAME.match(str(name))
        if m is None:
            return None
        counts.append(0 if m.group(1).lower() == "no" else int(m.group(1)))
        noun = m.group(2).lower()
        stems.add(noun[:-1] if noun.endswith("s") else noun)  # "lesions" and "lesion" count one thing
    if len(counts) < 2 or len(stems) != 1 or len(set(counts)) != len(counts):
        return None
    return CountRule(tuple(counts), stems.pop())


def count_mismatches(masks: np.ndarray, labels: np.ndarray, class_names: list[str],
                     min_size: int = 2) -> np.ndarray | None:
    """Per sample, whether its mask disagrees with its class; None where the classes are not counts."""
    rule = count_rule(class_names)
    if rule is None:
        return None
    masks = _spatial_masks(masks)
    return np.array([bool(rule.mismatch(m, int(k), min_size)) for m, k in zip(masks, np.asarray(labels))])


def lesion_contrast_signs(images: np.ndarray, masks: np.ndarray, min_size: int = 2, ring: int = 2,
                          body_threshold: float = 0.1) -> list[bool]:
    """For every lesion component in every sample: does its contrast have the sign its label says?

    The reference is a ring around the lesion rather than the whole body because
    phantom organs (one dark, one bright) would otherwise dominate the comparison. The
    ring is limited to the body (above body_threshold x the image max) so that a
    lesion at the body edge is not called bright just for being next to air.
    """
    masks = _spatial_masks(masks)
    images = _spatial_images(images, masks)
    structure = ndimage.generate_binary_structure(masks.ndim - 1, 1)
    signs: list[bool] = []
    for image, mask in zip(images, masks):
        comps, keep = _components(mask, min_size)
        if not keep:
            continue
        top = float(image.max())
        body = image > body_threshold * top if top > 0 else np.zeros(image.shape, bool)
        for i in keep:
            lesion = comps == i
            around = ndimage.binary_dilation(lesion, structure, iterations=ring) & (mask == 0) & body
            if not around.any():
                # No surroundings to compare with (lesion fills its neighbourhood): a failure,
                # since a real lesion always sits inside tissue.
                signs.append(False)
                continue
            # A generated component can mix labels; the majority label is what it claims to be.
            kind = np.bincount(mask[lesion], minlength=3)[1:3].argmax() + 1
            diff = float(image[lesion].mean() - image[around].mean())
            signs.append(diff > 0 if kind == BRIGHT else diff < 0)
    return signs


def image_mask_agreement(images: np.ndarray, masks: np.ndarray, min_size: int = 2, ring: int = 2,
                         body_threshold: float = 0.1) -> float:
    """Share of all lesion components whose contrast sign matches their label; nan without lesions."""
    signs = lesion_contrast_signs(images, masks, min_size, ring, body_threshold)
    return float(np.mean(signs)) if signs else float("nan")


def lesion_pixel_share(masks: np.ndarray) -> float:
    """Mean share of lesion pixels per sample; real phantoms sit at a few per cent."""
    masks = _spatial_masks(masks)
    if len(masks) == 0:
        return float("nan")
    return float((masks.reshape(len(masks), -1) > 0).mean(axis=1).mean())


def phantom_fidelity(images: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                     min_size: int = 2) -> dict[str, float]:
    """All phantom checks at once: class and image agreement with the mask, and lesion share."""
    return {
        "mask_class_agreement": mask_class_agreement(masks, labels, min_size),
        "image_mask_agreement": image_mask_agreement(images, masks, min_size),
        "lesion_pixel_share": lesion_pixel_share(masks),
    }

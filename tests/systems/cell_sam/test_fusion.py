"""Mask fusion on hand-made tiles: a SAM mask can reshape its own nucleus inside its territory,
never take a neighbour's pixels, never add or drop a nucleus; low-IoU SAM masks are ignored."""

from __future__ import annotations

import numpy as np

from wsisam.systems.cell_sam.fusion import fuse, instance_boxes, sam_masks


def two_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """(64, 64) labels: nucleus 1 a 10×10 square, nucleus 2 a 10×10 square 4 px to its right."""
    labels = np.zeros((64, 64), np.int32)
    labels[20:30, 10:20] = 1
    labels[20:30, 24:34] = 2
    return labels, (labels > 0).astype(np.float32) * 0.9


def test_sam_mask_grows_its_nucleus_inside_its_territory_only() -> None:
    labels, fg = two_nuclei()
    big = np.full((2, 64, 64), -10.0, np.float32)
    big[0, 16:34, 6:40] = 10.0  # nucleus 1's SAM mask spills over nucleus 2 and beyond
    out = fuse(labels, fg, [1, 2], big, np.array([0.9, 0.9]), territory_px=3, rule="sam")
    assert (out[labels == 2] == 2).all()  # the neighbour keeps every pixel
    assert (out == 1).sum() > (labels == 1).sum()  # grew into its own territory
    grown = np.argwhere(out == 1)
    assert grown[:, 0].min() >= 17 and grown[:, 1].max() <= 21  # by at most 3 px
    assert set(np.unique(out)) == {0, 1, 2}  # nucleus 2's empty SAM mask left it unchanged


def test_low_iou_and_mean_rule() -> None:
    labels, fg = two_nuclei()
    shrink = np.full((2, 64, 64), -10.0, np.float32)
    shrink[:, 22:28, 12:18] = 10.0
    shrink[1, 22:28, 26:32] = 10.0
    kept = fuse(labels, fg, [1, 2], shrink, np.array([0.3, 0.3]), 3, "sam")
    assert (kept == labels).all()  # predicted IoU < 0.5: the head's masks stay
    mean = fuse(labels, fg, [1, 2], shrink, np.array([0.9, 0.9]), 3, "mean")
    # mean of 0.9 (head) and ~0 (SAM) is 0.45 < 0.5: only pixels both agree on remain
    assert (mean == 1).sum() == 36 and (mean == 2).sum() == 36


def test_box_prompts_are_in_the_encoder_frame() -> None:
    labels, _ = two_nuclei()
    boxes, ids = instance_boxes(labels)
    assert ids == [1, 2] and boxes.tolist() == [[10, 20, 20, 30], [24, 20, 34, 30]]
    seen = []

    def decode(coords: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append((coords.copy(), lab.copy()))
        return np.zeros((len(coords), 3, 8, 8), np.float32), np.ones((len(coords), 3))

    got_ids, logits, scores = sam_masks(labels, decode, scale=0.5, batch=1)
    assert got_ids == [1, 2] and logits.shape == (2, 8, 8) and len(seen) == 2
    assert seen[0][0].tolist() == [[[5, 10], [10, 15]]] and seen[0][1].tolist() == [[2, 3]]

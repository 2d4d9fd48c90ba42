"""Turn raw model outputs into the perception output of the deployment guide."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vigil.schemas import Box, PerceptionOutput
from vigil.schemas.infer import MAX_BOXES, MAX_X, MAX_Y

__all__ = ["classification", "text_detection"]


def text_detection(
    prob: npt.NDArray[np.float32],
    height: int,
    width: int,
    timestamp_us: int,
    *,
    threshold: float = 0.3,
    box_threshold: float = 0.5,
    unclip_ratio: float = 1.5,
    min_side: int = 3,
) -> PerceptionOutput:
    """Boxes around the connected text regions of a DB probability map (one image).

    A DB detector predicts shrunk text kernels; each region is grown back by the standard
    offset area * ratio / perimeter, as the model's own post-processing does.
    """
    # Imported here: a worker serving a classifier never pays SciPy's memory and start-up.
    from scipy import ndimage  # noqa: PLC0415

    region = prob[:height, :width]
    if not np.isfinite(region).all():
        raise ValueError("the model produced a non-finite probability map")
    labels, _ = ndimage.label(region > threshold)
    boxes: list[Box] = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        ys, xs = found
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < min_side:
            continue
        score = float(region[found][labels[found] == index].mean())
        if score < box_threshold:
            continue
        grow = (h * w * unclip_ratio) / (2 * (h + w))
        boxes.append(
            Box(
                x_min=float(np.clip(xs.start - grow, 0, min(width, MAX_X))),
                y_min=float(np.clip(ys.start - grow, 0, min(height, MAX_Y))),
                x_max=float(np.clip(xs.stop + grow, 0, min(width, MAX_X))),
                y_max=float(np.clip(ys.stop + grow, 0, min(height, MAX_Y))),
                class_id=0,
                label="text",
                score=min(1.0, score),
            )
        )
    boxes.sort(key=lambda b: b.score, reverse=True)
    del boxes[MAX_BOXES:]
    confidence = boxes[0].score if boxes else 0.0
    return PerceptionOutput(confidence=confidence, timestamp_us=timestamp_us, boxes=boxes)


def classification(
    logits: npt.NDArray[np.float32], height: int, width: int, timestamp_us: int
) -> PerceptionOutput:
    """The top class of one image's logits, as a whole-image box with its probability."""
    z = logits.astype(np.float64).ravel()
    if not np.isfinite(z).all():
        raise ValueError("the model produced non-finite logits")
    p = np.exp(z - z.max())
    p /= p.sum()
    top = int(p.argmax())
    score = float(p[top])
    box = Box(
        x_min=0.0,
        y_min=0.0,
        x_max=float(min(width, MAX_X)),
        y_max=float(min(height, MAX_Y)),
        class_id=top,
        score=min(1.0, score),
    )
    return PerceptionOutput(confidence=min(1.0, score), timestamp_us=timestamp_us, boxes=[box])

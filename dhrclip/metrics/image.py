"""Image-level metrics (docs/method.md §10): AUROC, AP and F1-max of a class's image scores."""
from __future__ import annotations

import numpy as np

from .curves import ap, auroc, check_finite, f1max, steps_sorted


class ImageAccumulator:
    """Image scores and labels of one class; merging concatenates them."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, scores: np.ndarray, labels: np.ndarray) -> ImageAccumulator:
        self.scores.append(np.asarray(scores, dtype=np.float64).ravel())
        self.labels.append(np.asarray(labels).astype(bool).ravel())
        return self

    def merge(self, other: ImageAccumulator) -> ImageAccumulator:
        self.scores += other.scores
        self.labels += other.labels
        return self

    def compute(self) -> dict[str, float | None]:
        if not self.scores:
            return dict.fromkeys(("auroc", "ap", "f1max"))
        return image_metrics(np.concatenate(self.labels), np.concatenate(self.scores))


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Image AUROC, AP and F1-max; all None unless the class has both normal and anomalous
    images: with anomalous images alone (the medical segmentation sets) AP and F1-max would be 1
    whatever the scores, a figure that says nothing of the detector."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    check_finite(scores)
    _, _, pos, neg = steps_sorted(scores, labels)
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    if tp[-1] == 0 or fp[-1] == 0:
        return dict.fromkeys(("auroc", "ap", "f1max"))
    return {"auroc": auroc(tp, fp), "ap": ap(tp, fp), "f1max": f1max(tp, fp)}

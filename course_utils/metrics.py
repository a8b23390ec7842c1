"""Classification and segmentation metrics from a confusion matrix.

Everything is computed from one confusion matrix ``cm[true, predicted]`` accumulated over a whole
split (not averaged per batch, which would weight small batches too much):

* overall accuracy ``trace(cm) / sum(cm)``;
* per-class IoU (Jaccard) ``TP / (TP + FP + FN)``;
* per-class F1 (Dice) ``2 TP / (2 TP + FP + FN)``.

A class that never occurs and is never predicted has no defined IoU/F1: it is NaN, and the
``mean_*`` functions skip it.

Calibration: :func:`calibration_bins` sums predictions per confidence bin (a reliability diagram) and
:func:`expected_calibration_error` reads the expected calibration error off those sums.

Objects: :func:`match_fields` scores field polygons as a field map is used, by fields found. A predicted field
matches a reference field when their IoU (area of the intersection over area of the union) is at least 0.5; each
field matches at most once. Precision is the share of predicted fields that match, recall the share of reference
fields that do, F1 their harmonic mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely
import torch


def confusion_matrix(
    predicted: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> np.ndarray:
    """``[num_classes, num_classes]`` int64 counts, rows = true class, columns = predicted class."""
    predicted = np.asarray(predicted.cpu() if isinstance(predicted, torch.Tensor) else predicted).ravel()
    target = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).ravel()
    if predicted.shape != target.shape:
        raise ValueError(f"predicted and target differ in size: {predicted.size} vs {target.size}")
    keep = target != ignore_index if ignore_index is not None else np.ones_like(target, dtype=bool)
    predicted, target = predicted[keep].astype(np.int64), target[keep].astype(np.int64)
    for name, values in (("predicted", predicted), ("target", target)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds classes outside 0..{num_classes - 1}: {np.unique(values)}")
    return np.bincount(target * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    """Overall accuracy: the fraction of samples on the diagonal."""
    return float(np.trace(cm) / max(cm.sum(), 1))


def _true_false(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    return tp, cm.sum(0) - tp, cm.sum(1) - tp  # TP, FP, FN per class


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union per class (NaN for a class absent from both target and prediction)."""
    tp, fp, fn = _true_false(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fp + fn)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """F1 score (Dice) per class (NaN for a class absent from both target and prediction)."""
    tp, fp, fn = _true_false(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes where it is defined."""
    return float(np.nanmean(iou_per_class(cm)))


def mean_f1(cm: np.ndarray) -> float:
    """Class-mean F1 (macro F1) over the classes where it is defined."""
    return float(np.nanmean(f1_per_class(cm)))


def calibration_bins(
    confidence: np.ndarray | torch.Tensor, correct: np.ndarray | torch.Tensor, bins: int = 10
) -> np.ndarray:
    """Reliability-diagram sums ``[bins, 3]``: per confidence bin (equal widths over 0..1) the number of predictions,
    the sum of their confidences and the number of them that are correct.

    Sums (not means) add up over test units: the bins of a whole test set are the sum of its patches' bins.
    """
    confidence, correct = (
        np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64).ravel()
        for v in (confidence, correct)
    )
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct differ in size: {confidence.size} vs {correct.size}")
    if confidence.size and (confidence.min() < 0 or confidence.max() > 1):
        raise ValueError("confidence must lie in 0..1 (a predicted probability)")
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    return np.stack([np.bincount(index, weights=w, minlength=bins) for w in (np.ones_like(confidence), confidence,
                                                                             correct)], axis=1)  # fmt: skip


def expected_calibration_error(binned: np.ndarray) -> float:
    """ECE from :func:`calibration_bins`: the count-weighted mean gap ``|accuracy - confidence|`` over the bins
    (Guo et al., 2017). 0 for a calibrated model: of the predictions made with confidence p, a share p is right."""
    binned = np.asarray(binned, dtype=np.float64)
    count, confidence, correct = binned[:, 0], binned[:, 1], binned[:, 2]
    return float(np.abs(correct - confidence).sum() / max(count.sum(), 1))


@dataclass(frozen=True)
class FieldMatch:
    """Reference and predicted fields matched one to one at an IoU threshold (:func:`match_fields`).

    Attributes:
        pairs: ``[matches, 2]`` row positions ``(reference, predicted)`` of the matched fields.
        iou: the IoU of each matched pair.
        n_reference, n_predicted: the number of fields on each side.
    """

    pairs: np.ndarray
    iou: np.ndarray
    n_reference: int
    n_predicted: int

    @property
    def matched(self) -> int:
        """Number of matched fields."""
        return len(self.pairs)

    @property
    def precision(self) -> float:
        """Share of predicted fields that match a reference field (0 when none were predicted)."""
        return self.matched / self.n_predicted if self.n_predicted else 0.0

    @property
    def recall(self) -> float:
        """Share of reference fields that a predicted field matches (0 when there are none)."""
        return self.matched / self.n_reference if self.n_reference else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall: ``2 matched / (reference + predicted)``."""
        total = self.n_reference + self.n_predicted
        return 2 * self.matched / total if total else 0.0


def match_fields(
    reference: gpd.GeoDataFrame | gpd.GeoSeries, predicted: gpd.GeoDataFrame | gpd.GeoSeries, threshold: float = 0.5
) -> FieldMatch:
    """Match predicted field polygons to reference ones: pairs with IoU >= ``threshold``, each field at most once.

    Candidate pairs are those whose polygons intersect; they are taken greedily from the highest IoU down, so a
    field that overlaps two others is matched with the better one. At ``threshold >= 0.5`` with fields that do not
    overlap each other, a field can reach it with one other field only, and the matching is the unique one.
    ``predicted`` is reprojected to ``reference``'s CRS (with a message) when they differ; areas are computed in the
    local UTM zone when that CRS is geographic (degrees).

    Raises:
        ValueError: for a threshold outside (0, 1] or polygons without a CRS.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    reference, predicted = gpd.GeoSeries(reference.geometry), gpd.GeoSeries(predicted.geometry)
    if reference.crs is None or predicted.crs is None:
        raise ValueError("both polygon layers need a CRS; set it with .set_crs('EPSG:...') first.")
    if len(reference) and len(predicted) and predicted.crs != reference.crs:
        print(f"match_fields: reprojecting {len(predicted)} predicted polygons from {predicted.crs} to {reference.crs}")
        predicted = predicted.to_crs(reference.crs)
    if reference.crs.is_geographic and len(reference):
        metric = reference.estimate_utm_crs()
        reference, predicted = reference.to_crs(metric), predicted.to_crs(metric)
    left, right = shapely.STRtree(predicted.values).query(reference.values, predicate="intersects")
    shared = shapely.area(shapely.intersection(reference.values[left], predicted.values[right]))
    union = shapely.area(reference.values[left]) + shapely.area(predicted.values[right]) - shared
    iou = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
    pairs, ious, used_left, used_right = [], [], set(), set()
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] < threshold:
            break
        if left[k] not in used_left and right[k] not in used_right:
            used_left.add(left[k])
            used_right.add(right[k])
            pairs.append((left[k], right[k]))
            ious.append(iou[k])
    return FieldMatch(np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(ious, dtype=np.float64),
                      len(reference), len(predicted))  # fmt: skip

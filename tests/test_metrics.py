"""course_utils.metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_utils.metrics import (
    accuracy,
    calibration_bins,
    confusion_matrix,
    expected_calibration_error,
    f1_per_class,
    iou_per_class,
    mean_f1,
    mean_iou,
)


def test_confusion_matrix_counts_true_rows_predicted_columns() -> None:
    target = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    cm = confusion_matrix(predicted, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert accuracy(cm) == pytest.approx(4 / 6)


def test_iou_and_f1_match_hand_values() -> None:
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # class 0: TP 1, FP 1, FN 1 -> IoU 1/3, F1 2/4; class 1: TP 2, FP 1 -> 2/3, 4/5; class 2: TP 1, FN 1 -> 1/2, 2/3
    assert iou_per_class(cm) == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert f1_per_class(cm) == pytest.approx([1 / 2, 4 / 5, 2 / 3])
    assert mean_iou(cm) == pytest.approx(np.mean([1 / 3, 2 / 3, 1 / 2]))
    assert mean_f1(cm) == pytest.approx(np.mean([1 / 2, 4 / 5, 2 / 3]))


def test_absent_class_is_skipped_and_ignore_index_drops_pixels() -> None:
    target = torch.tensor([[0, 0], [1, 255]])
    predicted = torch.tensor([[0, 0], [1, 2]])
    cm = confusion_matrix(predicted, target, 3, ignore_index=255)
    assert cm.sum() == 3
    assert np.isnan(iou_per_class(cm)[2]) and mean_iou(cm) == 1.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)


def test_calibration_bins_and_ece_by_hand() -> None:
    confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.55, 0.55, 1.0])
    correct = np.array([1, 0, 1, 1, 0, 0, 1])
    binned = calibration_bins(confidence, correct, bins=10)
    assert binned.shape == (10, 3)
    assert binned[9].tolist() == pytest.approx([3, 2.9, 2]) and binned[5].tolist() == pytest.approx([4, 2.2, 2])
    # bin 9: accuracy 2/3 at confidence 0.967; bin 5: accuracy 1/2 at confidence 0.55
    assert expected_calibration_error(binned) == pytest.approx((abs(2 - 2.9) + abs(2 - 2.2)) / 7)
    halves = calibration_bins(confidence[:3], correct[:3]) + calibration_bins(confidence[3:], correct[3:])
    np.testing.assert_allclose(halves, binned)  # sums add up over test units
    assert expected_calibration_error(calibration_bins(np.full(4, 0.75), np.array([1, 1, 1, 0]))) == pytest.approx(0)
    with pytest.raises(ValueError, match="0..1"):
        calibration_bins(np.array([1.2]), np.array([1]))

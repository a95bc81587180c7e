import numpy as np
import pytest
import torch

from clda_deploy.metrics import ConfusionMeter, confusion_matrix, iou_per_class, mean_iou, summarize


def test_confusion_matrix_golden_with_ignore():
    label = np.array([[0, 0, 1], [1, 2, 255]])
    prediction = np.array([[0, 1, 1], [1, 2, 0]])
    expected = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(prediction, label, 3), expected)


def test_iou_golden_values():
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: 1/1.
    matrix = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    ious = iou_per_class(matrix)
    assert ious == pytest.approx([0.5, 2 / 3, 1.0])
    assert mean_iou(matrix) == pytest.approx(100 * (0.5 + 2 / 3 + 1.0) / 3)


def test_absent_class_is_null_not_zero():
    # class 2 appears neither in labels nor predictions -> None, excluded from the mean.
    matrix = np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
    ious = iou_per_class(matrix)
    assert ious[2] is None
    assert ious[0] == pytest.approx(2 / 3) and ious[1] == pytest.approx(1 / 2)
    assert mean_iou(matrix) == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)


def test_predicted_but_absent_class_scores_zero():
    # class 2 is predicted but never labelled: a false positive, IoU 0 (not null).
    matrix = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert iou_per_class(matrix)[2] == 0.0


def test_subset_and_summary():
    matrix = np.diag([4, 0, 3])
    matrix[1, 0] = 2  # class 1 always predicted as 0
    summary = summarize(matrix, ["a", "b", "c"], classes=[0, 2])
    assert set(summary["per_class_iou"]) == {"a", "c"}
    assert summary["miou"] == pytest.approx(100 * (4 / 6 + 1.0) / 2)
    full = summarize(matrix, ["a", "b", "c"])
    assert full["per_class_iou"]["b"] == 0.0


def test_meter_accumulates_torch_batches():
    meter = ConfusionMeter(2)
    meter.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    meter.update(torch.tensor([[1, 1]]), torch.tensor([[0, 255]]))
    np.testing.assert_array_equal(meter.matrix, [[1, 1], [0, 1]])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix(np.zeros(2), np.array([0, 7]), 2)
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix(np.array([0, 5]), np.zeros(2), 2)


def test_empty_matrix_mean_is_zero():
    assert mean_iou(np.zeros((3, 3), dtype=np.int64)) == 0.0

"""The quality maths and the class decoder of modelport.protocol, against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from modelport.protocol.classes import decode_predictions
from modelport.protocol.scoring import classification_report


def test_classification_report_equals_sklearn_with_unpredicted_and_absent_classes() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.choice([0, 1, 2, 5], 200)  # 5 is never predicted: precision 0/0
    y_pred = rng.choice([0, 1, 2, 7], 200)  # 7 is never true: recall 0/0
    y_pred[:30] = np.where(y_true[:30] == 5, 0, y_true[:30])  # some agreement, still never 5
    m = classification_report(y_true, y_pred)
    labels = [0, 1, 2, 5, 7]
    assert list(m.labels) == labels
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    np.testing.assert_allclose(m.f1, f)
    np.testing.assert_array_equal(m.support, s)
    assert m.precision[3] == 0 and m.recall[4] == 0 and m.f1[3] == 0 and m.f1[4] == 0
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert (m.macro.precision, m.macro.recall, m.macro.f1) == pytest.approx((mp, mr, mf))
    np.testing.assert_array_equal(m.confusion_matrix, confusion_matrix(y_true, y_pred, labels=labels))
    assert m.positive is None


def test_classification_report_binary_positive_class_equals_sklearn() -> None:
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    m = classification_report(y_true, y_pred, binary=True)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    assert (m.positive.precision, m.positive.recall, m.positive.f1) == pytest.approx((p, r, f))
    # No positive anywhere: every score of class 1 is 0 (zero_division=0), accuracy still 1.
    none = classification_report(np.zeros(5, int), np.zeros(5, int), binary=True)
    assert none.accuracy == 1.0 and (none.positive.precision, none.positive.recall, none.positive.f1) == (0, 0, 0)


def test_decode_predictions_modes() -> None:
    assert decode_predictions(np.array([[0.2], [0.5], [0.9]], np.float32)).labels.tolist() == [0, 0, 1]
    assert decode_predictions(np.array([0.2, 0.9]), threshold=0.1).labels.tolist() == [1, 1]
    two = decode_predictions(np.array([[0.7, 0.3], [0.1, 0.9]], np.float32))
    assert (two.mode, two.binary, two.labels.tolist()) == ("argmax", True, [0, 1])
    three = decode_predictions(np.array([[0.1, 0.2, 0.7]], np.float32))
    assert (three.mode, three.binary, three.labels.tolist()) == ("argmax", False, [2])
    ints = decode_predictions(np.array([[3], [1]], np.int64))
    assert (ints.mode, ints.labels.tolist()) == ("labels", [3, 1])
    assert decode_predictions(np.array([[-2.0], [3.0]])).warning  # logits, not probabilities

"""jft's metrics against scikit-learn and SciPy, and entity-level F1 against a hand count."""

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from jft.tasks import metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    classes = 2 + seed % 3
    labels = rng.integers(0, classes, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, classes, 200))
    assert metrics.accuracy(labels, predictions) == pytest.approx(sklearn.metrics.accuracy_score(labels, predictions))
    assert metrics.f1(labels, predictions) == pytest.approx(
        sklearn.metrics.f1_score(labels, predictions, labels=[1], average="macro")
    )
    assert metrics.macro_f1(labels, predictions) == pytest.approx(
        sklearn.metrics.f1_score(labels, predictions, average="macro")
    )
    assert metrics.matthews_corrcoef(labels, predictions) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, predictions)
    )


def test_degenerate_predictions():
    labels, constant = np.array([0, 1, 1, 0]), np.zeros(4, int)
    assert metrics.matthews_corrcoef(labels, constant) == sklearn.metrics.matthews_corrcoef(labels, constant) == 0
    assert metrics.f1(labels, constant) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(0, 5, 300), 1)  # STS-B-like scores, with ties
    predictions = labels + rng.normal(0, 1.0, 300)
    assert metrics.pearson(labels, predictions) == pytest.approx(scipy.stats.pearsonr(labels, predictions)[0])
    assert metrics.spearman(labels, predictions) == pytest.approx(scipy.stats.spearmanr(labels, predictions)[0])


def test_entity_f1_counts_type_and_span():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    # gold: PER(0,2) LOC(3,4) ORG(0,1) MISC(2,4); predicted: PER(0,2) ORG(3,4) ORG(0,1) MISC(2,3)
    scores = metrics.entity_f1(gold, predicted)
    assert scores["entity_precision"] == pytest.approx(2 / 4) and scores["entity_recall"] == pytest.approx(2 / 4)
    assert scores["entity_f1"] == pytest.approx(0.5)
    assert metrics.entities(["I-PER", "I-PER", "B-PER", "I-LOC"]) == {("PER", 0, 2), ("PER", 2, 3), ("LOC", 3, 4)}

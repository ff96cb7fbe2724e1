"""Evaluation metrics on host NumPy arrays: accuracy, F1, Matthews correlation, Pearson and
Spearman correlation, and entity-level F1 for BIO tags (CoNLL's definition)."""

import numpy as np


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(labels == predictions))


def f1(labels: np.ndarray, predictions: np.ndarray, *, positive: int = 1) -> float:
    """F1 of the positive class (binary tasks such as MRPC and QQP)."""
    tp = np.sum((predictions == positive) & (labels == positive))
    fp = np.sum((predictions == positive) & (labels != positive))
    fn = np.sum((predictions != positive) & (labels == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes present in labels or predictions."""
    classes = np.union1d(labels, predictions)
    return float(np.mean([f1(labels, predictions, positive=c) for c in classes]))


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Matthews correlation (CoLA's metric), multiclass form; 0 when undefined."""
    classes = np.union1d(labels, predictions)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, ([index[c] for c in labels], [index[c] for c in predictions]), 1)
    t, p = confusion.sum(1), confusion.sum(0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denominator) if denominator else 0.0


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def classification_report(labels: np.ndarray, predictions: np.ndarray, names: list[str]) -> dict:
    """Precision, recall, F1 and support of each class, their unweighted (macro) and support-weighted
    means, and the confusion matrix; a class never predicted (or never true) has precision (recall) 0."""
    matrix = confusion_matrix(labels, predictions, len(names))
    hits, predicted, support = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    precision = np.divide(hits, predicted, out=np.zeros(len(names)), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(len(names)), where=support > 0)
    total = precision + recall
    f1_scores = np.divide(2 * precision * recall, total, out=np.zeros(len(names)), where=total > 0)
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for name, p, r, f, n in zip(names, precision, recall, f1_scores, support)
    }
    macro = {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1_scores.mean())}
    share = support / max(support.sum(), 1)
    weighted = {"precision": float(precision @ share), "recall": float(recall @ share), "f1": float(f1_scores @ share)}
    out = {"per_class": per_class, "macro": macro, "weighted": weighted}
    return {**out, "labels": list(names), "confusion_matrix": matrix.tolist()}


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
    x, y = labels - labels.mean(), predictions - predictions.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
    return pearson(_ranks(labels), _ranks(predictions))


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans of BIO (or IOB1) tags; an I- that does not continue starts an entity."""
    spans, current = set(), None
    for position, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        continues = prefix == "I" and current is not None and current[0] == kind
        if current is not None and not continues:
            spans.add((current[0], current[1], position))
            current = None
        if prefix == "B" or (prefix == "I" and not continues):
            current = (kind, position)
    return spans


def entity_f1(label_sequences: list[list[str]], predicted_sequences: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1: an entity counts when its type and span both match."""
    gold = predicted = correct = 0
    for labels, predictions in zip(label_sequences, predicted_sequences):
        true_spans, predicted_spans = entities(labels), entities(predictions)
        gold += len(true_spans)
        predicted += len(predicted_spans)
        correct += len(true_spans & predicted_spans)
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1_score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1_score}


def one_class_advice(l2_reference: str) -> str:
    """What to say of a classifier that predicts one class for every evaluation example; a run that
    pulls toward the pretrained weights (l2.reference=init) is not told to."""
    toward = "" if l2_reference == "init" else " (or l2.reference=init from a pretrained model)"
    return (
        "the model predicts one class for every evaluation example (MCC 0): it has learned how often each "
        f"label occurs, not the task. A lower l2.weight{toward}, another optim.lr or more epochs may help."
    )


def one_class(scores: dict[str, float]) -> bool:
    """Whether classification scores are those of a model that predicts one class for every
    example: its Matthews correlation is exactly 0 (undefined, as when one label is predicted),
    and it is not simply right about data of one class."""
    return scores.get("mcc") == 0.0 and scores.get("accuracy", 0.0) < 1.0

"""Scores and logits of a task model on encoded data: what evaluations during training, the
sweep's members and `jft eval` compute alike."""

import jax
import numpy as np

from jft.tasks import metrics
from jft.tasks.answers import answer_scores
from jft.tasks.batches import TaskBatches, fill_rows, step_inputs
from jft.tasks.records import IGNORE, PER_TOKEN, Task
from jft.train.parallel import Runner


def evaluate_data(runner: Runner, predict, params, data, task: Task, batch_size: int) -> dict[str, float]:
    """Task metrics of params on encoded data (every example once, in order)."""
    return task_scores(task, *predict_all(runner, predict, params, data, task, batch_size), data)


def task_scores(task: Task, logits, labels, data=None) -> dict[str, float]:
    """The task's metrics from the logits and labels of every example (question answering: of
    every window, and data the Windows they are of)."""
    if task.kind == "question_answering":
        return answer_scores(data, logits, task.spans)
    if task.kind == "regression":
        scores = logits[:, 0]
        return {
            "pearson": metrics.pearson(labels, scores),
            "spearman": metrics.spearman(labels, scores),
            "mse": float(np.mean((scores - labels) ** 2)),
        }
    if task.kind == "multiple_choice":  # which candidate: the position of the right one means nothing more
        return {"accuracy": metrics.accuracy(labels, logits.argmax(-1))}
    if task.kind == "classification":
        predicted = logits.argmax(-1)
        out = {"accuracy": metrics.accuracy(labels, predicted), "mcc": metrics.matthews_corrcoef(labels, predicted)}
        out["f1" if len(task.labels) == 2 else "macro_f1"] = (
            metrics.f1(labels, predicted) if len(task.labels) == 2 else metrics.macro_f1(labels, predicted)
        )
        return out
    gold, predicted = [], []
    for token_logits, token_labels in zip(logits, labels):
        keep = token_labels != IGNORE
        gold.append([task.labels[i] for i in token_labels[keep]])
        predicted.append([task.labels[i] for i in token_logits[keep].argmax(-1)])
    hits = sum(np.sum(np.array(g) == np.array(p)) for g, p in zip(gold, predicted))
    return {**metrics.entity_f1(gold, predicted), "token_accuracy": float(hits / max(sum(map(len, gold)), 1))}


def predict_all(runner: Runner, predict, params, data, task: Task, batch_size: int, members: int = 0):
    """Logits and labels of every example of data, in the data's order. With `members`, predict is
    a population's (logits [rows, members, ...], jft.sweep): a list of them, one a member."""
    if hasattr(data, "batches"):  # images (jft.tasks.images.ImageData)
        batches = data.batches(batch_size)
    else:
        batches = TaskBatches(data, task.kind, batch_size, shuffle=False, max_len=task.seq_len)
    views = range(members) if members else [None]
    logits = [[None] * len(data) for _ in views]
    labels = [None] * len(data)
    no_key = runner.put_replicated(jax.random.PRNGKey(0))
    for batch in batches.epoch(0):
        inputs = fill_rows(step_inputs(batch)[1], runner.batch_multiple())
        out = runner.get_rows(predict(params, runner.put_global_batch(inputs), no_key))
        for row, example in enumerate(batch["example_ids"]):
            if example >= 0:
                tokens = task.kind in PER_TOKEN
                n = len(data.input_ids[example]) if tokens else 0
                for view, member in enumerate(views):
                    row_out = out[row] if member is None else out[row, member]
                    logits[view][example] = row_out[:n] if tokens else row_out
                labels[example] = (
                    batch["labels"][row, :n] if task.kind == "token_classification" else batch["labels"][row]
                )
    if task.kind not in PER_TOKEN:
        logits, labels = [np.stack(each) for each in logits], np.stack(labels)
    return [(each, labels) for each in logits] if members else (logits[0], labels)

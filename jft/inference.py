"""Using a fine-tuned run directory: evaluate, predict and export its best model.

`FinetunedModel(workdir)` reads the run directory through jft.rundir: the task and the model
from run.json, the tokenizer from tokenizer.json, the weights from best/. The same
`evaluate_data` scores evaluations during training.
"""

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np

from jft import metrics, rundir
from jft.checkpoint import restore_latest
from jft.data.tasks import IGNORE, Task, TaskBatches, encode, read_records, step_inputs
from jft.models import BertConfig, BertForSequenceClassification, BertForTokenClassification
from jft.parallel import Runner
from jft.params import check_finite
from jft.steps import FinetuneSetup, predict_step


def build_model(model_cfg: BertConfig, task: Task, mlm: bool = False):
    """The task's model; with `mlm`, with the masked-LM head of the joint objective as well."""
    num_labels = max(len(task.labels), 1)
    if task.kind == "token_classification":
        return BertForTokenClassification(model_cfg, num_labels, mlm=mlm)
    return BertForSequenceClassification(model_cfg, num_labels, mlm=mlm)


def evaluate_data(runner: Runner, predict, params, data, task: Task, batch_size: int) -> dict[str, float]:
    """Task metrics of params on encoded data (every example once, in order)."""
    logits, labels = _predict_all(runner, predict, params, data, task, batch_size)
    if task.kind == "regression":
        scores = logits[:, 0]
        return {
            "pearson": metrics.pearson(labels, scores),
            "spearman": metrics.spearman(labels, scores),
            "mse": float(np.mean((scores - labels) ** 2)),
        }
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


def _predict_all(runner: Runner, predict, params, data, task: Task, batch_size: int):
    """Logits and labels of every example of data, in the data's order."""
    batches = TaskBatches(data, task.kind, batch_size, shuffle=False, max_len=task.seq_len)
    logits, labels = [None] * len(data), [None] * len(data)
    no_key = runner.put_replicated(jax.random.PRNGKey(0))
    for batch in batches.epoch(0):
        out = runner.get_rows(predict(params, runner.put_global_batch(step_inputs(batch)[1]), no_key))
        for row, example in enumerate(batch["example_ids"]):
            if example >= 0:
                n = len(data.input_ids[example])
                logits[example] = out[row, :n] if task.kind == "token_classification" else out[row]
                labels[example] = (
                    batch["labels"][row, :n] if task.kind == "token_classification" else batch["labels"][row]
                )
    if task.kind == "token_classification":
        return logits, labels
    return np.stack(logits), np.stack(labels)


class FinetunedModel:
    """A fine-tuned workdir, ready to evaluate, predict and export (its best checkpoint)."""

    def __init__(self, workdir: str | Path, backend: str = "jit"):
        workdir = Path(workdir).absolute()
        run = rundir.read_run(workdir) if workdir.is_dir() else None
        rundir.require_stage(workdir, run, "finetuning", "give the --workdir of a `jft finetune` run")
        self.task = Task.from_json(run["task"])
        self.model_config = BertConfig.from_dict(run["model"])
        state, self.best = restore_latest(
            workdir / rundir.BEST, f"{workdir} has no saved model yet (best/ is empty); let `jft finetune` finish."
        )
        self.params = state["params"]
        check_finite(self.params, f"the best model in {workdir / rundir.BEST}")
        self.tokenizer = rundir.run_tokenizer(workdir)
        self.runner = Runner(backend)
        model = build_model(self.model_config, self.task)
        setup = FinetuneSetup(model, None, None, self.task.kind, 0.0, None)
        self.predict_fn = self.runner.compile_rows(functools.partial(predict_step, setup=setup))

    def _encode(self, source: str, with_labels: bool):
        columns = self.task.columns if with_labels else dataclasses.replace(self.task.columns, label=None)
        records = read_records(source, columns, self.task.kind)
        return records, encode(
            records,
            self.tokenizer,
            self.task.kind,
            self.task.columns,
            self.task.labels,
            self.task.seq_len,
            with_labels=with_labels,
        )

    def evaluate(self, source: str, batch_size: int = 32) -> dict[str, float]:
        _, data = self._encode(source, with_labels=True)
        params = self.runner.put_replicated(self.params)
        return evaluate_data(self.runner, self.predict_fn, params, data, self.task, batch_size)

    def predict(self, source: str, batch_size: int = 32) -> list[dict]:
        """One dict a record: label and probabilities (classification), score (regression), or
        one tag a word (token classification: records longer than seq_len are predicted in
        windows of whole words; a word the tokenizer drops entirely gets the tag null)."""
        if self.task.kind == "token_classification":
            return self._predict_tags(source, batch_size)
        records, data = self._encode(source, with_labels=False)
        params = self.runner.put_replicated(self.params)
        logits, _ = _predict_all(self.runner, self.predict_fn, params, data, self.task, batch_size)
        if self.task.kind == "regression":
            return [{"score": float(example_logits[0])} for example_logits in logits]
        out = []
        for probs in _softmax(logits):
            label = self.task.labels[int(probs.argmax())]
            out.append({"label": label, "probabilities": dict(zip(self.task.labels, map(float, probs)))})
        return out

    def _predict_tags(self, source: str, batch_size: int) -> list[dict]:
        text = self.task.columns.text
        records = read_records(source, dataclasses.replace(self.task.columns, label=None), self.task.kind)
        windows = [
            (index, start, end)
            for index, record in enumerate(records)
            for start, end in _word_windows(self.tokenizer, record[text], self.task.seq_len)
        ]
        pieces = [{text: records[index][text][start:end]} for index, start, end in windows]
        data = encode(
            pieces,
            self.tokenizer,
            self.task.kind,
            self.task.columns,
            self.task.labels,
            self.task.seq_len,
            with_labels=False,
        )
        params = self.runner.put_replicated(self.params)
        logits, _ = _predict_all(self.runner, self.predict_fn, params, data, self.task, batch_size)
        tags: list[list] = [[] for _ in records]
        for (index, _, _), piece, encoding_logits in zip(windows, pieces, logits):
            first = _first_pieces(self.tokenizer, piece[text])
            tags[index] += [None if p is None else self.task.labels[int(encoding_logits[p].argmax())] for p in first]
        return [{"tags": record_tags} for record_tags in tags]


def _softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def _word_windows(tokenizer, words: list[str], seq_len: int) -> list[tuple[int, int]]:
    """[start, end) ranges of words whose word-pieces fit a row of seq_len tokens with [CLS] and
    [SEP]; a single word longer than that is a window of its own (its first piece still fits)."""
    word_ids = tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False).word_ids
    counts = np.bincount([w for w in word_ids if w is not None], minlength=len(words))
    windows, start, used = [], 0, 0
    for index, count in enumerate(counts):
        if used + count > seq_len - 2 and index > start:
            windows.append((start, index))
            start, used = index, 0
        used += count
    return windows + [(start, len(words))]


def _first_pieces(tokenizer, words: list[str]) -> list[int | None]:
    """For each word, the position of its first word-piece (None for a word without any)."""
    encoding = tokenizer.encode(words, is_pretokenized=True)
    positions: list[int | None] = [None] * len(words)
    for position, word in enumerate(encoding.word_ids):
        if word is not None and positions[word] is None:
            positions[word] = position
    return positions

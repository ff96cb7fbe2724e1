"""Using a fine-tuned run directory: evaluate and predict with its best model (`jft eval`, `jft predict`).

`FinetunedModel(workdir)` reads the run directory (jft.train.rundir): the task and the model from
run.json, the tokenizer from tokenizer.json, the weights from best/; it scores as evaluations
during training do (jft.tasks.evaluate).
"""

import dataclasses
import functools
import json
import sys
from pathlib import Path

import numpy as np

from jft.data.images import ImageSet, read_images
from jft.data.tokenizer import as_running_text, reads_spaces
from jft.errors import JftError, choices
from jft.tasks import metrics
from jft.tasks.answers import best_answers
from jft.tasks.evaluate import predict_all, task_scores
from jft.tasks.images import image_data
from jft.tasks.records import Task, check_answered, encode, read_records
from jft.train import rundir
from jft.train.augment import ImageInputs
from jft.train.parallel import Runner
from jft.train.steps import FinetuneSetup, predict_step


class FinetunedModel:
    """A fine-tuned workdir, ready to evaluate and predict: its best model, or the checkpoint of a
    chosen step (best/<step> or checkpoints/<step>). columns: other column names for new data;
    skip_bad_images: leave out the files of new image data that PIL cannot read (else an error)."""

    def __init__(
        self,
        workdir: str | Path,
        backend: str = "jit",
        step: int | None = None,
        columns: dict | None = None,
        skip_bad_images: bool = False,
    ):
        self.skip_bad_images = skip_bad_images
        workdir = Path(workdir).absolute()
        run = rundir.read_run(workdir) if workdir.is_dir() else None
        rundir.require_stage(workdir, run, "finetuning", "give the --workdir of a `jft finetune` run")
        self.task = Task.from_json(run["task"])
        if columns:
            self.task.columns = dataclasses.replace(self.task.columns, **{k: v for k, v in columns.items() if v})
        self.family, self.model_config = rundir.run_model(run)
        self.params, self.source, self.meta = rundir.saved_model(workdir, step, self.family)
        self.images = self.family.modality == "image"
        self.tokenizer = None if self.images else rundir.run_tokenizer(workdir)
        self.runner = Runner(backend)
        model = self.family.module(self.model_config, self.task.head())
        images = ImageInputs.of(self.model_config, augment=False) if self.images else None
        setup = FinetuneSetup(model, None, None, self.task.kind, 0.0, None, inputs=self.family.inputs, images=images)
        self.predict_fn = self.runner.compile_rows(functools.partial(predict_step, setup=setup))

    def _image_logits(self, source: str, batch_size: int, labeled: bool) -> tuple[np.ndarray, np.ndarray, ImageSet]:
        """Logits and label ids of the images of source (folder, .npz or tfds:), and the images."""
        images = read_images(source, self.model_config.image_size, skip_bad=self.skip_bad_images)
        if images.skipped:
            shown = ", ".join(images.skipped[:3]) + (", ..." if len(images.skipped) > 3 else "")
            print(f"{source}: left out {len(images.skipped)} files PIL cannot read: {shown}", file=sys.stderr)
        if labeled and images.labels is None:
            raise JftError(f"{source} has no labels (no class folders: DIR/<class>/<image>); it cannot be scored.")
        data = image_data(images if labeled else dataclasses.replace(images, labels=None), self.task.labels, source)
        params = self.runner.put_replicated(self.params)
        logits, labels = predict_all(self.runner, self.predict_fn, params, data, self.task, batch_size)
        return logits, labels, images

    def _logits(self, records: list, batch_size: int, with_labels: bool):
        """Logits and labels (None without labels) of records, in their order, and the encoded
        records they are of (question answering: their windows)."""
        data = encode(
            records,
            self.tokenizer,
            self.task.kind,
            self.task.columns,
            self.task.labels,
            self.task.seq_len,
            with_labels=with_labels,
            spans=self.task.spans,
        )
        params = self.runner.put_replicated(self.params)
        return *predict_all(self.runner, self.predict_fn, params, data, self.task, batch_size), data

    def _labeled(self, source: str) -> list:
        records = read_records(source, self.task.columns, self.task.kind)
        if self.task.kind == "question_answering" and not self.task.spans.unanswerable:
            advice = "this run answers every question (SQuAD v1.1), so it cannot score those; leave them out"
            check_answered(records, self.task.columns, advice)
        return records

    def _labeled_logits(self, source: str, batch_size: int) -> tuple[np.ndarray, np.ndarray, int, object]:
        """Logits and labels of the labeled examples of source, how many there are, and the
        encoded examples (None for images)."""
        if self.images:
            logits, labels, images = self._image_logits(source, batch_size, labeled=True)
            return logits, labels, len(images), None
        records = self._labeled(source)
        logits, labels, data = self._logits(records, batch_size, with_labels=True)
        return logits, labels, len(records), data

    def evaluate(self, source: str, batch_size: int = 32) -> dict[str, float]:
        """The task's metrics on labeled data (as during training)."""
        logits, labels, _, data = self._labeled_logits(source, batch_size)
        return task_scores(self.task, logits, labels, data)

    def report(self, source: str, batch_size: int = 32) -> dict:
        """evaluate's metrics, which model and how many records; for classification also each class's
        precision, recall and F1, their macro means, the confusion matrix and the binary F1's positive label."""
        logits, labels, count, data = self._labeled_logits(source, batch_size)
        out = {"model": self.source, "data": source, "records": count}
        out["metrics"] = task_scores(self.task, logits, labels, data)
        if self.task.kind == "classification":
            out.update(metrics.classification_report(labels, logits.argmax(-1), self.task.labels))
            if len(self.task.labels) == 2:
                out["f1_positive_label"] = self.task.labels[1]
        return out

    def predict(self, source: str, batch_size: int = 32, id_column: str = "", with_text: bool = False) -> list[dict]:
        """One dict a record: its id (id_column's value, else its row: 0 for the first record), its
        text(s) when with_text, and label and probabilities (classification), score (regression),
        or one tag a word (token classification: records longer than seq_len are predicted in
        windows of whole words; a word the tokenizer drops entirely gets the tag null), or the
        answer, its score, the no-answer score and the n-best answers with their probabilities
        (question answering; the id is the record's "id" when it has one)."""
        if self.images:  # one prediction an image: its file (or index), label and probabilities
            logits, _, images = self._image_logits(source, batch_size, labeled=False)
            return [{"path": name, **output} for name, output in zip(images.names, self._classes(logits))]
        records = read_records(source, dataclasses.replace(self.task.columns, label=None), self.task.kind)
        if self.task.kind == "question_answering" and not id_column and "id" in records[0]:
            id_column = "id"
        if id_column and id_column not in records[0]:
            raise JftError(
                f"{source} has no column {id_column!r} for the ids (columns: {choices(sorted(records[0]))}); set "
                "--config.data.id_column to one of them, or to '' to name each prediction by its row."
            )
        if self.task.kind == "token_classification":
            outputs = self._predict_tags(records, batch_size)
        elif self.task.kind == "question_answering":
            logits, _, windows = self._logits(records, batch_size, with_labels=False)
            outputs = best_answers(windows, logits, self.task.spans)
        else:
            outputs = self._predict_records(records, batch_size)
        texts = [c for c in (self.task.columns.text, self.task.columns.text_pair) if c] if with_text else []
        return [
            {**({"id": record[id_column]} if id_column else {"row": row}), **{c: record[c] for c in texts}, **output}
            for row, (record, output) in enumerate(zip(records, outputs))
        ]

    def _predict_records(self, records: list, batch_size: int) -> list[dict]:
        logits, _, _ = self._logits(records, batch_size, with_labels=False)
        if self.task.kind == "regression":
            return [{"score": float(example_logits[0])} for example_logits in logits]
        return self._classes(logits)

    def _classes(self, logits: np.ndarray) -> list[dict]:
        """Each example's label and the probability of every label."""
        out = []
        for probs in _softmax(logits):
            label = self.task.labels[int(probs.argmax())]
            out.append({"label": label, "probabilities": dict(zip(self.task.labels, map(float, probs)))})
        return out

    def _predict_tags(self, records: list, batch_size: int) -> list[dict]:
        text, spaced = self.task.columns.text, reads_spaces(self.tokenizer)
        words = [as_running_text(record[text], spaced) for record in records]  # a window keeps its words' spaces
        windows = [
            (index, start, end)
            for index, record_words in enumerate(words)
            for start, end in _word_windows(self.tokenizer, record_words, self.task.seq_len)
        ]
        pieces = [{text: words[index][start:end]} for index, start, end in windows]
        logits, _, _ = self._logits(pieces, batch_size, with_labels=False)
        tags: list[list] = [[] for _ in records]
        for (index, _, _), piece, encoding_logits in zip(windows, pieces, logits):
            first = _first_pieces(self.tokenizer, piece[text])
            tags[index] += [None if p is None else self.task.labels[int(encoding_logits[p].argmax())] for p in first]
        return [{"tags": record_tags} for record_tags in tags]


def answers_text(values: dict) -> str:
    """Question answering's predictions as `jft predict` writes them: one JSON object, an entry a line."""
    return json.dumps(values, ensure_ascii=False, allow_nan=False, indent=0) + "\n"


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

"""Labeled data for fine-tuning: records in, token arrays out, batches padded, bucketed or packed.

Sources: CSV, TSV or JSONL files with a column mapping (text, text_pair, label), or a TFDS
dataset by name (tfds:glue/sst2:train, ...). Token classification reads a list of words and a
list of tags per record; the tag goes on the first word-piece of each word, the other pieces
are ignored by the loss.
"""

import csv
import dataclasses
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tokenizers

from jft.data.corpus import tfds_records
from jft.errors import JftError
from jft.files import jsonl_objects, read_text

KINDS = ("classification", "regression", "token_classification")
LAYOUTS = ("padded", "bucketed", "packed")
IGNORE = -1  # label of word-pieces and padding that the token loss skips


@dataclasses.dataclass(frozen=True)
class Columns:
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"


@dataclasses.dataclass
class Task:
    """What a fine-tuned model needs to read new data and name its outputs (kept in run.json)."""

    kind: str
    labels: list[str]
    columns: Columns
    seq_len: int

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "labels": self.labels,
            "columns": dataclasses.asdict(self.columns),
            "seq_len": self.seq_len,
        }

    @classmethod
    def from_json(cls, values: dict) -> "Task":
        return cls(values["kind"], values["labels"], Columns(**values["columns"]), values["seq_len"])

    def metrics(self) -> tuple[str, ...]:
        """The names of the evaluation metrics of this task (all: higher is better, but mse)."""
        if self.kind == "regression":
            return ("pearson", "spearman", "mse")
        if self.kind == "classification":
            return ("accuracy", "mcc", "f1" if len(self.labels) == 2 else "macro_f1")
        return ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


class Record(dict):
    """One record of task data, and where it is (file:line, or dataset and index) for messages."""

    where: str = ""


def read_records(source: str, columns: Columns, kind: str, *, tfds_data_dir: str | None = None) -> list[Record]:
    """Records with the mapped columns, from a CSV/TSV/JSONL file or tfds:NAME[:SPLIT], each checked
    for the task kind (a text, a label, a number for regression, as many tags as words);
    columns.label None: records to predict, without labels."""
    if source.startswith("tfds:"):
        raw, features = tfds_records(source.removeprefix("tfds:"), tfds_data_dir)
        names = _class_names(features, columns.label)
        records = [_record(_decode(r, columns.label, names), f"{source} record {i}") for i, r in enumerate(raw)]
    else:
        path = Path(source)
        if not path.is_file():
            raise JftError(f"data file not found: {path}")
        if path.suffix == ".jsonl":
            records = _jsonl_records(path)
        elif path.suffix in (".csv", ".tsv"):
            records = _csv_records(path, "\t" if path.suffix == ".tsv" else ",")
        else:
            raise JftError(f"cannot read {path}: use .csv, .tsv or .jsonl (or tfds:NAME[:SPLIT]).")
    if not records:
        raise JftError(f"{source} holds no records.")
    wanted = [c for c in (columns.text, columns.text_pair, columns.label) if c]
    missing = [c for c in wanted if c not in records[0]]
    if missing:
        raise JftError(
            f"{source} has no column {missing[0]!r} (columns: {sorted(records[0])}); map yours with "
            "--config.data.text_column, text_pair_column and label_column."
        )
    for record in records:
        _check_record(record, kind, columns)
    return records


def _record(values: dict, where: str) -> Record:
    record = Record(values)
    record.where = where
    return record


def _jsonl_records(path: Path) -> list[Record]:
    return [_record(values, f"{path}:{number}") for number, values in jsonl_objects(path)]


def _csv_records(path: Path, delimiter: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    records = []
    try:
        for values in reader:
            where = f"{path}:{reader.line_num}"
            if None in values:
                raise JftError(f"{where} has more fields than the header ({len(reader.fieldnames)}).")
            records.append(_record(values, where))
    except csv.Error as error:
        raise JftError(f"{path}:{reader.line_num} is not valid CSV ({error}).") from None
    header = reader.fieldnames or []
    if delimiter == "," and len(header) == 1 and "\t" in header[0]:
        raise JftError(f"{path} looks tab-separated (its header is {header[0]!r}); name it .tsv.")
    return records


def _check_record(record: Record, kind: str, columns: Columns) -> None:
    """A JftError naming the record when it cannot be a record of this task."""
    for column in (columns.text, columns.text_pair):
        if column and record[column] is None:
            raise JftError(f"{record.where} has no value in column {column!r}.")
    words = record[columns.text]
    if kind == "token_classification" and not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
        raise JftError(f"{record.where}: column {columns.text!r} must be a list of words (strings), got {words!r:.80}.")
    if not columns.label:
        return
    label = record[columns.label]
    if label is None or label == "":
        raise JftError(f"{record.where} has no value in column {columns.label!r} (the label).")
    if kind == "regression":
        try:
            score = float(label)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise JftError(f"{record.where}: the label {label!r} is not a number; a regression task needs scores.")
    if kind == "token_classification":
        if not isinstance(label, list):
            raise JftError(f"{record.where}: column {columns.label!r} must be a list of tags, got {label!r:.80}.")
        if len(label) != len(words):
            raise JftError(f"{record.where} has {len(words)} words but {len(label)} tags; give one tag a word.")


def _class_names(features, column: str | None) -> list[str] | None:
    """The names of a TFDS ClassLabel column (or of a sequence of them, as NER tags), if it is one."""
    feature = features[column] if column and column in features else None
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel
    return list(feature.names) if hasattr(feature, "names") else None


def _decode(record: dict, label_column: str | None, names: list[str] | None) -> dict:
    """A TFDS record as plain Python values, with class ids turned into their names."""

    def value(v):
        if isinstance(v, np.ndarray | np.generic):
            v = v.tolist()
        if isinstance(v, list):
            return [value(x) for x in v]
        return v.decode("utf-8") if isinstance(v, bytes) else v

    out = {k: value(v) for k, v in record.items()}
    if names is not None and label_column in out:
        label = out[label_column]
        # A label of -1 marks an unlabeled split (GLUE's test sets): no name.
        out[label_column] = (
            [names[i] for i in label] if isinstance(label, list) else (names[label] if label >= 0 else None)
        )
    return out


def label_vocabulary(
    records: Sequence[dict], kind: str, label_column: str, *, source: str = "", tfds_data_dir: str | None = None
) -> list[str]:
    """The label names of a classification task (tags, for token classification): a TFDS
    dataset's own class names in its order (so class 1 stays the positive class of F1), else
    the sorted names found in the records."""
    if kind == "regression":
        return []
    if source.startswith("tfds:"):
        _, features = tfds_records(source.removeprefix("tfds:"), tfds_data_dir)
        names = _class_names(features, label_column)
        if names:
            return names
    if kind == "token_classification":
        names = {str(tag) for r in records for tag in r[label_column]}
    else:
        names = {str(r[label_column]) for r in records}
    return sorted(names)


@dataclasses.dataclass
class Encoded:
    """Token arrays of a task's examples (lists, one entry an example, of varying length)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: list  # int class, float score, or int array per token (IGNORE where no label)

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(
    records: Sequence[dict],
    tokenizer: tokenizers.Tokenizer,
    kind: str,
    columns: Columns,
    labels: Sequence[str],
    seq_len: int,
    *,
    with_labels: bool = True,
) -> Encoded:
    """Tokenizes records, truncated to seq_len tokens; labels mapped to ids (checked against `labels`)."""
    if kind not in KINDS:
        raise JftError(f"task kind '{kind}' is not one of {KINDS}.")
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # truncation without touching the caller's
    tokenizer.enable_truncation(seq_len)
    tokenizer.no_padding()
    label_ids = {name: i for i, name in enumerate(labels)}

    def label_id(name) -> int:
        if str(name) not in label_ids:
            raise JftError(
                f"label {str(name)!r} is not in the task's label set {list(labels)}; fix the data, or fine-tune "
                "again with this label in the training data."
            )
        return label_ids[str(name)]

    if kind == "token_classification":
        encodings = tokenizer.encode_batch([r[columns.text] for r in records], is_pretokenized=True)
    elif columns.text_pair:
        encodings = tokenizer.encode_batch([(str(r[columns.text]), str(r[columns.text_pair])) for r in records])
    else:
        encodings = tokenizer.encode_batch([str(r[columns.text]) for r in records])
    out = Encoded([], [], [])
    for record, encoding in zip(records, encodings):
        out.input_ids.append(np.array(encoding.ids, np.int32))
        out.token_type_ids.append(np.array(encoding.type_ids, np.int32))
        if not with_labels:
            out.labels.append(None)
        elif kind == "classification":
            out.labels.append(label_id(record[columns.label]))
        elif kind == "regression":
            out.labels.append(float(record[columns.label]))
        else:
            tags = record[columns.label]
            token_labels, previous = np.full(len(encoding.ids), IGNORE, np.int32), None
            for position, word in enumerate(encoding.word_ids):
                if word is not None and word != previous:
                    token_labels[position] = label_id(tags[word])
                previous = word
            out.labels.append(token_labels)
    return out


@dataclasses.dataclass
class TaskBatches:
    """Fixed-size batches of a task's examples, in one of three layouts:

    - "padded": batch_size examples a batch, each batch padded to max_len (one shape);
    - "bucketed": examples of similar length share a batch, padded to the smallest of at most
      `buckets` widths that holds its longest (`bucket_widths`: the widths, multiples of
      pad_multiple, that pad the data least), so short texts do not pay for the longest and an
      epoch compiles at most `buckets` programs;
    - "packed": several examples a row of max_len tokens (at most max_segments), kept apart by
      segment_ids, with position_ids restarting at each example and (sequence tasks) cls_positions
      where each starts; labels and weights per example [rows, max_segments], or per token. Rows are packed
      once (best fit, longest first) and shuffled each epoch; a batch holds as many rows as hold
      batch_size examples on average (rounded up to row_multiple, e.g. the device count), so
      batch_size keeps its meaning and the learning rate its value.

    Rows (or example slots) that fill a batch have weight 0 and example_id -1.
    """

    data: Encoded
    kind: str
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    layout: str = "bucketed"
    pad_multiple: int = 16
    buckets: int = 4
    max_len: int = 0  # widths never exceed this (the task's seq_len); 0: no limit
    max_segments: int = 16
    row_multiple: int = 1

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise JftError(f"data layout '{self.layout}' is not one of {LAYOUTS}.")
        if self.layout in ("padded", "packed") and not self.max_len:
            raise JftError(f"the {self.layout} layout needs max_len (the task's seq_len).")
        self.lengths = np.array([len(ids) for ids in self.data.input_ids])
        self.rows = self.batch_size
        if self.layout == "packed":
            order = np.random.default_rng([self.seed, 0]).permutation(len(self.data))
            self.packed_rows = pack(self.lengths, order, self.max_len, self.max_segments)
            per_row = len(self.data) / len(self.packed_rows)
            rows = -(-self.batch_size // per_row)
            self.rows = int(-(-rows // self.row_multiple) * self.row_multiple)
        if self.layout == "bucketed":
            if self.buckets < 1:
                raise JftError(f"buckets must be at least 1 (it is {self.buckets}).")
            longest = [self.lengths[indices].max() for indices in self.epoch_indices(0)]
            self.widths = bucket_widths(longest + [self.lengths.max()], self.buckets, self._fit)

    def __len__(self) -> int:
        units = len(self.packed_rows) if self.layout == "packed" else len(self.data)
        return -(-units // self.rows)

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches of one epoch, made one at a time."""
        for indices in self.epoch_indices(epoch):
            yield self.batch(indices)

    def stream(self, start: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches from step `start` (counted from 0 over all epochs) on, epoch after epoch."""
        epoch, index = divmod(start, len(self))
        while True:
            for indices in self.epoch_indices(epoch)[index:]:
                yield self.batch(indices)
            epoch, index = epoch + 1, 0

    def epoch_indices(self, epoch: int) -> list:
        """What each batch of one epoch holds, a function of (seed, epoch): example indices, or
        (packed) a list of rows, each an array of example indices."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.layout == "packed":
            order = rng.permutation(len(self.packed_rows)) if self.shuffle else np.arange(len(self.packed_rows))
            rows = [self.packed_rows[i] for i in order]
            return [rows[i : i + self.rows] for i in range(0, len(rows), self.rows)]
        order = rng.permutation(len(self.data)) if self.shuffle else np.arange(len(self.data))
        if self.layout == "bucketed":
            chunks = np.split(order, range(self.batch_size * 64, len(order), self.batch_size * 64))
            order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle and self.layout == "bucketed":
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batch(self, indices) -> dict[str, np.ndarray]:
        """The arrays of one batch of epoch_indices."""
        if self.layout == "packed":
            return self._packed_batch(indices)
        if self.layout == "padded":
            width = self.max_len
        else:
            need = self._fit(int(self.lengths[indices].max()))
            width = next(w for w in self.widths if w >= need)
        out = self._empty(self.rows, width, slots=0)
        for row, index in enumerate(indices):
            self._place(out, row, 0, index, None)
        return out

    def _fit(self, longest: int) -> int:
        """The narrowest width that holds `longest` tokens: a multiple of pad_multiple, at most max_len."""
        width = -(-longest // self.pad_multiple) * self.pad_multiple
        return max(min(width, self.max_len), longest) if self.max_len else width

    def _packed_batch(self, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
        out = self._empty(self.rows, self.max_len, slots=self.max_segments)
        out["segment_ids"] = np.zeros((self.rows, self.max_len), np.int32)
        out["position_ids"] = np.zeros((self.rows, self.max_len), np.int32)
        for row, examples in enumerate(rows):
            start = 0
            for slot, index in enumerate(examples):
                start = self._place(out, row, start, index, slot)
        return out

    def _empty(self, rows: int, width: int, slots: int) -> dict[str, np.ndarray]:
        """Zero-weight arrays of a batch; slots > 0: per-example arrays are [rows, slots] (packed)."""
        per_example = (rows, slots) if slots else (rows,)
        out = {
            "input_ids": np.zeros((rows, width), np.int32),
            "token_type_ids": np.zeros((rows, width), np.int32),
            "attention_mask": np.zeros((rows, width), np.int32),
            "example_ids": np.full(per_example, -1, np.int32),
        }
        if slots and self.kind != "token_classification":
            out["cls_positions"] = np.zeros(per_example, np.int32)
        if self.kind == "token_classification":
            out["labels"] = np.full((rows, width), IGNORE, np.int32)
            out["weights"] = np.zeros((rows, width), np.float32)
        else:
            out["labels"] = np.zeros(per_example, np.float32 if self.kind == "regression" else np.int32)
            out["weights"] = np.zeros(per_example, np.float32)
        return out

    def _place(self, out: dict, row: int, start: int, index: int, slot: int | None) -> int:
        """Writes example `index` into `row` from token `start` (packed: as example `slot`); returns
        where the next example starts."""
        n = len(self.data.input_ids[index])
        tokens = slice(start, start + n)
        example = (row,) if slot is None else (row, slot)
        out["input_ids"][row, tokens] = self.data.input_ids[index]
        out["token_type_ids"][row, tokens] = self.data.token_type_ids[index]
        out["attention_mask"][row, tokens] = 1
        out["example_ids"][example] = index
        if slot is not None:
            out["segment_ids"][row, tokens] = slot + 1
            out["position_ids"][row, tokens] = np.arange(n)
            if "cls_positions" in out:
                out["cls_positions"][example] = start
        label = self.data.labels[index]
        if label is not None:
            if self.kind == "token_classification":
                out["labels"][row, tokens] = label
                out["weights"][row, tokens] = label != IGNORE
            else:
                out["labels"][example], out["weights"][example] = label, 1.0
        return start + n


def bucket_widths(longest, buckets: int, fit) -> list[int]:
    """At most `buckets` widths, ascending, that pad batches whose longest examples are `longest`
    the least, when each batch takes the smallest width >= fit(its longest); the widest holds every
    batch. Exact, by dynamic programming over the widths the batches need."""
    widths, counts = np.unique([fit(int(n)) for n in longest], return_counts=True)
    upto = np.cumsum(counts)  # batches that need at most widths[j]
    cost = (widths * upto).astype(float)  # padded width summed over them, one width: widths[j]
    parents = []
    for _ in range(1, min(buckets, len(widths))):  # one width more, the widest being widths[j]
        extended, parent = np.full(len(widths), np.inf), np.full(len(widths), -1)
        for j in range(1, len(widths)):
            for i in range(j):
                total = cost[i] + widths[j] * (upto[j] - upto[i])
                if total < extended[j]:
                    extended[j], parent[j] = total, i
        cost = extended
        parents.append(parent)
    chosen = [len(widths) - 1]
    for parent in reversed(parents):
        chosen.append(parent[chosen[-1]])
    return sorted(int(widths[j]) for j in chosen)


def step_inputs(batch: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
    """(how many examples the batch holds, the batch without example_ids): what a training step
    takes, and what its examples/s counts. example_ids serve the host alone (evaluation's order)."""
    examples = int((batch["example_ids"] >= 0).sum())
    return examples, {name: array for name, array in batch.items() if name != "example_ids"}


def pack(lengths: np.ndarray, order: np.ndarray, width: int, max_segments: int) -> list[np.ndarray]:
    """Rows of example indices, each row's lengths summing to at most `width`, at most max_segments
    a row: best fit decreasing (longest first, ties in `order`; each into the fullest row it fits)."""
    by_room: list[list[int]] = [[] for _ in range(width + 1)]  # open rows by tokens still free
    rows: list[list[int]] = []
    for index in order[np.argsort(-lengths[order], kind="stable")]:
        n = int(lengths[index])
        room = next((r for r in range(n, width + 1) if by_room[r]), None)
        if room is None:
            rows.append([])
            row, room = len(rows) - 1, width
        else:
            row = by_room[room].pop()
        rows[row].append(int(index))
        if len(rows[row]) < max_segments and room - n > 0:
            by_room[room - n].append(row)
    return [np.array(row) for row in rows]

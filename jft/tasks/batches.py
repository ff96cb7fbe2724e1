"""Batches of a task's encoded examples: padded, bucketed by length, or packed several to a row.

Every layout is a function of (seed, epoch) and of the data alone, never of the devices: a run
resumed on other hardware takes the same batches. Rows that only fill a batch out have weight 0.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np

from jft.errors import JftError, choices
from jft.tasks.records import IGNORE, Encoded

LAYOUTS = ("padded", "bucketed", "packed")


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
      batch_size examples on average, so batch_size keeps its meaning and the learning rate its
      value. That count does not depend on the devices: `fill_rows` pads a batch to what they
      divide.

    Rows (or example slots) that fill a batch have weight 0 and example_id -1. A multiple-choice
    example is a row of candidates: its token arrays are [rows, candidates, width].
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

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise JftError(f"data layout '{self.layout}' is not one of {choices(LAYOUTS)}.")
        if self.layout == "packed" and self.kind in ("question_answering", "multiple_choice"):
            raise JftError(
                f"{self.kind}'s rows are not packed (question answering's windows fill theirs; a multiple-choice "
                "example is a row a candidate): use data.layout=bucketed or padded."
            )
        if self.layout in ("padded", "packed") and not self.max_len:
            raise JftError(f"the {self.layout} layout needs max_len (the task's seq_len).")
        self.lengths = np.array([np.shape(ids)[-1] for ids in self.data.input_ids])
        self.rows = self.batch_size
        if self.layout == "packed":
            order = np.random.default_rng([self.seed, 0]).permutation(len(self.data))
            self.packed_rows = pack(self.lengths, order, self.max_len, self.max_segments)
            per_row = len(self.data) / len(self.packed_rows)
            self.rows = int(-(-self.batch_size // per_row))
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
        return stream(self, start)

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
        tokens = (rows, *np.shape(self.data.input_ids[0])[:-1], width)  # multiple choice: [rows, candidates, width]
        out = {
            "input_ids": np.zeros(tokens, np.int32),
            "token_type_ids": np.zeros(tokens, np.int32),
            "attention_mask": np.zeros(tokens, np.int32),
            "example_ids": np.full(per_example, -1, np.int32),
        }
        if slots and self.kind != "token_classification":
            out["cls_positions"] = np.zeros(per_example, np.int32)
        if self.kind == "token_classification":
            out["labels"] = np.full((rows, width), IGNORE, np.int32)
            out["weights"] = np.zeros((rows, width), np.float32)
        elif self.kind == "question_answering":  # the answer's first and last token
            out["labels"] = np.zeros((*per_example, 2), np.int32)
            out["weights"] = np.zeros(per_example, np.float32)
        else:
            out["labels"] = np.zeros(per_example, np.float32 if self.kind == "regression" else np.int32)
            out["weights"] = np.zeros(per_example, np.float32)
        return out

    def _place(self, out: dict, row: int, start: int, index: int, slot: int | None) -> int:
        """Writes example `index` into `row` from token `start` (packed: as example `slot`); returns
        where the next example starts."""
        n = np.shape(self.data.input_ids[index])[-1]
        tokens = slice(start, start + n)
        example = (row,) if slot is None else (row, slot)
        out["input_ids"][row, ..., tokens] = self.data.input_ids[index]
        out["token_type_ids"][row, ..., tokens] = self.data.token_type_ids[index]
        out["attention_mask"][row, ..., tokens] = self.data.masks[index] if hasattr(self.data, "masks") else 1
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


def stream(batches, start: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches of `batches` (anything with len, epoch_indices and batch: a TaskBatches, an
    ImageBatches) from step `start` (counted from 0 over all epochs) on, epoch after epoch."""
    epoch, index = divmod(start, len(batches))
    while True:
        for indices in batches.epoch_indices(epoch)[index:]:
            yield batches.batch(indices)
        epoch, index = epoch + 1, 0


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


def fill_rows(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """batch with empty rows (weight 0, no example, nothing attended) added up to a multiple of
    `multiple` rows (the devices and micro-batches a step splits it over); the loss is the same."""
    rows = len(next(iter(batch.values())))
    missing = -rows % multiple
    if not missing:
        return batch
    out = {}
    for name, array in batch.items():
        pad = [(0, missing)] + [(0, 0)] * (array.ndim - 1)
        out[name] = np.pad(array, pad, constant_values=-1 if name == "example_ids" else 0)
    return out


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

"""Prepared rows to batches: deterministic, index-based, split over hosts, prefetched to devices.

The order is a fixed function of (seed, position): position p of the stream is row
permutation(epoch = p // rows)[p % rows]. A loader's whole state is its step, so a run saves
the step and a restart continues with exactly the next batch.
"""

import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from jft.data.prepare import FIELDS, FORMAT
from jft.errors import JftError


class PretrainRows:
    """One split of a `jft prepare` directory, memory-mapped; rows are read by index."""

    def __init__(self, directory: str | Path, split: str = "train"):
        directory = Path(directory)
        meta_file = directory / "metadata.json"
        if not meta_file.is_file():
            raise JftError(f"{directory} is not a prepared corpus (no metadata.json); run `jft prepare` first.")
        self.metadata = json.loads(meta_file.read_text())
        if self.metadata.get("format") != FORMAT:
            raise JftError(f"{directory} was written by another version of jft prepare; prepare it again.")
        self.directory, self.split = directory, split
        shards = self.metadata["splits"][split]["shards"]
        self.arrays = {
            field: [np.load(directory / f"{s['prefix']}.{field}.npy", mmap_mode="r") for s in shards]
            for field in FIELDS
        }
        self.offsets = np.cumsum([0] + [s["rows"] for s in shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def seq_len(self) -> int:
        return self.metadata["seq_len"]

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows by global index: input_ids, token_type_ids, attention_mask, word_start [n, seq]; nsp_labels [n]."""
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        local = indices - self.offsets[shard]
        out = {field: np.stack([self.arrays[field][s][i] for s, i in zip(shard, local)]) for field in FIELDS}
        seq = np.arange(self.seq_len)
        return {
            "input_ids": out["input_ids"].astype(np.int32),
            "token_type_ids": out["token_type_ids"].astype(np.int32),
            "attention_mask": (seq[None, :] < out["lengths"][:, None]).astype(np.int32),
            "word_start": out["word_start"].astype(bool),
            "nsp_labels": out["nsp_labels"].astype(np.int32),
        }


class Loader:
    """Batches of a global batch size; this process gets its contiguous share of every batch.

    batch(step) is a pure function of (seed, step), so resuming at a step gives the same batches.
    Each batch carries row_ids, the rows' positions in the global batch stream (for masking keys).
    """

    def __init__(
        self,
        data: PretrainRows,
        global_batch: int,
        seed: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        single_pass: bool = False,
    ):
        """single_pass: one pass over the rows, in order; positions past the end are padding rows
        (no attention, no NSP label), so that an evaluation counts every row exactly once."""
        if len(data) == 0:
            raise JftError(f"the '{data.split}' split of {data.directory} has no rows; use a larger corpus.")
        if global_batch % process_count:
            raise JftError(f"global batch {global_batch} does not divide over {process_count} processes.")
        self.data, self.global_batch, self.seed = data, global_batch, seed
        self.shuffle, self.single_pass = shuffle and not single_pass, single_pass
        self.local_batch = global_batch // process_count
        self.local_start = process_index * self.local_batch
        self._epoch, self._order = -1, None

    def _row_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            n = len(self.data)
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._epoch = epoch
        return self._order

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step`."""
        n = len(self.data)
        positions = step * self.global_batch + self.local_start + np.arange(self.local_batch, dtype=np.int64)
        indices = np.empty(self.local_batch, np.int64)
        for epoch in np.unique(positions // n):
            here = positions // n == epoch
            indices[here] = self._row_order(int(epoch))[positions[here] % n]
        batch = self.data.rows(indices)
        batch["row_ids"] = (positions % np.iinfo(np.int32).max).astype(np.int32)
        if self.single_pass:
            padding = positions >= n
            batch["attention_mask"][padding] = 0
            batch["nsp_labels"][padding] = -1
        return batch

    def iterate(self, start_step: int, put: Callable[[dict], dict], ahead: int = 2) -> Iterator[dict]:
        """Batches from start_step on, made and put on the devices by a background thread."""
        return prefetch((put(self.batch(step)) for step in itertools.count(start_step)), ahead)


def prefetch(items: Iterator, ahead: int) -> Iterator:
    """Runs `items` in a daemon thread, at most `ahead` items ahead; closing the consumer ends the
    thread and waits for it."""
    buffer: queue.Queue = queue.Queue(maxsize=ahead)
    closed = threading.Event()
    failure = []

    def offer(item) -> bool:
        """Puts item in the buffer once there is room; False when the consumer has closed."""
        while not closed.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not offer(item):
                    return
        except Exception as error:  # handed to the consumer, which raises it
            failure.append(error)
            offer(None)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        while True:
            item = buffer.get()
            if item is None and failure:
                raise failure[0]
            yield item
    finally:
        closed.set()
        # It ends after the item it is making. Left running, it could be inside jax's C++ code when
        # the interpreter exits, which aborts the process ("FATAL: exception not rethrown").
        producer.join(timeout=60)

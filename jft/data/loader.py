"""Prepared rows to batches: deterministic, index-based, split over hosts, prefetched to devices.

The rows of a split are dealt into `streams` streams, whole shards each (the largest shard first to
the stream with the fewest rows). Every global batch takes batch/streams rows from each stream, in
stream order, and position p of stream c is row permutation(epoch = p // m, c)[p % m], where m is
the smallest stream's row count (the longer streams leave their surplus out of an epoch, a new
surplus each epoch). So the batches are a fixed function of (seed, streams, step), whatever the
number of processes: a run saves the step, and a restart, on as many processes or others,
continues with exactly the next batch. A process reads only the shards of the streams its share
of the batch comes from: with one stream, every shard (a filesystem all hosts see); with as many
streams as processes, or a multiple, only its own (data copied to each host's own disk).

The rows are checked as checkpoints are, where metadata.json records each shard file's size and
SHA-256 (rows of an earlier jft record none and are not checked): the sizes of a process's files
when its loader is made, a shard's digests when it is first opened, before any of its rows go
into a batch; a damaged file is an error that names it and the `jft prepare` command that writes
it again.
"""

import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from jft.data.prepare import FIELDS, FORMAT, prepare_command
from jft.errors import JftError
from jft.files import file_sha256, read_json_object


class PretrainRows:
    """One split of a `jft prepare` directory; its shards are memory-mapped when first read."""

    def __init__(self, directory: str | Path, split: str = "train"):
        directory = Path(directory)
        meta_file = directory / "metadata.json"
        if not meta_file.is_file():
            raise JftError(f"{directory} is not a prepared corpus (no metadata.json); run `jft prepare` first.")
        self.metadata = read_json_object(meta_file)
        written = str(self.metadata.get("format"))
        if not written.startswith(FORMAT.split("/")[0] + "/"):
            raise JftError(
                f"{directory} is not a prepared corpus (its metadata.json is not one `jft prepare` writes); "
                "run `jft prepare` first."
            )
        if written != FORMAT:
            raise JftError(f"{directory} was written by another version of jft prepare; prepare it again.")
        self.directory, self.split = directory, split
        self.shards = self.metadata["splits"][split]["shards"]
        self.offsets = np.cumsum([0] + [s["rows"] for s in self.shards])
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def seq_len(self) -> int:
        return self.metadata["seq_len"]

    def shard_rows(self, shard: int) -> np.ndarray:
        """The global indices of one shard's rows."""
        return np.arange(self.offsets[shard], self.offsets[shard + 1], dtype=np.int64)

    def check_files(self, shards: Sequence[int], reader: str) -> None:
        """A clear error, before training starts, when a shard `reader` reads has no file here, or
        one of another size than jft prepare recorded (cut short, say, by a copy that failed)."""
        missing = [
            f"{self.shards[k]['prefix']}.{field}.npy"
            for k in shards
            for field in FIELDS
            if not (self.directory / f"{self.shards[k]['prefix']}.{field}.npy").is_file()
        ]
        if missing:
            raise JftError(
                f"{reader} reads {len(shards)} shards of the '{self.split}' split of {self.directory}, and "
                f"{len(missing)} of their files are not there (first: {missing[0]}); copy them there from the "
                "prepared directory (`jft prepare` output)."
            )
        for k in shards:
            for file, recorded in self._recorded(k):
                self._check_size(file, recorded)

    def _recorded(self, shard: int) -> list[tuple[Path, dict]]:
        """(file, {"bytes", "sha256"}) of the shard's files whose size and digest jft prepare
        recorded (none for rows of a jft that did not)."""
        prefix = self.shards[shard]["prefix"]
        files = self.shards[shard].get("files", {})
        return [(self.directory / f"{prefix}.{field}.npy", files[field]) for field in FIELDS if field in files]

    def _check_size(self, file: Path, recorded: dict) -> None:
        size = file.stat().st_size
        if size != recorded["bytes"]:
            raise self._damaged(file, f"{size:,} bytes, not the {recorded['bytes']:,} jft prepare wrote")

    def _damaged(self, file: Path, why: str) -> JftError:
        command = prepare_command(self.directory, self.metadata) or "jft prepare"
        return JftError(f"{file} is damaged ({why}); prepare the rows again: {command}")

    def _arrays(self, shard: int) -> dict[str, np.ndarray]:
        """The arrays of a shard, memory-mapped; the first time, its files are checked against the
        size and SHA-256 jft prepare recorded (read here, in the thread that asks for rows)."""
        if shard not in self._open:
            for file, recorded in self._recorded(shard):
                self._check_size(file, recorded)
                if file_sha256(file) != recorded["sha256"]:
                    raise self._damaged(file, "its SHA-256 is not the one jft prepare recorded")
            prefix = self.directory / self.shards[shard]["prefix"]
            self._open[shard] = {field: np.load(f"{prefix}.{field}.npy", mmap_mode="r") for field in FIELDS}
        return self._open[shard]

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows by global index: input_ids, token_type_ids, attention_mask, word_start [n, seq]; nsp_labels [n]."""
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        local = indices - self.offsets[shard]
        out = {field: np.zeros((len(indices), self.seq_len), np.int32) for field in FIELDS[:3]}
        out |= {field: np.zeros(len(indices), np.int32) for field in FIELDS[3:]}
        for k in np.unique(shard):
            here = shard == k
            for field, array in self._arrays(int(k)).items():
                out[field][here] = array[local[here]]
        seq = np.arange(self.seq_len)
        return {
            "input_ids": out["input_ids"],
            "token_type_ids": out["token_type_ids"],
            "attention_mask": (seq[None, :] < out["lengths"][:, None]).astype(np.int32),
            "word_start": out["word_start"].astype(bool),
            "nsp_labels": out["nsp_labels"],
        }


def stream_shards(shard_rows: Sequence[int], streams: int) -> list[list[int]]:
    """The shards (by index) of each of `streams` streams: the largest shard first to the stream
    with the fewest rows so far (ties: the lower stream); each stream's shards in their order."""
    dealt: list[list[int]] = [[] for _ in range(streams)]
    totals = [0] * streams
    for shard in sorted(range(len(shard_rows)), key=lambda k: -shard_rows[k]):
        stream = totals.index(min(totals))
        dealt[stream].append(shard)
        totals[stream] += shard_rows[shard]
    return [sorted(shards) for shards in dealt]


def dealt_streams(data: PretrainRows, streams: int, *, every_stream_rows: bool = True) -> list[list[int]]:
    """The shards of each of `streams` streams of a split (stream_shards); with
    every_stream_rows (training: every stream gives rows to every batch), an error when one of
    them would have none."""
    dealt = stream_shards([s["rows"] for s in data.shards], streams)
    if every_stream_rows and min(sum(data.shards[k]["rows"] for k in shards) for shards in dealt) == 0:
        if len(data) == 0:
            raise JftError(f"the '{data.split}' split of {data.directory} has no rows; use a larger corpus.")
        raise JftError(
            f"data.streams={streams} needs at least {streams} shards with rows, and the '{data.split}' split of "
            f"{data.directory} has {sum(1 for s in data.shards if s['rows'])}; use fewer streams, or prepare "
            "with a smaller --window-documents (each window of documents makes its own shards)."
        )
    return dealt


def process_files(directory: str | Path, streams: int, process_index: int, process_count: int) -> list[str]:
    """The files (names in `directory`) one of `process_count` processes reads with `streams`
    streams, a multiple of the process count: metadata, tokenizer and its streams' shards. The
    same errors as the run's loaders: streams that the training split cannot fill, shard files
    missing from `directory` or of another size than prepared."""
    if streams < 1 or process_count < 1 or streams % process_count or not 0 <= process_index < process_count:
        raise JftError(
            f"process {process_index} of {process_count} with {streams} streams: the streams must be a multiple of "
            "the processes (each reads whole streams), and the process one of 0 .. processes - 1."
        )
    files = ["metadata.json", "tokenizer.json"]
    per_process = streams // process_count
    for split in ("train", "eval"):  # the evaluation reads every row once: its streams may be empty
        data = PretrainRows(directory, split)
        dealt = dealt_streams(data, streams, every_stream_rows=split == "train")
        streams_here = range(process_index * per_process, (process_index + 1) * per_process)
        mine = [k for stream in streams_here for k in dealt[stream]]
        data.check_files(mine, f"process {process_index}")
        files += [f"{data.shards[k]['prefix']}.{field}.npy" for k in mine for field in FIELDS]
    return files


def check_streams(streams: int, global_batch: int) -> None:
    """A clear error when `streams` cannot take equal shares of every global batch."""
    if streams < 1 or global_batch % streams:
        raise JftError(
            f"data.streams={streams} does not divide the global batch of {global_batch} rows; use a divisor "
            "of it (1: one stream over every shard; the number of processes: each reads its own shards)."
        )


class Loader:
    """Batches of a global batch size; this process gets its contiguous share of every batch.

    batch(step) is a pure function of (seed, streams, step), so resuming at a step gives the same
    batches, on any number of processes. Each batch carries row_ids, the rows' positions in the
    global batch stream (for masking keys).
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
        streams: int = 1,
    ):
        """single_pass: one pass over each stream's rows, in order; positions past a stream's end
        are padding rows (no attention, no NSP label), so that an evaluation counts every row once."""
        if global_batch % process_count:
            raise JftError(f"global batch {global_batch} does not divide over {process_count} processes.")
        check_streams(streams, global_batch)
        self.data, self.global_batch, self.seed = data, global_batch, seed
        self.shuffle, self.single_pass = shuffle and not single_pass, single_pass
        self.local_batch = global_batch // process_count
        self.local_start = process_index * self.local_batch
        self.slot = global_batch // streams  # rows of each stream in a batch
        dealt = dealt_streams(data, streams, every_stream_rows=not single_pass)
        sizes = [sum(data.shards[k]["rows"] for k in shards) for shards in dealt]
        self.epoch_rows = min(sizes)  # of each stream
        self.passes = math.ceil(max(sizes) / self.slot)  # batches in a single pass
        mine = sorted({int(p) // self.slot for p in self.local_start + np.arange(self.local_batch)})
        self.shards = [k for stream in mine for k in dealt[stream]]  # the shards this process reads
        data.check_files(self.shards, f"process {process_index}")
        # Global row indices of the streams this process reads (the others stay unread).
        self.stream_rows = {
            c: np.concatenate([data.shard_rows(k) for k in dealt[c]] or [np.zeros(0, np.int64)]) for c in mine
        }
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def verify(self) -> None:
        """Checks every shard this process reads against its recorded SHA-256 now, not at first use."""
        for shard in self.shards:
            self.data._arrays(shard)

    def _order(self, stream: int, epoch: int) -> np.ndarray:
        cached = self._orders.get(stream)
        if cached is None or cached[0] != epoch:
            n = len(self.stream_rows[stream])
            order = np.random.default_rng([self.seed, epoch, stream]).permutation(n) if self.shuffle else np.arange(n)
            self._orders[stream] = cached = (epoch, order)
        return cached[1]

    def _stream_indices(self, stream: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global row indices at positions of one stream, and which positions are padding."""
        rows = self.stream_rows[stream]
        if self.single_pass:
            padding = positions >= len(rows)
            return rows[positions[~padding]], padding
        indices = np.empty(len(positions), np.int64)
        for epoch in np.unique(positions // self.epoch_rows):
            here = positions // self.epoch_rows == epoch
            indices[here] = rows[self._order(stream, int(epoch))[positions[here] % self.epoch_rows]]
        return indices, np.zeros(len(positions), bool)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step`."""
        in_batch = self.local_start + np.arange(self.local_batch, dtype=np.int64)
        streams, positions = in_batch // self.slot, step * self.slot + in_batch % self.slot
        indices, padding = np.empty(0, np.int64), np.zeros(self.local_batch, bool)
        for stream in np.unique(streams):
            here = streams == stream
            found, padding[here] = self._stream_indices(int(stream), positions[here])
            indices = np.concatenate([indices, found])
        batch = self.data.rows(indices)
        if padding.any():  # padding rows: all zeros, no NSP label
            full = {k: np.zeros((self.local_batch, *v.shape[1:]), v.dtype) for k, v in batch.items()}
            for key, value in batch.items():
                full[key][~padding] = value
            full["nsp_labels"][padding] = -1
            batch = full
        batch["row_ids"] = ((step * self.global_batch + in_batch) % np.iinfo(np.int32).max).astype(np.int32)
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

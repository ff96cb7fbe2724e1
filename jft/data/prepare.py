"""`jft prepare`: tokenize a corpus once into shards of fixed-length rows for pretraining.

Three modes:
- "pairs": [CLS] A [SEP] B [SEP] with next-sentence labels; half the B segments come from another
  document of the same window (label 1), as in the original BERT's create_pretraining_data,
  which draws them from the same input file.
- "packed": [CLS] tokens [SEP], a document's tokens cut into full rows, no NSP.
- "causal" (next-word models: GPT-2): the window's documents as one stream, each line ending in a
  newline and each document in <|endoftext|>, cut into full rows with no padding (but the last
  row of a window); word_start marks where each document (and each row) starts.

The corpus streams through in windows of a fixed number of documents; each window is tokenized,
made into rows and written as its own shards by one of several processes, so that memory depends
on the window and not on the corpus. Output directory: metadata.json, tokenizer.json, and per
split (train, eval), window w and shard k the arrays {split}-{w:06d}-{k:03d}.{field}.npy:
input_ids [rows, seq_len], token_type_ids, word_start (first piece of a word; for whole-word
masking), lengths [rows], nsp_labels [rows] (-1 in packed mode). Deterministic for a seed,
whatever the number of processes; written to out_dir + '.tmp' (where a stopped prepare resumes,
window by window) and renamed at the end. metadata.json names the data by content: each
source's size and SHA-256, and a fingerprint of the rows (SHA-256 of every array and of the
vocabulary), so that a run can tell the same data wherever it lies; each shard file's size and
SHA-256 ("files"), which a run checks when it opens the shard; every setting of the prepare
(sources by absolute path), so that `prepare_command` can say how to write the same rows again;
and unigram_entropy: the entropy (nats) of the train split's tokens that masking can pick, the
masked-LM loss of a model that knows token frequencies and nothing of context (pretraining
reports its held-out loss below it as context_gain). Each window's marker holds its counts of
those tokens, summed at the end, so a resumed prepare records the same entropy.

`jft prepare` and a pretraining's own prepare of data.corpus call `prepare` with the same
defaults (EVAL_FRACTION, SHORT_SEQ_PROB, ROWS_PER_SHARD, WINDOW_DOCUMENTS; jft.defaults takes
data.eval_fraction from here), so the same corpus, vocabulary, seq_len, mode and seed give the
same rows and fingerprint either way.
"""

import collections
import concurrent.futures
import ctypes
import dataclasses
import errno
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tqdm import tqdm

from jft.data.corpus import read_documents, source_identity, sources_of
from jft.data.tokenizer import (
    SpecialIds,
    end_of_text_id,
    load_tokenizer,
    special_ids,
    tokenizer_kind,
    vocabulary_fingerprint,
)
from jft.errors import JftError, RunFailed, choices
from jft.files import atomic_write, write_text
from jft.outputs import put_in_place

FORMAT = "jft-pretraining-rows/2"
MODES = ("pairs", "packed", "causal")
FIELDS = ("input_ids", "token_type_ids", "word_start", "lengths", "nsp_labels")
Segment = tuple[np.ndarray, np.ndarray]  # token ids, word-start flags
WINDOW_DOCUMENTS = 10000  # documents a window: what prepare holds at once, a worker
EVAL_FRACTION = 0.01  # documents held out for evaluation
SHORT_SEQ_PROB = 0.1  # pairs: rows drawn shorter than seq_len, as in BERT's
ROWS_PER_SHARD = 65536
# The special tokens masking never picks (jft.train.masking.MaskingConfig.for_vocabulary): left out
# of the unigram counts, with padding.
NEVER_MASKED = ("pad", "cls", "sep", "mask")
WINDOWS, SETTINGS = "windows", "settings.json"  # in the .tmp directory of a prepare under way


def prepare(
    sources: str | Sequence[str],
    vocab: str | Path | tokenizers.Tokenizer,
    out_dir: str | Path,
    *,
    seq_len: int = 128,
    mode: str = "pairs",
    seed: int = 0,
    eval_fraction: float = EVAL_FRACTION,
    short_seq_prob: float = SHORT_SEQ_PROB,
    rows_per_shard: int = ROWS_PER_SHARD,
    window_documents: int = WINDOW_DOCUMENTS,
    workers: int = 1,
    text_field: str = "text",
    tfds_data_dir: str | None = None,
    lowercase: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Tokenizes `sources` with `vocab` (a file, directory or tokenizer) into row shards in
    `out_dir`; returns the metadata written. out_dir must be new, empty, or earlier output of prepare
    (or, with overwrite, anything: replaced whole at the end).

    The corpus streams through in windows of `window_documents` documents, each made into rows
    (next-sentence negatives from within its window) and written as its own shards by one of
    `workers` processes (0: one a core), so memory depends on the window, not the corpus. A window
    is done when its marker is written: a prepare stopped or killed resumes with the windows not
    done (in out_dir + '.tmp'). The output is the same for a seed whatever the workers.
    """
    if mode not in MODES:
        raise JftError(f"mode '{mode}' is not one of {choices(MODES)}.")
    if seq_len < 8:
        raise JftError(f"seq_len {seq_len} is too short for pretraining rows; use at least 8 (128 is usual).")
    if not 0 <= eval_fraction < 1:
        raise JftError(f"eval_fraction is the share of documents held out, in [0, 1): got {eval_fraction}.")
    if window_documents < 1 or workers < 0:
        raise JftError(
            f"window_documents must be at least 1 and workers 0 (a core each) or more: {window_documents}, {workers}."
        )
    out_dir = Path(out_dir)
    check_output_directory(out_dir, overwrite)
    tokenizer = vocab if isinstance(vocab, tokenizers.Tokenizer) else load_tokenizer(vocab, lowercase=lowercase)
    specials = mode_special_ids(tokenizer, mode)  # the tokens the mode needs must be there, before any work
    sources = sources_of(sources)
    # By absolute path: metadata.json says where the text was, for prepare_command.
    identities = [{"source": _absolute(source), **source_identity(source)} for source in sources]
    start = time.perf_counter()
    options = dict(seq_len=seq_len, mode=mode, seed=seed, eval_fraction=eval_fraction, short_seq_prob=short_seq_prob)
    settings = {
        "format": FORMAT,
        **options,
        "rows_per_shard": rows_per_shard,
        "window_documents": window_documents,
        "text_field": text_field,
        "sources": [{k: v for k, v in identity.items() if k != "source"} for identity in identities],
        "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),  # vocabulary and normalizer
        "shard_files": "bytes and sha256",  # windows of an earlier jft recorded none: not resumed
        "unigram_counts": "train tokens masking can pick",  # the same: windows without counts are not resumed
    }
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    done = resumable(tmp_dir, settings)
    if done and progress:
        print(f"resuming the prepare in {tmp_dir}: {len(done)} windows done", flush=True)
    job = WindowJob(tokenizer.to_str(), str(tmp_dir), options, rows_per_shard)
    documents = read_documents(sources, text_field=text_field, tfds_data_dir=tfds_data_dir)
    windows = (
        (index, window)
        for index, window in enumerate(iter(lambda: list(itertools.islice(documents, window_documents)), []))
        if index not in done
    )
    # disable=None: a bar only on a terminal (in a log file it would be thousands of updates)
    try:
        with tqdm(desc="preparing", unit=" windows", disable=None if progress else True) as bar:
            for marker in _run_windows(job, windows, workers or os.cpu_count() or 1):
                done[marker["window"]] = marker
                bar.update(1)
    except JftError:  # bad input: the corpus must change, and with it the windows; none are kept
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    except OSError as error:
        raise write_failed(error, tmp_dir) from None
    markers = [done[index] for index in sorted(done)]
    num_tokens = sum(marker["tokens"] for marker in markers)
    if num_tokens == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise JftError(f"the corpus {', '.join(sources)} holds no text; give a file with at least one non-empty line.")
    fingerprint = hashlib.sha256(f"{FORMAT} {mode} {seq_len} {vocabulary_fingerprint(tokenizer)}".encode())
    for marker in markers:
        fingerprint.update(bytes.fromhex(marker["digest"]))
    metadata = {
        "format": FORMAT,
        "mode": mode,
        "seq_len": seq_len,
        "vocab_size": tokenizer.get_vocab_size(),
        "special_ids": specials,
        "seed": seed,
        "sources": identities,
        "fingerprint": fingerprint.hexdigest(),
        "documents": sum(marker["documents"] for marker in markers),
        "tokens": num_tokens,
        "seconds": round(time.perf_counter() - start, 3),
        "window_documents": window_documents,
        "eval_fraction": eval_fraction,
        "short_seq_prob": short_seq_prob,
        "rows_per_shard": rows_per_shard,
        "text_field": text_field,
        "tfds_data_dir": None if tfds_data_dir is None else os.path.abspath(tfds_data_dir),
        "unigram_entropy": unigram_entropy(markers, tokenizer.get_vocab_size()),
        "splits": {
            split: {
                "rows": sum(marker["splits"][split]["rows"] for marker in markers),
                "shards": [shard for marker in markers for shard in marker["splits"][split]["shards"]],
            }
            for split in ("train", "eval")
        },
    }
    try:
        atomic_write(tmp_dir / "tokenizer.json", lambda path: tokenizer.save(str(path)))
        write_text(tmp_dir / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    except OSError as error:
        raise write_failed(error, tmp_dir) from None
    shutil.rmtree(tmp_dir / WINDOWS, ignore_errors=True)
    (tmp_dir / SETTINGS).unlink()
    put_in_place(tmp_dir, out_dir)
    return metadata


def none_held_out(metadata: dict) -> str | None:
    """The warning for prepared rows that hold nothing out for evaluation though eval_fraction asks
    for some (too few documents: a text without blank lines is one document); None otherwise."""
    if metadata["eval_fraction"] <= 0 or metadata["splits"]["eval"]["rows"]:
        return None
    documents = metadata["documents"]
    return (
        f"no rows held out for evaluation: eval_fraction {metadata['eval_fraction']} of {documents:,} "
        f"document{'s' if documents != 1 else ''} is none, so a run reports no held-out loss. Documents are "
        "separated by blank lines (a line is a sentence): a text without blank lines is one document."
    )


def tokens_left_out(metadata: dict) -> str | None:
    """The warning for rows that hold less than half the corpus's tokens (in mode pairs a line, a
    sentence, longer than a row is cut to fit one, the rest of it unused); None otherwise."""
    capacity = sum(split["rows"] for split in metadata["splits"].values()) * metadata["seq_len"]
    if capacity >= metadata["tokens"] / 2:
        return None
    return (
        f"the rows hold at most {capacity:,} of the corpus's {metadata['tokens']:,} tokens: in mode "
        f"{metadata['mode']} a line (a sentence) longer than seq_len {metadata['seq_len']} is cut to fit one row, and "
        "the rest of it is not used. Put one sentence on a line, or prepare with --mode packed."
    )


def mode_special_ids(tokenizer: tokenizers.Tokenizer, mode: str) -> dict[str, int]:
    """The special tokens the rows of `mode` are made with: BERT's [PAD], [UNK], [CLS], [SEP],
    [MASK]; for "causal", <|endoftext|> ("eot"). A vocabulary without them is an error."""
    if mode == "causal":
        return {"eot": end_of_text_id(tokenizer)}
    return vars(special_ids(tokenizer))


def unigram_entropy(markers: Sequence[dict], vocab_size: int) -> float | None:
    """The entropy in nats of the tokens counted in the windows' markers (the train split's tokens
    that the objective predicts: that masking can pick, or every one for next-word); None when
    there are none."""
    counts = np.zeros(vocab_size, np.int64)
    for marker in markers:
        for token, count in marker["unigram_counts"].items():
            counts[int(token)] += count
    return entropy_of_counts(counts)


def entropy_of_counts(counts: np.ndarray) -> float | None:
    """-Σ p log p (nats) of the distribution of `counts`; None when they are all 0."""
    total = counts.sum()
    if total == 0:
        return None
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def prepare_command(directory: Path, metadata: dict) -> str | None:
    """The `jft prepare` command that writes the rows of `directory` (whose metadata.json holds
    `metadata`) again, over it: the same sources, tokenizer and settings, so the same rows; None
    for rows of an earlier jft, whose metadata does not record every setting."""
    settings = ("seq_len", "mode", "seed", "eval_fraction", "short_seq_prob", "rows_per_shard", "text_field")
    if any(key not in metadata for key in (*settings, "window_documents", "tfds_data_dir")):
        return None
    directory = Path(os.path.abspath(directory))
    command = ["jft", "prepare", *(source["source"] for source in metadata["sources"])]
    command += ["--vocab", str(directory / "tokenizer.json"), "--out", str(directory)]
    for key in settings + ("window_documents",):
        command += [f"--{key.replace('_', '-')}", str(metadata[key])]
    if metadata["tfds_data_dir"]:
        command += ["--tfds-data-dir", metadata["tfds_data_dir"]]
    return shlex.join(command)


def _absolute(source: str) -> str:
    return source if source.startswith("tfds:") else os.path.abspath(source)


def write_failed(error: OSError, tmp_dir: Path) -> Exception:
    """What a write of prepare into tmp_dir that failed is: one line that says what is kept."""
    if error.filename is None or tmp_dir not in Path(error.filename).parents:
        return error  # not a write of prepare (reading the corpus): as it is
    when = "once there is room" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "once they can be written"
    return RunFailed(
        f"{error.strerror or error}: {error.filename}; the windows done so far stay in {tmp_dir}, and the same "
        f"command resumes from them {when}."
    )


class _HashingFile:
    """A file object that counts and hashes what is written through it."""

    def __init__(self, file):
        self.file, self.bytes, self.sha256 = file, 0, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)


def _save_array(array: np.ndarray, record: dict, path: Path) -> None:
    """np.save to path; record gets the file's "bytes" and "sha256", computed as it is written."""
    with path.open("wb") as file:  # a file object: np.save would add ".npy" to a temporary name
        hashing = _HashingFile(file)
        np.save(hashing, array)
    record.update(bytes=hashing.bytes, sha256=hashing.sha256.hexdigest())


def resumable(tmp_dir: Path, settings: dict) -> dict[int, dict]:
    """The windows done by an earlier prepare with the same settings in tmp_dir, by index; any
    other content of tmp_dir is removed and it starts empty."""
    try:
        same = json.loads((tmp_dir / SETTINGS).read_text()) == settings
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        try:
            (tmp_dir / WINDOWS).mkdir(parents=True)
            write_text(tmp_dir / SETTINGS, json.dumps(settings, indent=1))
        except OSError as error:
            raise write_failed(error, tmp_dir) from None
        return {}
    done = {}
    for path in (tmp_dir / WINDOWS).glob("*.json"):
        marker = json.loads(path.read_text())
        done[marker["window"]] = marker
    return done


@dataclasses.dataclass(frozen=True)
class WindowJob:
    """What every window of one prepare shares (sent to the worker processes)."""

    tokenizer_json: str
    out_dir: str
    options: dict  # seq_len, mode, seed, eval_fraction, short_seq_prob
    rows_per_shard: int


def _run_windows(job: WindowJob, windows: Iterator[tuple[int, list]], workers: int) -> Iterator[dict]:
    """Each window's marker once its shards are written, in window order: here for one worker,
    else in `workers` processes, at most two windows each read ahead (memory stays bounded)."""
    if workers == 1:
        for index, window in windows:
            yield prepare_window(job, index, window)
        return
    context = multiprocessing.get_context("spawn")  # not fork: the caller may hold threads (jax)
    # Started by this thread, on submit: it outlives them (their parent-death signal is its end).
    pool = concurrent.futures.ProcessPoolExecutor(workers, context, initializer=_one_thread, initargs=(os.getpid(),))
    with pool:
        pending: collections.deque = collections.deque()
        for index, window in windows:
            pending.append(pool.submit(prepare_window, job, index, window))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _one_thread(parent: int | None = None) -> None:
    """A worker process tokenizes on one thread: the processes are the parallelism; and it ends
    with its parent (the process `parent`)."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if parent is not None:
        _die_with_parent(parent)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """On Linux, this process gets SIGKILL when its parent ends: a prepare killed (SIGKILL, the
    out-of-memory killer) leaves no worker behind, waiting forever for windows. Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)


@functools.cache
def _tokenizer(tokenizer_json: str) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_str(tokenizer_json)


def prepare_window(job: WindowJob, index: int, window: list) -> dict:
    """Rows of one window of documents, written as its shards in job.out_dir, then its marker
    (written last, atomically: a window without one is prepared again)."""
    tokenizer, options = _tokenizer(job.tokenizer_json), job.options
    causal = options["mode"] == "causal"
    documents = list(_tokenized_documents(tokenizer, window, progress=False, line_end="\n" if causal else ""))
    rng = random.Random(options["seed"] + index * 2**32)  # window 0: the seed itself
    splits = _split_documents(documents, options["eval_fraction"], rng)
    out_dir = Path(job.out_dir)
    ids = None if causal else special_ids(tokenizer)
    digest = hashlib.sha256()
    marker = {"window": index, "documents": len(documents), "tokens": sum(len(s[0]) for d in documents for s in d)}
    marker["splits"] = {}
    vocab_size = tokenizer.get_vocab_size()
    counts = np.zeros(vocab_size, np.int64)  # of the train split's tokens
    for split, docs in splits.items():
        if options["mode"] == "pairs":
            rows = _pair_rows(docs, options["seq_len"], options["short_seq_prob"], ids, rng)
        elif causal:
            rows = _causal_rows(docs, options["seq_len"], end_of_text_id(tokenizer))
        else:
            rows = _packed_rows(docs, options["seq_len"], ids)
        prefix = f"{split}-{index:06d}"
        marker["splits"][split] = _write_split(
            out_dir,
            prefix,
            rows,
            options["seq_len"],
            vocab_size,
            job.rows_per_shard,
            digest,
            counts if split == "train" else None,
        )
    if not causal:
        counts[[getattr(ids, name) for name in NEVER_MASKED]] = 0
    marker["unigram_counts"] = {str(token): int(counts[token]) for token in np.flatnonzero(counts)}
    marker["digest"] = digest.hexdigest()
    write_text(out_dir / WINDOWS / f"{index:06d}.json", json.dumps(marker))  # after its shards are on disk
    return marker


def check_output_directory(
    out_dir: Path, overwrite: bool = False, ours: Callable[[Path], bool] | None = None, what: str = "rows"
) -> None:
    """prepare writes only into a new or empty directory, or over its own earlier output (ours:
    is_prepared unless given), or with overwrite over anything."""
    if out_dir.exists() and not out_dir.is_dir():
        raise JftError(f"--out {out_dir} is a file; give a directory for the prepared {what}.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (ours or is_prepared)(out_dir) and not overwrite:
        raise JftError(
            f"--out {out_dir} is a directory that holds other files; prepare writes only into a new or "
            "empty directory (or over its own earlier output), so nothing of yours is replaced; add --overwrite "
            "to replace it whole."
        )


def is_prepared(directory: Path) -> bool:
    """Whether directory holds the output of `jft prepare` (of any version)."""
    try:
        return json.loads((directory / "metadata.json").read_text())["format"].startswith("jft-pretraining-rows/")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _tokenized_documents(
    tokenizer: tokenizers.Tokenizer, documents, progress: bool, docs_per_batch: int = 512, line_end: str = ""
) -> Iterator[list[Segment]]:
    """Documents as lists of (token ids, word-start flags), encoded many documents at a time;
    line_end is added to each line (sentence) first."""
    continuation = continuation_tokens(tokenizer)
    documents = iter(documents)
    # disable=None: a bar only on a terminal (in a log file it would be thousands of updates)
    with tqdm(desc="tokenizing", unit=" docs", disable=None if progress else True) as bar:
        while batch := list(itertools.islice(documents, docs_per_batch)):
            lines = [s + line_end for doc in batch for s in doc]
            encodings = iter(tokenizer.encode_batch(lines, add_special_tokens=False))
            for document in batch:
                segments = []
                for _ in document:
                    ids = np.array(next(encodings).ids, np.int32)
                    if len(ids):
                        starts = ~continuation[ids]
                        starts[0] = True  # a line begins a word ('Ġ' and '▁' mark only words after a space)
                        segments.append((ids, starts))
                if segments:
                    yield segments
            bar.update(len(batch))


def continuation_tokens(tokenizer: tokenizers.Tokenizer) -> np.ndarray:
    """[vocab_size] bool: the tokens that continue a word (whole-word masking keeps them with its
    first token). WordPiece marks them ('##ing'); byte-level BPE and Unigram mark the others, a
    word's first token, with the space before it ('Ġthe', '▁the'); special tokens begin words."""
    vocab = tokenizer.get_vocab()
    continuation = np.zeros(tokenizer.get_vocab_size(), bool)
    kind = tokenizer_kind(tokenizer)
    if kind == "wordpiece":
        continuing = [i for token, i in vocab.items() if token.startswith("##")]
    else:
        space = "Ġ" if kind == "bytelevel" else "▁"
        special = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}
        continuing = [i for token, i in vocab.items() if not token.startswith(space) and token not in special]
    continuation[continuing] = True
    return continuation


def _split_documents(documents, eval_fraction: float, rng: random.Random) -> dict[str, list]:
    """Holds out whole documents for evaluation (at least one when eval_fraction > 0 and there are two)."""
    if eval_fraction <= 0 or len(documents) < 2:
        return {"train": documents, "eval": []}
    held = {i for i in range(len(documents)) if rng.random() < eval_fraction}
    if not held:
        held = {rng.randrange(len(documents))}
    return {
        "train": [d for i, d in enumerate(documents) if i not in held],
        "eval": [d for i, d in enumerate(documents) if i in held],
    }


def _concat(segments: Sequence[Segment]) -> Segment:
    return np.concatenate([s[0] for s in segments]), np.concatenate([s[1] for s in segments])


def _row(parts: Sequence[tuple[Segment, int]], ids: SpecialIds, nsp_label: int) -> tuple:
    """[CLS] part [SEP] (part [SEP]) with token types; special tokens count as word starts."""
    tokens, types, starts = [np.array([ids.cls], np.int32)], [np.zeros(1, np.int32)], [np.ones(1, bool)]
    for (segment_ids, segment_starts), token_type in parts:
        tokens += [segment_ids, np.array([ids.sep], np.int32)]
        types += [np.full(len(segment_ids) + 1, token_type, np.int32)]
        starts += [segment_starts, np.ones(1, bool)]
    return np.concatenate(tokens), np.concatenate(types), np.concatenate(starts), nsp_label


def _truncate_pair(a: Segment, b: Segment, max_tokens: int, rng: random.Random) -> tuple[Segment, Segment]:
    """Trims the pair to max_tokens as BERT's create_pretraining_data does, one token at a time from
    the longer segment (b on ties) and from a random end, but counted instead of looped: time does
    not grow with the excess (a 10 MB line without sentence breaks is one segment)."""
    excess = len(a[0]) + len(b[0]) - max_tokens
    if excess <= 0:
        return a, b
    difference = len(a[0]) - len(b[0])
    even = max(excess - abs(difference), 0)  # removals once both are as long: b first, then in turn
    from_a = min(max(difference, 0), excess) + even // 2
    from_b = excess - from_a
    draws = np.random.default_rng(rng.getrandbits(64))
    return _trim(a, from_a, draws), _trim(b, from_b, draws)


def _trim(segment: Segment, count: int, draws: np.random.Generator) -> Segment:
    """segment without `count` tokens, each from the front or the back with even odds."""
    front = int(draws.binomial(count, 0.5)) if count else 0
    end = len(segment[0]) - (count - front)
    return segment[0][front:end], segment[1][front:end]


def _pair_rows(documents, seq_len: int, short_seq_prob: float, ids: SpecialIds, rng: random.Random):
    """Sentence pairs with NSP labels (0: B follows A, 1: B is from another document)."""
    max_tokens = seq_len - 3
    for doc_index, document in enumerate(documents):
        target = rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens
        chunk: list[Segment] = []
        length, i = 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i][0])
            if i == len(document) - 1 or length >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = _concat(chunk[:a_end])
                if len(chunk) == 1 or rng.random() < 0.5:
                    label, b = 1, _random_continuation(documents, doc_index, target - len(a[0]), rng)
                    i -= len(chunk) - a_end  # the unused sentences start the next chunk
                else:
                    label, b = 0, _concat(chunk[a_end:])
                a, b = _truncate_pair(a, b, max_tokens, rng)
                if len(a[0]) and len(b[0]):
                    yield _row([(a, 0), (b, 1)], ids, label)
                chunk, length = [], 0
            i += 1


def _random_continuation(documents, doc_index: int, target: int, rng: random.Random) -> Segment:
    """Sentences from a random other document (the same one only if there is no other)."""
    other = doc_index
    for _ in range(10):
        other = rng.randrange(len(documents))
        if other != doc_index:
            break
    document = documents[other]
    segments, length = [], 0
    for segment in document[rng.randrange(len(document)) :]:
        segments.append(segment)
        length += len(segment[0])
        if length >= target:
            break
    return _concat(segments)


def _packed_rows(documents, seq_len: int, ids: SpecialIds):
    """Each document's tokens cut into rows of seq_len - 2, framed by [CLS] and [SEP]."""
    width = seq_len - 2
    for document in documents:
        tokens, starts = _concat(document)
        for begin in range(0, len(tokens), width):
            yield _row([((tokens[begin : begin + width], starts[begin : begin + width]), 0)], ids, -1)


def _causal_rows(documents, seq_len: int, eot: int):
    """The documents as one stream, each followed by <|endoftext|>, cut into rows of seq_len (the
    last one shorter); word_start is True where a document or a row starts."""
    if not documents:
        return
    pieces = [np.append(_concat(document)[0], np.int32(eot)).astype(np.int32) for document in documents]
    tokens = np.concatenate(pieces)
    starts = np.zeros(len(tokens), bool)
    starts[np.cumsum([0] + [len(piece) for piece in pieces[:-1]])] = True
    for begin in range(0, len(tokens), seq_len):
        row_starts = starts[begin : begin + seq_len].copy()
        row_starts[0] = True
        row = tokens[begin : begin + seq_len]
        yield row, np.zeros(len(row), np.int32), row_starts, -1


def _write_split(
    out_dir: Path,
    name: str,
    rows,
    seq_len: int,
    vocab_size: int,
    rows_per_shard: int,
    fingerprint,
    counts: np.ndarray | None = None,
) -> dict:
    """Writes rows as shards named {name}-{k:03d}; adds every array written to `fingerprint` (a hashlib hash),
    and (given counts, [vocab_size]) each token id's occurrences in the rows, padding aside.
    Each shard: its prefix, rows, and files: {field: {"bytes", "sha256"}} of its .npy files."""
    id_dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max else np.int32
    shards, buffer = [], []

    def flush():
        if not buffer:
            return
        n = len(buffer)
        arrays = {
            "input_ids": np.zeros((n, seq_len), id_dtype),
            "token_type_ids": np.zeros((n, seq_len), np.int8),
            "word_start": np.zeros((n, seq_len), bool),
            "lengths": np.array([len(r[0]) for r in buffer], np.int32),
            "nsp_labels": np.array([r[3] for r in buffer], np.int8),
        }
        for k, (tokens, types, starts, _) in enumerate(buffer):
            arrays["input_ids"][k, : len(tokens)] = tokens
            arrays["token_type_ids"][k, : len(tokens)] = types
            arrays["word_start"][k, : len(tokens)] = starts
        if counts is not None:
            np.add(counts, np.bincount(np.concatenate([r[0] for r in buffer]), minlength=vocab_size), out=counts)
        prefix = f"{name}-{len(shards):03d}"
        files: dict[str, dict] = {field: {} for field in FIELDS}
        for field in FIELDS:
            atomic_write(out_dir / f"{prefix}.{field}.npy", functools.partial(_save_array, arrays[field], files[field]))
            fingerprint.update(f"{prefix}.{field} {arrays[field].dtype} {arrays[field].shape}".encode())
            fingerprint.update(arrays[field].tobytes())
        shards.append({"prefix": prefix, "rows": n, "files": files})
        buffer.clear()

    for row in rows:
        buffer.append(row)
        if len(buffer) == rows_per_shard:
            flush()
    flush()
    return {"rows": sum(s["rows"] for s in shards), "shards": shards}

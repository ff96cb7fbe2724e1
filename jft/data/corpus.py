"""Unlabeled text in: documents as lists of sentences, from text files, JSONL or TFDS.

Several sources: a comma-separated string or a list; globs (`books/*.txt`, `shards/**/*.jsonl`)
stand for the files they match, sorted.
- *.txt: one sentence per line, a blank line between documents (the original BERT tooling's format).
- *.jsonl: one document per line, its text under `text_field`; lines of the text are sentences,
  and a text on one line is split after . ! ? followed by a space.
- tfds:NAME[:SPLIT]: a TFDS dataset read with tfds.data_source (array_record, no TensorFlow needed).
"""

import glob
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from jft.errors import JftError, choices
from jft.files import file_sha256, jsonl_objects, text_lines

Document = list[str]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def read_documents(
    sources: str | Sequence[str], *, text_field: str = "text", tfds_data_dir: str | None = None
) -> Iterator[Document]:
    """Documents from one or more sources (comma-separated in a string), in order.

    tfds_data_dir: where TFDS datasets are prepared (default: TFDS's own, ~/tensorflow_datasets).
    """
    sources = sources_of(sources)
    if not sources:
        raise JftError("no corpus given; name a .txt or .jsonl file, or tfds:NAME[:SPLIT].")
    for source in sources:
        if source.startswith("tfds:"):
            yield from _tfds_documents(source.removeprefix("tfds:"), text_field, tfds_data_dir)
            continue
        path = _corpus_file(source)
        if path.suffix.lower() == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        else:
            yield from _text_documents(path)


def sources_of(sources: str | Sequence[str]) -> list[str]:
    """The sources named by a comma-separated string or a sequence; a glob (*, ?, [...], ** for
    any depth) stands for the files it matches, in sorted order."""
    named = [s for s in sources.split(",") if s] if isinstance(sources, str) else list(sources)
    found = []
    for source in named:
        if source.startswith("tfds:") or not any(c in source for c in "*?["):
            found.append(source)
            continue
        matches = sorted(path for path in glob.glob(source, recursive=True) if Path(path).is_file())
        if not matches:
            raise JftError(f"no corpus file matches {source}; check the pattern (quote it, so the shell leaves it).")
        found += matches
    return found


def source_identity(source: str) -> dict:
    """What a data source is, by content, not by the path it was typed as: a file's size and
    SHA-256; a TFDS dataset's name and split (TFDS names a dataset by content and version)."""
    if source.startswith("tfds:"):
        return {"tfds": source.removeprefix("tfds:")}
    path = _corpus_file(source)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _corpus_file(source: str) -> Path:
    """The file a source names; a JftError when it is a folder or is not there."""
    path = Path(source)
    if path.is_dir():
        raise JftError(
            f"{path} is a folder; name the text files in it with a quoted glob, e.g. '{path}/*.txt' "
            f"('{path}/**/*.txt' for its subfolders too)."
        )
    if not path.is_file():
        raise JftError(f"corpus file not found: {path}")
    return path


def split_sentences(text: str) -> Document:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [s for s in _SENTENCE_END.split(lines[0]) if s]
    return lines


def _text_documents(path: Path) -> Iterator[Document]:
    document: Document = []
    for _, line in text_lines(path):
        line = line.strip()
        if line:
            document.append(line)
        elif document:
            yield document
            document = []
    if document:
        yield document


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    for number, record in jsonl_objects(path):
        if text_field not in record:
            raise JftError(
                f"{path}:{number} has no field '{text_field}' (fields: {choices(sorted(record))}); set "
                "data.text_field (jft prepare --text-field) to the field that holds the text."
            )
        document = split_sentences(str(record[text_field]))
        if document:
            yield document


def _tfds_documents(spec: str, text_field: str, data_dir: str | None) -> Iterator[Document]:
    records, _ = tfds_records(spec, data_dir)
    for record in records:
        if text_field not in record:
            raise JftError(
                f"TFDS dataset '{spec}' has no field '{text_field}' (fields: {choices(sorted(record))}); set "
                "data.text_field (jft prepare --text-field) to the field that holds the text."
            )
        text = record[text_field]
        document = split_sentences(text.decode("utf-8") if isinstance(text, bytes) else str(text))
        if document:
            yield document


def tfds_records(spec: str, data_dir: str | None) -> tuple[Iterable[dict], object]:
    """Records of a prepared TFDS dataset and its features: tfds.data_source (array_record, no
    TensorFlow needed; it also has len() and indexing), or tfds.load for other file formats when
    TensorFlow is installed."""
    import importlib.util

    import tensorflow_datasets as tfds

    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        return source, source.dataset_info.features
    except Exception as error:  # tfds raises several types for a dataset it cannot open this way
        if importlib.util.find_spec("tensorflow") is not None:
            dataset, info = tfds.load(name, split=split, data_dir=data_dir, download=False, with_info=True)
            return tfds.as_numpy(dataset), info.features
        raise JftError(
            f"cannot open TFDS dataset '{name}' split '{split}' ({error}). Build it first, in array_record "
            f"format, where the network is reachable (`tfds build {name} --file_format=array_record`), and "
            "give its folder as data.tfds_data_dir (--tfds-data-dir); or install TensorFlow to read tfrecord datasets."
        ) from error

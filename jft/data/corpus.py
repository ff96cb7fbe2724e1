"""Unlabeled text in: documents as lists of sentences, from text files, JSONL or TFDS.

- *.txt: one sentence per line, a blank line between documents (the original BERT tooling's format).
- *.jsonl: one document per line, its text under `text_field`; lines of the text are sentences,
  and a text on one line is split after . ! ? followed by a space.
- tfds:NAME[:SPLIT]: a TFDS dataset read with tfds.data_source (array_record, no TensorFlow needed).
"""

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from jft.errors import JftError

Document = list[str]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def read_documents(sources: str | Sequence[str], *, text_field: str = "text") -> Iterator[Document]:
    """Documents from one or more sources (comma-separated in a string), in order."""
    if isinstance(sources, str):
        sources = [s for s in sources.split(",") if s]
    if not sources:
        raise JftError("no corpus given; name a .txt or .jsonl file, or tfds:NAME[:SPLIT].")
    for source in sources:
        if source.startswith("tfds:"):
            yield from _tfds_documents(source.removeprefix("tfds:"), text_field)
            continue
        path = Path(source)
        if not path.is_file():
            raise JftError(f"corpus file not found: {path}")
        if path.suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        else:
            yield from _text_documents(path)


def split_sentences(text: str) -> Document:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [s for s in _SENTENCE_END.split(lines[0]) if s]
    return lines


def _text_documents(path: Path) -> Iterator[Document]:
    document: Document = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if line:
                document.append(line)
            elif document:
                yield document
                document = []
    if document:
        yield document


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise JftError(f"{path}:{number} is not valid JSON ({error.msg}).") from None
            if text_field not in record:
                raise JftError(f"{path}:{number} has no field '{text_field}' (fields: {sorted(record)}).")
            document = split_sentences(str(record[text_field]))
            if document:
                yield document


def _tfds_documents(spec: str, text_field: str) -> Iterator[Document]:
    import tensorflow_datasets as tfds

    name, _, split = spec.partition(":")
    try:
        source = tfds.data_source(name, split=split or "train", download=False)
    except Exception as error:  # tfds raises several types for a dataset that is not prepared
        raise JftError(
            f"cannot open TFDS dataset '{name}' ({error}). Prepare it first with `tfds build {name}` "
            "(array_record format) where the network is reachable, or point TFDS_DATA_DIR at it."
        ) from error
    for record in source:
        text = record[text_field]
        document = split_sentences(text.decode("utf-8") if isinstance(text, bytes) else str(text))
        if document:
            yield document

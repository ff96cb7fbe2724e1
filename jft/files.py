"""Files in and out with errors that name the file: every file jft writes is written whole or not
at all (atomic_write), JSON read with the line of a fault, and the permissions a user expects."""

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jft.errors import JftError

_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def decode_utf8(data: bytes, source: str, first_line: int = 1) -> str:
    """data as text (a UTF-8 byte-order mark dropped); a JftError naming the line of a bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        compression = next((name for magic, name in _COMPRESSED.items() if data.startswith(magic)), None)
        if first_line == 1 and compression:
            raise JftError(
                f"{source} is {compression}-compressed; decompress it first (e.g. `{compression} -dk {source}`)."
            ) from None
        line = first_line + data.count(b"\n", 0, error.start)
        raise JftError(
            f"{source}:{line} is not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def read_text(file: Path) -> str:
    """A UTF-8 text file, whole; JftErrors that name the file (and the line of a bad byte)."""
    try:
        return decode_utf8(file.read_bytes(), str(file))
    except FileNotFoundError:
        raise JftError(f"{file} does not exist.") from None
    except IsADirectoryError:
        raise JftError(f"{file} is a directory, not a file.") from None
    except OSError as error:
        raise JftError(f"cannot read {file}: {error.strerror}.") from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) of a UTF-8 text file, read as it goes; a bad byte is
    an error naming its line."""
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            yield number, decode_utf8(raw, str(path), number).rstrip("\r\n")


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; errors name the file and line."""
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise JftError(f"{path}:{number} is not valid JSON ({error.msg}, column {error.colno}).") from None
        if not isinstance(value, dict):
            raise JftError(f"{path}:{number} is a JSON {json_type(value)}, not an object {{...}}.")
        yield number, value


def json_type(value: Any) -> str:
    """The JSON name of a value json.loads made (null, boolean, number, string, array, object)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {list: "array", dict: "object", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def read_json(file: Path, what: str = "") -> Any:
    """The JSON value in file; a JftError naming the file (and the line) when it cannot be read."""
    label = f"{what} {file}" if what else str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JftError(f"{label} does not exist.") from None
    except UnicodeDecodeError as error:
        raise JftError(f"{label} is not UTF-8 text (byte {error.start}); is it the right file?") from None
    except OSError as error:
        raise JftError(f"cannot read {label}: {error.strerror}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise JftError(
            f"{label} is not valid JSON: {error.msg.removesuffix(' at')} at line {error.lineno}, column {error.colno}."
        ) from None


def read_json_object(file: Path, what: str = "") -> dict:
    """read_json for a file that must hold a JSON object ({...})."""
    value = read_json(file, what)
    if not isinstance(value, dict):
        label = f"{what} {file}" if what else str(file)
        raise JftError(f"{label} holds a JSON {json_type(value)}, not an object {{...}}.")
    return value


def appended_records(file: Path, required: tuple[str, ...], warn: bool = True) -> list[dict]:
    """The records of a JSONL file jft appends to as it goes (metrics.jsonl, members.jsonl), read
    as a crash or a hand may leave it: a torn last line (no line end: the writer was stopped) is
    left out, and so is a line that is not a JSON object with the `required` keys, each with a
    warning that names the file and line (when warn: one process of several says it). A missing
    file has no records."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return []
    records, lines = [], data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and all(key in record for key in required):
            records.append(record)
        elif not warn:
            continue
        elif number == len(lines):
            _warn(f"{file}:{number}: the last line was cut short (a stopped writer); it is left out.")
        else:
            _warn(f"{file}:{number} is not a record of this file ({line[:60]!r}...); it is left out.")
    return records


def cut_torn_line(file: Path) -> None:
    """Cuts a torn last line (a stopped writer's) off a file jft appends to, with a warning, so
    that the next line appended starts on a line of its own."""
    try:
        out = file.open("rb+")
    except FileNotFoundError:
        return
    with out:
        size = out.seek(0, os.SEEK_END)
        if size == 0:
            return
        out.seek(size - 1)
        if out.read(1) == b"\n":
            return
        out.seek(0)
        whole = out.read().rfind(b"\n") + 1
        _warn(f"{file}: its last line was cut short (a stopped writer); it is removed.")
        out.truncate(whole)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def atomic_write(file: Path, write: Callable[[Path], Any]) -> None:
    """Writes a file whole or not at all: write(temporary) fills a temporary file beside it, which
    is flushed to the disk (fsync) and renamed over `file`, and the directory is flushed too, so a
    reader, or the disk after a crash or a power cut, holds the old content or the new, never half."""
    file = Path(file)
    temporary = file.with_name(f".{file.name}.tmp")
    try:
        write(temporary)
        fsync(temporary)
        os.replace(temporary, file)
    except OSError as error:  # a write's own error (a full disk) names no file: name it
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(file)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)
    fsync(file.parent)


def fsync(path: Path) -> None:
    """Flushes a file, or a directory's entries (a rename in it), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(file: Path, text: str) -> None:
    """Writes UTF-8 text whole or not at all (atomic_write)."""
    atomic_write(file, lambda path: path.write_text(text, encoding="utf-8"))


def write_json(file: Path, value: Any) -> None:
    """Writes JSON whole or not at all (atomic_write); floats that are not finite become null
    (JSON has no NaN)."""
    write_text(file, json.dumps(finite_or_null(value), indent=2, allow_nan=False) + "\n")


def finite_or_null(value: Any) -> Any:
    """value with every float that is not finite replaced by None, in nested dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def file_sha256(file: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read a piece at a time."""
    digest = hashlib.sha256()
    with Path(file).open("rb") as reading:
        while chunk := reading.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def usual_permissions(file: Path) -> None:
    """Gives a file the permissions a new file gets under the user's umask (some writers, such
    as safetensors', create files readable by their owner only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(file, 0o666 & ~umask)

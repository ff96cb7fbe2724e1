"""Outputs a command owns: a command that writes (predict, eval --out, export, convert, init,
vocab) loses nothing of the user's and nothing of a run's.

It refuses, before any work:
- a path that is one of its inputs, lies inside an input directory, or holds an input;
- a path inside a run directory (one with run.json): a run's files are its training's own;
- an existing directory with other content, unless it is the command's own earlier output of the
  same kind (the marker file it wrote there says so) or --overwrite is given; an existing file
  that is not its own earlier output (predict's: its marker beside it, .NAME.jft-output.json,
  names the same run and the file's SHA-256), unless --overwrite is given.

A directory is written aside (a hidden sibling) and swapped in once it is whole: on Linux one
atomic exchange, so a reader that opens the path finds the old directory or the new, never a mix
or nothing, and a reader that holds the old files keeps reading them. A write that fails (a full
disk) leaves what was there as it was.
"""

import contextlib
import ctypes
import datetime
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from jft import __version__
from jft.errors import JftError
from jft.files import file_sha256, fsync, read_json_object, write_json, write_text

RUN_FILE = "run.json"  # what makes a directory a run directory (jft.train.rundir)
MARKER = ".jft-output.json"  # in a directory a command wrote: its kind and the jft that wrote it
OVERWRITE = "add --overwrite to replace it whole"


def check(path: str | Path, inputs: Iterable[str | Path], what: str, example: str) -> Path:
    """path, absolute, once it is known not to be an input, inside one, holding one, or inside a
    run directory. what: the argument that named it (e.g. "--out"); example: a name to suggest."""
    path = check_inputs(path, inputs, what, example)
    for directory in (path, *path.parents):
        if (directory / RUN_FILE).is_file():
            raise JftError(
                f"{what} {path} is inside the run directory {directory}, whose files its training writes; "
                f"write outside it, e.g. {directory.parent / example}."
            )
    return path


def check_inputs(path: str | Path, inputs: Iterable[str | Path], what: str, example: str) -> Path:
    """path, absolute, once it is known not to be one of `inputs`, inside one or holding one."""
    path = Path(os.path.realpath(path))
    for given in inputs:
        source = Path(os.path.realpath(given))
        if path == source or (source.is_dir() and source in path.parents):
            where = "is" if path == source else "is inside"
            raise JftError(
                f"{what} {path} {where} an input of this command ({given}); write to another path, "
                f"e.g. {source.parent / example}."
            )
        if path in source.parents:
            raise JftError(f"{what} {path} holds an input of this command ({given}); write to another path.")
    return path


def output_file(
    path: str | Path,
    *,
    inputs: Iterable[str | Path],
    overwrite: bool,
    ours: Callable[[Path], bool],
    example: str,
    flag: str = "--output",
) -> Path:
    """The path of a file output (flag: --output), checked as `check` does; an existing file is
    replaced only when ours(file) says it is this command's earlier output, or with overwrite. Its
    folder is made."""
    path = check(path, inputs, flag, example)
    if path.is_dir():
        raise JftError(f"{flag} {path} is a directory; give a file path, e.g. {path / example}.")
    if path.exists() and not overwrite and not ours(path):
        raise JftError(
            f"{flag} {path} is a file this command did not write from these inputs, or one changed since it did; give "
            f"a new path, or {OVERWRITE}."
        )
    blocking = next((folder for folder in path.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise JftError(f"cannot write {flag} {path}: {blocking} is a file, not a folder.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def file_marker(path: Path) -> Path:
    """The marker beside a file a command wrote (.NAME.jft-output.json): its kind, source and SHA-256."""
    return path.with_name(f".{path.name}{MARKER}")


def owns_file(path: Path, kind: str, source: str) -> bool:
    """Whether file `path` is `kind` from `source` as a command wrote it: its marker says so, and
    the file is as it was written (its SHA-256)."""
    found = _marker_file(file_marker(path))
    return (found.get("kind"), found.get("source")) == (kind, source) and found.get("sha256") == file_sha256(path)


def write_owned_file(path: Path, text: str, kind: str, source: str) -> None:
    """Writes text to path (whole) and its marker, by which `owns_file` knows it again."""
    write_text(path, text)
    marker = {"kind": kind, "source": source, "sha256": file_sha256(path), "jft": __version__, "written": _now()}
    write_json(file_marker(path), marker)


@contextlib.contextmanager
def output_directory(
    path: str | Path,
    kind: str,
    source: str,
    *,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    what: str = "--out",
) -> Iterator[Path]:
    """A directory to write `kind` (e.g. "a Hugging Face model") made from `source` (what it is
    made from: a run directory, a model, a corpus) into, checked as `check` does and for what it
    holds: nothing, or this kind from this source; the caller fills the directory yielded, which
    replaces `path` whole when the block ends without an error, and is removed when it fails."""
    path = check(path, inputs, what, f"{Path(path).name}-new")
    if path.exists() and not path.is_dir():
        raise JftError(f"{what} {path} is a file; give a directory.")
    content = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    found = _marker(path) if content else {}
    if content and not overwrite and (found.get("kind"), found.get("source")) != (kind, source):
        listed = ", ".join(content[:3]) + (", ..." if len(content) > 3 else "")
        held = f"{found['kind']} of {found.get('source')}" if found.get("kind") else f"other files ({listed})"
        raise JftError(f"{what} {path} already holds {held}; give a new or empty directory, or {OVERWRITE}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    staging = path.with_name(f".{path.name}.jft-new-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        write_json(staging / MARKER, {"kind": kind, "source": source, "jft": __version__, "written": _now()})
        put_in_place(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _marker(directory: Path) -> dict:
    """What a jft command wrote in directory (its marker: kind and source), or {}."""
    return _marker_file(directory / MARKER)


def _marker_file(file: Path) -> dict:
    try:
        return read_json_object(file)
    except JftError:
        return {}


def put_in_place(new: Path, path: Path) -> None:
    """Puts directory `new` at `path` (on the same filesystem) in one step where the system can:
    what was there is removed once it is no longer at `path`."""
    if not path.exists():
        os.rename(new, path)
    elif not _exchange(new, path):  # no atomic exchange here: a moment without `path`
        aside = path.with_name(f".{path.name}.jft-old-{os.getpid()}")
        os.rename(path, aside)
        os.rename(new, path)
        os.rename(aside, new)
    shutil.rmtree(new, ignore_errors=True)
    fsync(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where it cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a filesystem or kernel without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove_leftovers(path: Path) -> None:
    """Removes what an earlier write of path left when its process was killed."""
    for leftover in path.parent.glob(f".{path.name}.jft-*-*"):
        pid = leftover.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

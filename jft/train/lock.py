"""run.lock: one run at a time in a run directory.

A run holds the lock (an flock, which the kernel lets go when the process dies) from its first
check to its end; a second run on the same directory is refused before it reads or writes
anything else, naming the holder.
"""

import contextlib
import datetime
import fcntl
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

from jft.errors import JftError, RunStopped
from jft.train.parallel import agree

LOCK = "run.lock"


class Lock:
    """run.lock: held with flock while a run lives (the kernel lets go when the process dies), and
    naming the holder (pid, host, start, command) so that a refusal can say who holds it."""

    def __init__(self, workdir: Path):
        self.file = workdir / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                content = os.pread(fd, 4096, 0)
                os.close(fd)
                pid = _holder(content).get("pid", "PID")
                raise JftError(
                    f"{self.file.parent} is in use by another run ({_describe_holder(content)}); wait for it to "
                    f"finish, or stop it (`kill {pid}`: it saves and exits), or use another --workdir."
                ) from None
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file between our open and flock: try again
                break
            os.close(fd)
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            print(
                f"{self.file.parent}: took over the lock of a run that is no longer running "
                f"({_describe_holder(previous)})",
                file=sys.stderr,
                flush=True,
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.file.unlink()
            os.close(self.fd)
            self.fd = None


def _holder(content: bytes) -> dict:
    try:
        holder = json.loads(content)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe_holder(content: bytes) -> str:
    holder = _holder(content)
    if not {"pid", "host", "started", "command"} <= set(holder):
        return "holder unknown"
    return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"


@contextlib.contextmanager
def hold(workdir: Path, check: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Holds workdir for a run (process 0 of a multi-process run holds it for all, and every
    process learns at once whether it could): check(workdir) may refuse it first, then it is
    created if needed and run.lock taken; at the end the run lets go and removes the directory,
    and the parents made for it, again if it created them and left nothing in them."""
    lock, created, refusal = None, [], None
    if jax.process_index() == 0:
        try:
            if check is not None:
                check(workdir)
            created, lock = _take(workdir)
        except JftError as error:
            refusal = error
    agree(refusal)
    try:
        with _stop_on_signals():
            yield
    finally:
        if lock is not None:
            lock.release()
            _remove_if_empty(created)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT stop a run outside its training loop (which first saves: StopRequest) at
    once, as a RunStopped that lets go of the workdir on its way out (not a silent kill that
    leaves run.lock behind)."""
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
        yield  # several processes: a process waiting in a collective could not run the handler
        return

    def stop(signum, frame):
        raise RunStopped(signal.Signals(signum), None, "what it finished is kept")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _take(workdir: Path) -> tuple[list[Path], Lock]:
    """(the folders made for workdir: it and its parents that were not there; its lock, held)."""
    if workdir.exists() and not workdir.is_dir():
        raise JftError(f"--workdir {workdir} is a file; give a directory.")
    created = _missing_folders(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise JftError(f"cannot create --workdir {workdir}: {error.strerror}.") from None
    lock = Lock(workdir)
    try:
        lock.acquire()
    except OSError as error:
        _remove_if_empty(created)
        raise JftError(f"cannot write in --workdir {workdir}: {error.strerror}.") from None
    except JftError:
        _remove_if_empty(created)
        raise
    return created, lock


def _missing_folders(workdir: Path) -> list[Path]:
    """The folders that making workdir creates, outermost first: each of its paths' prefixes not
    there yet ('..' names no new folder: a/../b makes a and b)."""
    prefixes = (Path(*workdir.parts[:i]) for i in range(1, len(workdir.parts) + 1))
    return [folder for folder in prefixes if folder.name != ".." and not folder.exists()]


def _remove_if_empty(created: list[Path]) -> None:
    """Removes the folders made for a workdir, innermost first, each while empty: a run that wrote
    nothing leaves no folders behind."""
    for folder in reversed(created):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

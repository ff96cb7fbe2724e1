"""Orbax checkpoints of a run: periodic asynchronous saves, keep-N, atomic, resumable.

A checkpoint at step s holds two items:
- "state": the TrainState (params, optimizer state, step, skipped counts) and the run's rng key;
- "meta": JSON: the loader position (pretraining), or the metric, score and step (best/), and a
  digest of every array of the state: SHA-256 when the state is in host memory, else a
  fingerprint computed on its devices (`fingerprints`): on a GPU or TPU a save neither copies the
  state to the host for jft nor hashes it there (Orbax copies it, then writes in the background).
What the run is (config, model, data) lives in the run directory's run.json (jft.train.rundir).
Orbax writes each step to a temporary directory and renames it to the step's number when
complete, so the latest step that exists is always a complete one, even after SIGKILL. A state
with a non-finite value is never saved; a restore checks every array against its checksum and
falls back to the newest checkpoint that passes, setting the damaged ones aside (heal).
"""

import contextlib
import errno
import hashlib
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jft.errors import JftError, RunFailed
from jft.params import check_finite, key_path
from jft.train.parallel import first_copy


class DamagedCheckpoint(Exception):
    """A checkpoint whose files cannot be read (data missing, cut short or garbled), or whose
    arrays do not match their checksums."""


def is_damage(error: BaseException) -> bool:
    """Whether a failed read means the checkpoint's own files are damaged, rather than a fault of
    this machine or this moment (memory, permissions, an I/O error, a timeout), which is no reason
    to set a checkpoint aside."""
    if isinstance(error, (MemoryError, PermissionError, TimeoutError, ConnectionError, InterruptedError)):
        return False
    if isinstance(error, OSError) and error.errno not in (None, errno.ENOENT, errno.ENOTDIR):
        return False
    # tensorstore's status codes and the system's words for such faults, in its error messages
    transient = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED")
    system = ("Input/output error", "Cannot allocate memory", "Permission denied", "No space left")
    return not any(word in str(error) for word in transient + system)


def fingerprints(tree: Any) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """Of every array of a tree (on its devices, or on the host), by path: a fingerprint, and
    (values not finite, values) for the floating ones, computed where the arrays are by one
    compiled program, so that a save copies nothing to the host for them.

    A fingerprint is the dtype, the shape and two sums mod 2^32 of the array's bits as unsigned
    integers, each value weighted by an odd number of its position: a change of any one value
    changes the first sum; other damage (a zeroed block, bytes out of place) passes both with a
    chance of about 2^-64."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    sums = _fingerprint_sums([value for _, value in leaves])
    out, counts = {}, {}
    for (keys, value), (first, second, not_finite) in zip(leaves, jax.device_get(sums)):
        path = key_path(keys)
        out[path] = f"{np.dtype(value.dtype)} {tuple(value.shape)} {int(first):08x}{int(second):08x}"
        if jnp.issubdtype(value.dtype, jnp.floating):
            counts[path] = (int(not_finite), int(np.size(value)))
    return out, counts


@jax.jit
def _fingerprint_sums(arrays: list) -> list:
    sums = []
    for array in arrays:
        if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
            array = jax.random.key_data(array)
        bits = jnp.ravel(array)
        width = bits.dtype.itemsize * 8
        if width > 8:  # the bits as unsigned integers: of their own width, or a 64-bit value's two halves
            bits = jax.lax.bitcast_convert_type(bits, jnp.dtype(f"uint{min(width, 32)}"))
        bits = jnp.ravel(bits).astype(jnp.uint32)
        position = jnp.arange(bits.size, dtype=jnp.uint32)
        first = jnp.sum(bits * (2 * position + 1), dtype=jnp.uint32)
        mixed = (bits << 16) | (bits >> 16)
        second = jnp.sum(mixed * (position * jnp.uint32(0x9E3779B1) | 1), dtype=jnp.uint32)
        finite = jnp.isfinite(array) if jnp.issubdtype(array.dtype, jnp.floating) else jnp.ones((), bool)
        sums.append((first, second, jnp.sum(~finite)))
    return sums


def sha256_checksums(tree: Any) -> dict[str, str]:
    """SHA-256 of every array of a tree in host memory (NumPy, or jax arrays on CPU devices), by path."""
    out = {}
    for keys, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.ascontiguousarray(value)
        digest = hashlib.sha256(f"{value.dtype} {value.shape} ".encode())
        digest.update(value.tobytes())
        out[key_path(keys)] = digest.hexdigest()
    return out


def _in_host_memory(tree: Any) -> bool:
    """Whether every array of tree is whole in host memory: NumPy, or a copy on each CPU device. A
    state split over the devices (shard_state) is saved as it lies, each process writing its pieces."""
    return all(
        not isinstance(x, jax.Array) or (x.is_fully_replicated and all(d.platform == "cpu" for d in x.devices()))
        for x in jax.tree.leaves(tree)
    )


class _OrbaxNotices(logging.Filter):
    """Leaves out Orbax's warnings that are no news to a user: that a reader opened a directory
    read-only (what jft asked for: `jft eval`, `predict`, `export`), and that a step folder has no
    metadata file (a save or a removal a kill cut short: jft checks each checkpoint it reads, and
    says itself what it sets aside)."""

    NOTICES = ("Given directory is read only", "Metadata file does not exist")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOTICES)


logging.getLogger("absl").addFilter(_OrbaxNotices())


class Checkpoints:
    """The checkpoints in one directory (a run's checkpoints/ or best/): <directory>/<step>/{state, meta}.

    read_only: a reader of another run's directory (init_from, eval, predict, export, inspect),
    which creates, cleans up and deletes nothing there: a save in progress in a live run keeps
    its temporary folder."""

    def __init__(
        self,
        directory: str | Path,
        *,
        every_steps: int = 1000,
        keep: int = 3,
        asynchronous: bool = True,
        read_only: bool = False,
    ):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else every_steps,  # what Orbax sets for a reader, with a warning
            max_to_keep=None if read_only else keep,
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=not read_only,  # what a killed save of this run left behind
            read_only=read_only,
            create=not read_only,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts saving a state (device arrays, one copy of each: Runner.replica; or host arrays)
        if `step` is due, or if forced: Orbax copies it to the host and writes it in the
        background when asynchronous. A state with a non-finite value is refused. meta gains the
        arrays' digests (module docstring)."""
        if not force and not self.manager.should_save(step):
            return False
        what = f"the state to save at step {step} in {self.directory}"
        if _in_host_memory(state):  # NumPy reads it where it is, and hashes faster than XLA:CPU
            state = first_copy(state)
            check_finite(state, what)
            meta = {**meta, "checksums": sha256_checksums(state)}
        else:
            found, finite_counts = fingerprints(state)
            check_finite(state, what, finite_counts)
            meta = {**meta, "fingerprints": found}
        self._check_space(step, sum(np.dtype(x.dtype).itemsize * np.size(x) for x in jax.tree.leaves(state)))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            return self.manager.save(step, args=args, force=force)
        except Exception as error:  # a failed write: Orbax and tensorstore raise several types
            self.manager.wait_until_finished()
            for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
            raise RunFailed(
                f"cannot save the checkpoint of step {step} in {self.directory} ({_first_line(error)}); "
                f"{self._newest()}."
            ) from None

    def _check_space(self, step: int, size: int) -> None:
        """Refuses a save the disk has no room for (Orbax's background writers cannot fail cleanly)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        need = int(size * 1.1) + (1 << 18)  # the arrays, and Orbax's metadata
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise RunFailed(
                f"no room to save the checkpoint of step {step}: it needs about {need / 1e6:.1f} MB and "
                f"{self.directory} has {free / 1e6:.1f} MB free; {self._newest()}. Free {(need - free) / 1e6:.1f} MB "
                "or more on that disk and run the same command to resume."
            )

    def _newest(self) -> str:
        steps = self.manager.all_steps()
        return f"the newest saved checkpoint is step {max(steps)}" if steps else "nothing is saved yet"

    def restore(self, abstract_state: Any = None, step: int | None = None) -> tuple[Any, dict]:
        """The state and meta of a step (by default the latest), checked against its checksums;
        DamagedCheckpoint when it cannot be read or does not match.

        abstract_state: a tree like the saved state (its arrays set the restored types); None
            restores the saved tree as nested dicts of NumPy arrays, whatever devices saved it.
        """
        step = self.latest_step() if step is None else step
        with self._reading(step):
            saved = self.manager.item_metadata(step)["state"]
        if abstract_state is None:  # np.empty takes no memory until the restore writes it
            abstract_state = jax.tree.map(lambda leaf: np.empty(leaf.shape, leaf.dtype), saved)
        else:
            self._check_layout(step, saved, abstract_state)
        with self._reading(step):
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
        state, meta = restored["state"], restored["meta"]
        if isinstance(meta, dict) and "fingerprints" in meta:
            expected, found = meta["fingerprints"], fingerprints(state)[0]
        elif isinstance(meta, dict) and "checksums" in meta:
            expected, found = meta["checksums"], sha256_checksums(state)
        else:
            raise DamagedCheckpoint("has no checksums in its meta")
        wrong = sorted(path for path in set(found) | set(expected) if found.get(path) != expected.get(path))
        if wrong:
            raise DamagedCheckpoint(f"does not match its checksums ({len(wrong)} arrays, e.g. {wrong[0]})")
        return state, meta

    @contextlib.contextmanager
    def _reading(self, step: int):
        """Reads of a checkpoint's files: a failure is DamagedCheckpoint when the files are damaged,
        else RunFailed, which moves nothing (is_damage)."""
        try:
            yield
        except Exception as error:  # Orbax, tensorstore and json raise many types for damaged files
            _ignore_closed_event_loops()
            what = f"{type(error).__name__}: {_first_line(error)}"
            if not is_damage(error):
                raise RunFailed(
                    f"cannot read the checkpoint {self.directory / str(step)} ({what}); this is not damage to its "
                    "files, so nothing was moved. Fix the cause and run the same command again."
                ) from None
            raise DamagedCheckpoint(f"cannot be read ({what})") from None

    def _check_layout(self, step: int, saved: Any, abstract_state: Any) -> None:
        """A JftError (not damage: nothing is moved) when the saved state's arrays are not the
        ones abstract_state has: another version of jft's layout, or another model's."""

        def arrays(tree) -> dict[str, tuple]:
            leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
            return {key_path(k): (tuple(v.shape), np.dtype(v.dtype).name) for k, v in leaves}

        ours, theirs = arrays(abstract_state), arrays(saved)
        if not theirs:  # the metadata of the arrays is gone: a file is missing, not another layout
            raise DamagedCheckpoint("cannot be read (no metadata of its arrays)")
        differences = [
            f"{path}: "
            + (
                "not expected"
                if path not in ours
                else "missing"
                if path not in theirs
                else f"saved {theirs[path][1]}{list(theirs[path][0])}, expected {ours[path][1]}{list(ours[path][0])}"
            )
            for path in sorted(set(ours) | set(theirs))
            if ours.get(path) != theirs.get(path)
        ]
        if differences:
            more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
            raise JftError(
                f"the checkpoint {self.directory / str(step)} holds a state of another layout than this jft trains "
                f"({'; '.join(differences[:3])}{more}): it was written by another version of jft or for another "
                "model; nothing was moved. Use the version of jft that wrote it, or start a new --workdir."
            )

    def restore_newest_good(self, abstract_state: Any = None, *, set_aside: Path | None = None):
        """(state, meta, step) of the newest checkpoint that restores and matches its checksums, or
        None when there is none. Each damaged one is reported on stderr and, with set_aside (a
        directory outside this one), moved there; else left where it is."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(abstract_state, step)
                return state, meta, step
            except DamagedCheckpoint as damage:
                where = "left as it is"
                if set_aside is not None:
                    target = _free_name(set_aside / f"{self.directory.name}-{step}")
                    _sync("jft: checked a damaged checkpoint")  # every process has tried to read it
                    if jax.process_index() == 0:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.move(self.directory / str(step), target)
                    _sync("jft: set a damaged checkpoint aside")
                    self.manager.reload()
                    where = f"set aside as {target}"
                print(
                    f"warning: the checkpoint {self.directory / str(step)} {damage}; {where}; trying an earlier one",
                    file=sys.stderr,
                    flush=True,
                )
        return None

    def wait(self) -> None:
        """Blocks until a save in flight is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def saved_steps(directory: str | Path) -> list[int]:
    """The steps of the complete checkpoints in directory, read from the file system only."""
    directory = Path(directory)
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def restore_latest(directory: str | Path, missing: str) -> tuple[Any, dict]:
    """The state (as saved, nested dicts) and meta of the newest good checkpoint in directory (a
    damaged newer one is reported and left as it is: this reads another run's directory).

    missing: the error message when it holds no complete checkpoint (nothing is created then).
    """
    if not saved_steps(directory):
        raise JftError(missing)
    checkpoints = Checkpoints(directory, asynchronous=False, read_only=True)
    try:
        restored = checkpoints.restore_newest_good()
    finally:
        checkpoints.close()
    if restored is None:
        raise JftError(
            f"every checkpoint in {directory} is damaged (see the warnings above); nothing can be read. Copy the run "
            "again from where it came from."
        )
    return restored[:2]


def _ignore_closed_event_loops() -> None:
    """After a failed read, Orbax's reader threads keep scheduling callbacks on event loops they
    have closed: dozens of "Event loop is closed" tracebacks on stderr, about nothing. Drop those."""
    previous = sys.unraisablehook
    if getattr(previous, "ignores_closed_event_loops", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            previous(unraisable)

    hook.ignores_closed_event_loops = True
    sys.unraisablehook = hook


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""


def _free_name(path: Path) -> Path:
    """path, or path-2, path-3, ... whichever does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate

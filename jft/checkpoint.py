"""Orbax checkpoints of a run: periodic asynchronous saves, keep-N, atomic, resumable.

A checkpoint at step s holds two items:
- "state": the TrainState (params, optimizer state, step, skipped count) and the run's rng key;
- "meta": JSON: the loader position (pretraining), or the metric, score and step (best/).
What the run is (config, model, data) lives in the run directory's run.json (jft.rundir).
Orbax writes each step to a temporary directory and renames it to the step's number when
complete, so the latest step that exists is always a complete one, even after SIGKILL.
"""

import signal
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jft.errors import JftError, RunStopped


class Checkpoints:
    """The checkpoints in one directory (a run's checkpoints/ or best/): <directory>/<step>/{state, meta}."""

    def __init__(self, directory: str | Path, *, every_steps: int = 1000, keep: int = 3, asynchronous: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            max_to_keep=keep,
            enable_async_checkpointing=asynchronous,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts saving (in the background when asynchronous) if `step` is due, or if forced."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self.manager.save(step, args=args, force=force)

    def restore_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, abstract_state: Any = None, step: int | None = None) -> tuple[Any, dict]:
        """The state and meta of a step, by default the latest.

        abstract_state: a tree like the saved state (its arrays set the restored types); None
        restores the saved tree as nested dicts.
        """
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["meta"]

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
    """The state (as saved, nested dicts) and meta of the latest checkpoint in directory.

    missing: the error message when it holds no complete checkpoint (nothing is created then).
    """
    if not saved_steps(directory):
        raise JftError(missing)
    checkpoints = Checkpoints(directory, asynchronous=False)
    try:
        return checkpoints.restore()
    finally:
        checkpoints.close()


class StopRequest:
    """Turns SIGTERM and SIGINT into a flag the loop checks after each step (then it saves, and
    `stopped` gives the RunStopped to raise)."""

    def __init__(self):
        self.requested = False
        self.signal = signal.SIGTERM  # what a process reports when another process of the run was signalled

    def __enter__(self):
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signal.Signals(signum)

    def stopped(self, step: int) -> RunStopped:
        return RunStopped(self.signal, step)

    def agreed(self, sync_point: bool) -> bool:
        """Whether every process should stop now. One process decides at once; several processes
        agree at sync points only (a collective over hosts), so that all stop after the same step."""
        if jax.process_count() == 1:
            return self.requested
        if not sync_point:
            return False
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

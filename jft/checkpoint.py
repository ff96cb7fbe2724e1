"""Orbax checkpoints of a run: periodic asynchronous saves, keep-N, atomic, resumable.

A checkpoint at step s holds two items:
- "state": the TrainState (params, optimizer state, step, skipped count) and the run's rng key;
- "meta": JSON with the loader position, the model config and the run config, so that a restart
  can check it is the same model and a later stage can rebuild the model from it.
Orbax writes each step to a temporary directory and renames it when complete, so the latest
step that exists is always a complete one, even after SIGKILL.
"""

import dataclasses
import signal
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jft.errors import JftError
from jft.models import BertConfig
from jft.models.config import ARCHITECTURE_FIELDS


class Checkpoints:
    """The checkpoints of one workdir: <workdir>/checkpoints/<step>/{state, meta}."""

    def __init__(self, workdir: str | Path, *, every_steps: int = 1000, keep: int = 3, asynchronous: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
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


def restore_latest(workdir: str | Path, missing: str) -> tuple[Any, dict]:
    """The state (as saved, nested dicts) and meta of a workdir's latest checkpoint.

    missing: the error message when the workdir holds no complete checkpoint.
    """
    checkpoints = Checkpoints(workdir, asynchronous=False)
    try:
        if checkpoints.latest_step() is None:
            raise JftError(missing)
        return checkpoints.restore()
    finally:
        checkpoints.close()


def check_same_model(meta: dict, config: BertConfig, workdir: str | Path) -> None:
    """A clear error when a workdir's checkpoint was made for another model."""
    saved = meta.get("model", {})
    current = dataclasses.asdict(config)
    differences = [
        f"{name}: checkpoint {saved.get(name)}, config {current[name]}"
        for name in ARCHITECTURE_FIELDS
        if saved.get(name) != current[name]
    ]
    if differences:
        raise JftError(
            f"{workdir} holds a checkpoint of another model ({'; '.join(differences)}). "
            "Use a new --workdir, or the config that made the checkpoint."
        )


class StopRequest:
    """Turns SIGTERM and SIGINT into a flag the loop checks after each step (then it saves and exits)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

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

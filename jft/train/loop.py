"""The one training loop: pretraining, fine-tuning and the sweep's populations all run it.

    state = train_loop(state, batches, step=compiled_step, rng=rng, runner=runner, start=0,
                            total_steps=1000, log_every=50, log=TrainingLog(...),
                            evaluate=..., eval_every=500, save=..., save_every=500)

Each step: run the compiled step on the next batch, report its work (`log.step`), and every
log_every steps (and at the last) fetch the metrics to the host, the loop's one host sync, for
`log.train`. At eval_every steps and the last one, `evaluate(step, state)` runs; it returns True
to stop early. At save_every steps, at the last step, on an early stop and on a stop request
(SIGTERM, SIGINT), `save(step, state, final)` runs; a stop request then ends the loop with
RunStopped. Several processes agree on a stop request at every step (StopRequest), so all stop
after the same step however far apart log steps are.
"""

import collections
import signal
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jft.errors import RunStopped
from jft.train.parallel import Runner


class Reporter(Protocol):
    """What the loop tells about the steps (jft.train.log.TrainingLog is one)."""

    def step(self, step: int, work: int) -> None: ...

    def train(self, step: int, metrics: dict[str, Any]) -> None: ...


def train_loop(
    state: Any,
    batches: Iterator[tuple[int, Any]],
    *,
    step: Callable,
    rng: Any,
    runner: Runner,
    start: int,
    total_steps: int,
    log_every: int,
    log: Reporter,
    evaluate: Callable[[int, Any], bool] | None = None,
    eval_every: int = 0,
    save: Callable[[int, Any, bool], None] | None = None,
    save_every: int = 0,
    kept: str = "saved a checkpoint",
) -> Any:
    """Runs steps start+1 .. total_steps (see the module docstring) and returns the last state.
    batches yields (work, device batch): the examples or rows a step computes, for rates. kept:
    what a stopped run says it kept. The batches are closed at the end (a prefetching thread stops)."""
    try:
        with StopRequest() as stop:
            for number in range(start + 1, total_steps + 1):
                work, batch = next(batches)
                state, metrics = step(state, batch, rng)
                log.step(number, work)
                last = number == total_steps
                logged = number % log_every == 0 or last
                if logged:
                    log.train(number, runner.get(metrics))  # the one host sync
                stopping = stop.agreed()
                if stopping and not logged:
                    log.train(number, runner.get(metrics))
                early = False
                if evaluate is not None and ((eval_every and number % eval_every == 0) or last):
                    early = evaluate(number, state) and not last
                if save is not None and (last or stopping or early or (save_every and number % save_every == 0)):
                    save(number, state, last or stopping or early)
                if stopping:
                    raise stop.stopped(number, kept)
                if early:
                    break
    finally:
        getattr(batches, "close", lambda: None)()
    return state


class StopRequest:
    """Turns SIGTERM and SIGINT into a request the loop checks after every step; it then saves and
    raises `stopped()`.

    One process stops at once. Several agree at every step on whether any of them was signalled:
    each step launches a small collective of the flags and reads the one launched LAG steps
    before, which the devices have long finished, so nothing waits; every process reads the same
    result at the same step, and all stop after it."""

    LAG = 2

    def __init__(self):
        self.requested = False
        self.signal = signal.SIGTERM  # what a process reports when another process of the run was signalled
        self._launched: collections.deque = collections.deque()
        self._any = None

    def __enter__(self):
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signal.Signals(signum)

    def stopped(self, step: int, kept: str = "saved a checkpoint") -> RunStopped:
        return RunStopped(self.signal, step, kept)

    def agreed(self) -> bool:
        """Whether every process should stop after this step."""
        if jax.process_count() == 1:
            return self.requested
        self._launched.append(self._any_process(self.requested))
        if len(self._launched) <= self.LAG:
            return False
        return bool(np.asarray(self._launched.popleft()))

    def _any_process(self, flag: bool) -> jax.Array:
        """Whether any process's flag is set: a replicated scalar, computed on the devices."""
        if self._any is None:
            mesh = Mesh(np.array(jax.devices()), ("processes",))
            self._flags = NamedSharding(mesh, P("processes"))
            self._any = jax.jit(lambda flags: flags.max(), out_shardings=NamedSharding(mesh, P()))
        local = np.full(len(jax.local_devices()), flag, np.int32)
        return self._any(jax.make_array_from_process_local_data(self._flags, local))

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

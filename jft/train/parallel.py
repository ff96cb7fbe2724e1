"""Where a per-device step runs: jax.pmap, jax.jit(jax.shard_map(...)) over a mesh, or plain jit.

The step is written once, in the pmap style, with collectives over the axis 'batch'. A `Runner`
compiles it for one backend and moves state and batches to where that backend wants them:
- "shard_map": state is one global, replicated array per leaf; the batch is split over a 1-D
  mesh of all devices (of all processes). check_vma=False keeps pmap's semantics: with the
  default check_vma=True, the gradient of a replicated input arrives already summed over the
  devices and the step's pmean would make the update n times too large.
- "pmap": state and rng carry a leading device axis (replicated); the batch is split over local devices.
- "jit": one device, no collectives.

shard_state (ZeRO / FSDP) splits the training state over the devices instead of copying it:
"optimizer" the optimizer's moments (ZeRO-1), "all" the parameters, moments and θ_ref too (FSDP).
Each such leaf is split along its largest dimension that divides by the device count (a stacked
layers' array along a layer's own dimension, so the scanned layer loop gathers one layer at a
time). The step is then jitted in the global view: written as for one device (axis_name=None),
over global arrays, XLA's partitioner inserting the all-gathers and reduce-scatters; its
mathematics is one device's, and its random draws (the masking's and crops' by partitionable
threefry, each device drawing its own rows'; dropout's by each row's place) are the same whatever
the number of devices.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.jax_utils
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from jft.errors import JftError, choices
from jft.models.layers import global_view

AXIS = "batch"  # the devices' axis: steps average over it (jax.lax.pmean(..., AXIS))
BACKENDS = ("shard_map", "pmap", "jit")
SHARD_STATE = ("none", "optimizer", "all")
# The state's fields each shard_state splits (by name anywhere in a leaf's path).
SHARDED_FIELDS = {"none": (), "optimizer": ("opt_state",), "all": ("params", "opt_state", "reference")}


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Starts jax.distributed for a multi-process run (no-op for one process); call before any JAX work.

    num_processes=0: jax.distributed finds the processes itself, from the TPU pod's metadata or
    SLURM's variables (one process a GPU there). On CPU, cross-process collectives go through gloo.
    """
    if num_processes < 0 or not 0 <= process_id < max(num_processes, 1):
        raise JftError(
            f"parallel.process_id={process_id} with parallel.num_processes={num_processes}: the count is 0 (found "
            "by jax.distributed), 1, or more, and each process's id is one of 0 .. count - 1."
        )
    if num_processes == 1 or jax.distributed.is_initialized():  # started once a process
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if num_processes == 0:
        try:
            jax.distributed.initialize(coordinator_address=coordinator_address or None)
        except ValueError as error:  # no cluster found: "coordinator_address should be defined"
            raise JftError(
                f"parallel.num_processes=0 lets jax.distributed find the processes, and it found no TPU pod or "
                f"SLURM job here ({error}); set parallel.num_processes, process_id and coordinator_address."
            ) from error
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


@dataclasses.dataclass
class Runner:
    """Compiles per-device steps for a backend and places state and batches for it.

    devices: the devices of the shard_map mesh; by default all of them. Other devices, such as a
    TPU topology's (jft.tpu), serve ahead-of-time compilation for a machine one does not have.
    """

    backend: str = "shard_map"
    devices: list | None = None
    shard_state: str = "none"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise JftError(f"parallel backend '{self.backend}' is not one of {choices(BACKENDS)}.")
        if self.shard_state not in SHARD_STATE:
            raise JftError(f"parallel.shard_state '{self.shard_state}' is not one of {choices(SHARD_STATE)}.")
        if self.shard_state != "none" and self.backend == "pmap":
            raise JftError(
                f"parallel.shard_state={self.shard_state} splits the state over a mesh of the devices, which pmap "
                "does not have: use parallel.backend=shard_map (the default)."
            )
        if self.devices is not None and self.backend != "shard_map":
            raise JftError(f"a Runner over given devices uses the shard_map backend, not '{self.backend}'.")
        if self.devices is None:
            self.devices = jax.devices() if self.backend == "shard_map" else jax.local_devices()
        if self.backend == "jit":
            self.devices = self.devices[:1]
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        local = [d for d in self.devices if d.process_index == jax.process_index()]
        self.local_mesh = Mesh(np.array(local), (AXIS,))

    @classmethod
    def start(cls, parallel: ConfigDict) -> "Runner":
        """The Runner of a training config's `parallel` group, after starting jax.distributed when
        it asks for several processes (before any other JAX work)."""
        initialize_distributed(parallel.coordinator_address, parallel.num_processes, parallel.process_id)
        return cls(parallel.backend, shard_state=parallel.shard_state)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def batch_multiple(self) -> int:
        """The devices a global batch splits over: its row count must be a multiple of this."""
        return self.num_devices * (jax.process_count() if self.backend == "pmap" else 1)

    def check_batch(self, global_batch: int, accum_steps: int = 1) -> None:
        """A clear error when the global batch does not split evenly over devices and micro-batches."""
        devices = self.batch_multiple()
        if global_batch % (devices * accum_steps):
            raise JftError(
                f"the global batch of {global_batch} rows does not divide over {devices} devices × "
                f"{accum_steps} accumulation steps; use a multiple of {devices * accum_steps}."
            )

    @property
    def global_view(self) -> bool:
        """Whether steps run in the global view (jit over global arrays), as shard_state asks."""
        return self.shard_state != "none"

    def compile(self, step: Callable, *, state_argnum: int | None = 0) -> Callable:
        """step(state, batch, rng, axis_name=...) -> compiled fn(state, batch, rng); state donated
        (a step given state_argnum returns (state, metrics), else its outputs)."""
        donate = () if state_argnum is None else (state_argnum,)
        if self.global_view:
            replicated = NamedSharding(self.mesh, P())

            def global_step(state, batch, rng):
                with global_view(self.mesh, AXIS, split_parameters=self.shard_state == "all"):
                    out = step(state, batch, rng, axis_name=None)
                if state_argnum is None:
                    return jax.lax.with_sharding_constraint(out, replicated)
                new_state, metrics = out
                return self.constrain_state(new_state), jax.lax.with_sharding_constraint(metrics, replicated)

            return jax.jit(global_step, donate_argnums=donate)
        if self.backend == "jit":
            return jax.jit(functools.partial(step, axis_name=None), donate_argnums=donate)
        if self.backend == "pmap":
            return jax.pmap(functools.partial(step, axis_name=AXIS), axis_name=AXIS, donate_argnums=donate)
        sharded = jax.shard_map(
            functools.partial(step, axis_name=AXIS),
            mesh=self.mesh,
            in_specs=(P(), P(AXIS), P()),
            out_specs=P(),
            check_vma=False,
        )
        return jax.jit(sharded, donate_argnums=donate)

    def compile_rows(self, fn: Callable) -> Callable:
        """fn(params, batch, rng, axis_name=...) -> per-row outputs, compiled; fetch them with get_rows."""
        if self.backend == "jit":
            return jax.jit(functools.partial(fn, axis_name=None))
        if self.backend == "pmap":
            return jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS)
        sharded = jax.shard_map(
            functools.partial(fn, axis_name=AXIS),
            mesh=self.mesh,
            in_specs=(P(), P(AXIS), P()),
            out_specs=P(AXIS),
            check_vma=False,
        )
        return jax.jit(sharded)

    def get_rows(self, tree: Any) -> Any:
        """Per-row outputs as host NumPy arrays, rows in batch order (all processes' rows)."""
        if self.backend == "pmap":
            tree = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:]), tree)
            return multihost_utils.process_allgather(tree, tiled=True) if jax.process_count() > 1 else tree
        if jax.process_count() > 1:
            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(np.asarray, tree)

    def state_shardings(self, tree: Any) -> Any:
        """Where each leaf of a training state (arrays or their shapes) lives: split along its
        largest dimension that divides by the devices when shard_state splits its field, else
        copied to every device."""
        fields, n = SHARDED_FIELDS[self.shard_state], self.num_devices

        def sharding(path, leaf) -> NamedSharding:
            shape = np.shape(leaf)
            names = {getattr(key, "name", getattr(key, "key", None)) for key in path}
            dims = [i for i, size in enumerate(shape) if size % n == 0 and size >= n]
            if not dims or not names & set(fields) or n == 1:
                return NamedSharding(self.mesh, P())
            dim = max(dims, key=lambda i: (shape[i], i))
            return NamedSharding(self.mesh, P(*(AXIS if i == dim else None for i in range(len(shape)))))

        return jax.tree_util.tree_map_with_path(sharding, tree)

    def constrain_state(self, tree: Any) -> Any:
        """A traced state held to state_shardings (inside a global-view step)."""
        return jax.lax.with_sharding_constraint(tree, self.state_shardings(tree))

    def making_state(self) -> contextlib.AbstractContextManager:
        """Where a new state is made (its parameters' init, the optimizer's init): in the global view
        on this host's CPU, so that no device holds the whole state before put_state splits it (a
        state split over the devices may be more than one of them holds); otherwise on the default
        device, as a replicated state fits one."""
        if not self.global_view:
            return contextlib.nullcontext()
        try:
            host = jax.local_devices(backend="cpu")[0]
        except RuntimeError:  # JAX_PLATFORMS names no cpu: the default device it is
            return contextlib.nullcontext()
        return jax.default_device(host)

    def put_state(self, tree: Any) -> Any:
        """A training state (or population) to where the compiled step reads it: split as
        state_shardings says in the global view, else as put_replicated."""
        if not self.global_view:
            return self.put_replicated(tree)
        return jax.tree.map(lambda x, s: _global_array(np.asarray(x), s), tree, self.state_shardings(tree))

    def put_replicated(self, tree: Any) -> Any:
        """State (or params) to where the compiled step reads it."""
        if self.backend == "pmap":
            return flax.jax_utils.replicate(tree, self.local_mesh.devices.tolist())
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda x: _global_array(np.asarray(x), sharding), tree)

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows to its devices, split along the rows."""
        if self.backend == "pmap":
            n = len(self.local_mesh.devices)
            sharding = NamedSharding(self.local_mesh, P(AXIS))
            return {k: jax.device_put(v.reshape(n, -1, *v.shape[1:]), sharding) for k, v in local_batch.items()}
        sharding = NamedSharding(self.mesh, P(AXIS))
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}

    def put_global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A global batch that every process made alike to the devices: each process puts its own
        contiguous share of the rows (the rows divide over the processes, see batch_multiple)."""
        count = jax.process_count()
        if count > 1:
            batch = {name: np.split(array, count)[jax.process_index()] for name, array in batch.items()}
        return self.put_batch(batch)

    def replica(self, tree: Any) -> Any:
        """One copy of replicated device values, left on the devices (nothing waits or moves): what
        a checkpoint saves. Host values pass through."""
        if self.backend == "pmap":
            return jax.tree.map(lambda x: x[0] if isinstance(x, jax.Array) else x, tree)
        return tree

    def get(self, tree: Any) -> Any:
        """One copy of replicated device values, as host NumPy arrays (a device-to-host sync)."""
        if self.backend == "pmap":
            tree = flax.jax_utils.unreplicate(tree)
        return first_copy(tree)


def first_copy(tree: Any) -> Any:
    """Each array of tree whole, as NumPy: this process's first copy of a replicated one (a view,
    not a copy, for an array in host memory; a device-to-host transfer for one on a GPU or TPU),
    a split one's pieces put together (from every process: each must call it)."""

    def whole(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        if x.is_fully_addressable:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(whole, tree)


def _global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def agree(error: BaseException | None) -> None:
    """Raises, on every process of a run, the first error any process met (by process index); on
    one process, its own. Every process calls it once at the same point, so that a refusal decided
    where one process looked (process 0 holds the lock) reaches all as the same one-line error,
    instead of leaving the others waiting at a barrier."""
    if error is not None:
        error.agreed = True  # jft.train.session raises it on without agreeing again
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    text = "" if error is None else f"{getattr(error, 'exit_code', 1)} {error}"
    data = np.zeros(4096, np.uint8)
    encoded = text.encode()[: data.size]
    data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(data))
    first = next((bytes(row).rstrip(b"\0").decode(errors="replace") for row in gathered if row.any()), "")
    if error is not None and first == text:
        raise error
    if first:
        code, _, message = first.partition(" ")
        agreed = JftError(message)
        agreed.exit_code, agreed.agreed = int(code), True
        raise agreed

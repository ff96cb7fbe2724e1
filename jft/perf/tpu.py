"""Ahead-of-time compilation of jft's training steps for a TPU topology, on a machine without one.

`jft bench --topology v5e:2x2` compiles the steps `jft bench` times (jft.perf.bench's workloads: the
real pretraining and fine-tuning steps under the shard_map runner, state donated) for the chips
of a TPU topology, with libtpu's compiler (jax.experimental.topologies, as MaxText's
train_compile does), on abstract inputs: nothing is allocated and nothing runs. XLA's memory
analysis of each program gives, per device, what the arguments (state and batch), the outputs
and the temporaries take; their sum less the donated buffers is the step's peak, set against the
chip's HBM. A search over compiles finds the largest per-device batch that fits for each remat
choice. The target's settings are used: dtype 'auto' is bfloat16 and attention is XLA's (cuDNN
is a GPU kernel).
"""

import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from jft.errors import JftError
from jft.models import config_of
from jft.perf.memory import peak_bytes
from jft.train.parallel import AXIS, Runner

GIB = 2**30
REMATS = ("none", "dots", "full")  # the model's remat choices, compared by --largest-batch


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: its name, HBM a chip, and how libtpu compiles for it."""

    kind: str
    hbm_gib: float
    dims: int  # the topology's grid: 2-D (v5e, v6e) or 3-D (v4, v5p) chips
    # libtpu's chip configuration: "megacore" makes a chip's two TensorCores one device, as jax
    # runs v4 and v5p; "default" is one device a TensorCore.
    chip_config: str
    accelerator_type: str  # TPU_ACCELERATOR_TYPE of a slice, from its chips ({chips}) or cores ({cores})


CHIPS = {
    "v4": Chip("TPU v4", 32, 3, "megacore", "v4-{cores}"),
    "v5e": Chip("TPU v5e", 16, 2, "default", "v5litepod-{chips}"),
    "v5p": Chip("TPU v5p", 95, 3, "megacore", "v5p-{cores}"),
    "v6e": Chip("TPU v6e", 32, 2, "default", "v6e-{chips}"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    generation: str
    grid: tuple[int, ...]

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def name(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.grid))}"

    @property
    def chips(self) -> int:
        return math.prod(self.grid)


def parse_topology(text: str) -> Topology:
    """'v5e:2x2' (v5e, v6e: a 2-D grid of chips; v4, v5p: 3-D, e.g. v4:2x2x1) as a Topology."""
    examples = "v5e:2x2, v6e:2x2, v4:2x2x1 or v5p:2x2x1"
    generation, _, grid = text.strip().lower().partition(":")
    if generation not in CHIPS:
        raise JftError(f"TPU topology '{text}': the generation is one of {', '.join(CHIPS)}, as in {examples}.")
    chip = CHIPS[generation]
    if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*)*", grid) or grid.count("x") + 1 != chip.dims:
        shape = "x".join(["N"] * chip.dims)
        raise JftError(
            f"TPU topology '{text}': a {generation} topology is a {chip.dims}-D grid of chips, "
            f"{generation}:{shape} (e.g. {examples})."
        )
    return Topology(generation, tuple(int(n) for n in grid.split("x")))


def libtpu_version() -> str:
    """The installed libtpu's version, or 'not installed'."""
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def require_libtpu() -> None:
    """A clear error when libtpu, the TPU compiler, is not installed."""
    if importlib.util.find_spec("libtpu") is None:
        raise JftError(
            "compiling for a TPU needs libtpu, which is not installed: pip install 'jft[tpu]' "
            f"(it installs jax[tpu]=={jax.__version__}, which brings the libtpu this jax was built with)."
        )


def topology_devices(topology: Topology) -> list:
    """The devices of a TPU topology as libtpu describes them (no TPU needed), one per chip, or one
    per TensorCore where the chip is not megacore."""
    require_libtpu()
    from jax.experimental import topologies

    chip = topology.chip
    # libtpu asks the machine what slice it is part of; a host without a TPU has no answer, and it
    # says so at length unless told.
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu takes a machine-wide lock for the TPU; compiling touches no TPU, so two compiles
    # (two `jft bench --topology` at once) may share the machine.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault(
        "TPU_ACCELERATOR_TYPE", chip.accelerator_type.format(chips=topology.chips, cores=2 * topology.chips)
    )
    grid = (*topology.grid, 1, 1)[:3]
    try:
        description = topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology.name,
            chip_config_name=chip.chip_config,
            chips_per_host_bounds=tuple(min(n, 2) for n in grid),
            num_slices=1,
        )
    except Exception as error:  # libtpu's own message says which part of the topology it refused
        raise JftError(f"libtpu cannot describe the TPU topology {topology.name}: {error}") from error
    return list(description.devices)


def target_model(model: ConfigDict) -> tuple[ConfigDict, list[str]]:
    """A bench config's model group as it runs on a TPU, and a line for each setting changed."""
    model = model.copy_and_resolve_references()
    changes = []
    if model.dtype == "auto":
        model.dtype = "bfloat16"
        changes.append("dtype 'auto' is bfloat16 on a TPU")
    if model.get("attention_impl") == "cudnn":  # both fused kernels without dropout
        model.attention_impl = "splash"
        changes.append("attention_impl 'cudnn' is a GPU kernel: Pallas's splash kernel on a TPU")
    return model, changes


def abstract(tree, sharding):
    """ShapeDtypeStructs of tree's leaves (arrays or shapes), placed by `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@dataclasses.dataclass
class Compiled:
    """What XLA says of one step's program for one device: its memory in bytes (0 where the
    compile failed), the compile's seconds, and its error, if any."""

    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    peak: int = 0
    seconds: float = 0.0
    error: str = ""


# libtpu's compiler recurses over the graph: a ResNet-50 step overflows the 8 MiB stack a thread
# gets by default (a segfault in MigrateInstructionUsers), so compiles run in a thread of this size.
COMPILER_STACK_BYTES = 1 << 30


def with_large_stack(function: Callable[[], Any]) -> Any:
    """function() run in a thread with a COMPILER_STACK_BYTES stack; its result or its exception."""
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    previous = threading.stack_size(COMPILER_STACK_BYTES)
    try:
        thread = threading.Thread(target=target, name="tpu-compile", daemon=True)  # Ctrl-C need not wait for it
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def compile_step(runner: Runner, step: Callable, state_shapes, batch) -> Compiled:
    """Compiles step(state, batch, rng) under runner for abstract inputs (state replicated, batch
    split over the devices); a compile libtpu refuses (out of HBM or vmem) gives its first line."""
    replicated, split = NamedSharding(runner.mesh, P()), NamedSharding(runner.mesh, P(AXIS))
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    start = time.perf_counter()
    state = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        state_shapes,
        runner.state_shardings(state_shapes),
    )
    lowered = runner.compile(step).lower(state, abstract(batch, split), abstract(key, replicated))
    try:
        program = with_large_stack(lowered.compile)
    except Exception as error:  # XLA's compile errors have no narrower public type
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return Compiled(seconds=time.perf_counter() - start, error=first)
    seconds = time.perf_counter() - start
    memory = program.memory_analysis()
    return Compiled(
        memory.argument_size_in_bytes,
        memory.output_size_in_bytes,
        memory.alias_size_in_bytes,
        memory.temp_size_in_bytes,
        peak_bytes(memory),
        seconds,
    )


def largest_batch(
    peak: Callable[[int], float], limit: float, multiple: int = 8, first: int = 8, most: int = 65536
) -> int:
    """The largest multiple of `multiple` (up to `most`) whose peak(batch) (bytes, one compile
    each; inf for a compile that failed) is within `limit`; 0 when not even `multiple` fits.

    Memory grows about linearly with the batch: secants through the last two compiles home in on
    the limit, then bisection between the largest batch known to fit and the smallest known not
    to settles it."""
    fitting, failing = 0, most + multiple
    peaks: dict[int, float] = {}

    def probe(batch: int) -> float:
        nonlocal fitting, failing
        if batch not in peaks:
            peaks[batch] = peak(batch)
            if peaks[batch] <= limit:
                fitting = max(fitting, batch)
            else:
                failing = min(failing, batch)
        return peaks[batch]

    def rounded(batch: float) -> int:
        return int(min(max(batch // multiple * multiple, multiple), most))

    a, b = rounded(first), rounded(2 * first)
    for _ in range(3):
        pa, pb = probe(a), probe(b)
        if not (math.isfinite(pa) and math.isfinite(pb)) or pb <= pa:
            break
        guess = rounded(b + (limit - pb) * (b - a) / (pb - pa))
        if guess in peaks:
            break
        a, b = b, guess
    probe(b)
    step = multiple
    while failing > most and fitting < most:  # nothing seen to fail yet: gallop upward
        probe(rounded(fitting + step))
        step *= 2
    while failing - fitting > multiple:
        probe(rounded((fitting + failing) / 2))
    return fitting


def compile_report(
    config: ConfigDict,
    topology: Topology,
    workloads: list[str],
    workload_fn: Callable,
    *,
    search: bool,
    remats: tuple = REMATS,
) -> dict:
    """Compiles each of `workloads` (checked names) of config for `topology`; its report (see the module docstring).

    workload_fn(name, config, family, cfg, row_multiple) -> jft.perf.bench.Workload for a config
    (batch_size is global; packed rows filled out to a multiple of the devices).
    """
    devices = topology_devices(topology)
    if config.batch_size % len(devices):
        raise JftError(
            f"the global batch of {config.batch_size} does not divide over the {len(devices)} devices of "
            f"{topology.name}; use a multiple of {len(devices)}."
        )
    runner = Runner("shard_map", devices=devices, shard_state=config.shard_state)
    per_device_hbm = topology.chip.hbm_gib * GIB * topology.chips / len(devices)
    model, changes = target_model(config.model)
    if "remat" not in model:  # an image model: no remat choice
        remats = ("none",)
    report = {
        "topology": topology.name,
        "chip": topology.chip.kind,
        "libtpu": libtpu_version(),
        "devices": len(devices),
        "hbm_gib_per_device": per_device_hbm / GIB,
        "changes": changes,
        "results": [],
    }
    for name in workloads:
        compiled: dict[tuple[str, int], tuple[Compiled, Any]] = {}

        def trial(remat: str, per_device: int) -> ConfigDict:
            values = config.copy_and_resolve_references()
            values.model = model.copy_and_resolve_references()
            values.batch_size = per_device * len(devices)
            if "remat" in values.model:
                values.model.remat = remat
            return values

        def compile_at(remat: str, per_device: int, name=name, compiled=compiled) -> tuple[Compiled, Any]:
            if (remat, per_device) not in compiled:
                values = trial(remat, per_device)
                work = workload_fn(name, values, *config_of(values.model), len(devices))
                widest = max(work.batches, key=lambda b: sum(value.size for value in b.values()))
                result = compile_step(runner, work.step, jax.eval_shape(work.init_state), widest)
                compiled[(remat, per_device)] = result, work
                print(
                    f"bench: {name} for {topology.name}, remat {remat}, batch {per_device} a device: "
                    + (f"{result.peak / GIB:.2f} GiB" if result.peak else "no memory count")
                    + (f" ({result.error})" if result.error else "")
                    + f", compiled in {result.seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            return compiled[(remat, per_device)]

        per_device = config.batch_size // len(devices)
        result, work = compile_at(model.get("remat", "none"), per_device)
        row = {
            "workload": name,
            "shape": work.shape,
            "batch_per_device": per_device,
            "dtype": model.dtype,
            "attention_impl": model.get("attention_impl"),
            "remat": model.get("remat", "none"),
            **{
                f"{k}_gib": getattr(result, k) / GIB for k in ("arguments", "outputs", "aliased", "temporaries", "peak")
            },
            "fits": bool(result.peak) and not result.error and result.peak <= per_device_hbm,
            "compile_seconds": result.seconds,
            "error": result.error,
            "tflop_per_device_step": sum(work.flops) / len(work.flops) / len(devices) / 1e12,
        }
        if search:
            row["largest_batch_per_device"] = {
                remat: largest_batch(
                    lambda b, remat=remat: _peak_or_inf(compile_at(remat, b)[0]),
                    per_device_hbm,
                    multiple=min(8, per_device),  # long rows (8,192 tokens): a few a device, counted one by one
                    first=per_device,
                )
                for remat in remats
            }
        report["results"].append(row)
    return report


def _peak_or_inf(result: Compiled) -> float:
    """A compile's peak for the batch search; a failure without a memory count does not fit."""
    return result.peak if result.peak else math.inf


def table(report: dict) -> str:
    """A compile report as Markdown."""
    head = (
        f"{report['topology']} ({report['chip']}, {report['devices']} devices of "
        f"{report['hbm_gib_per_device']:.0f} GiB HBM), compiled ahead of time\n"
        + "".join(f"- {change}\n" for change in report["changes"])
        + "\n| workload | shape | batch/device | dtype | remat | args GiB | temp GiB | peak GiB | fits "
        "| TFLOP/device-step | compile s | largest batch/device (none, dots, full) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in report["results"]:
        largest = r.get("largest_batch_per_device")
        rows.append(
            f"| {r['workload']} | {r['shape']} | {r['batch_per_device']} | {r['dtype']} | {r['remat']} | "
            f"{r['arguments_gib']:.2f} | {r['temporaries_gib']:.2f} | {r['peak_gib']:.2f} | "
            f"{'yes' if r['fits'] else 'no' + (': ' + r['error'] if r['error'] else '')} | "
            f"{r['tflop_per_device_step']:.3g} | {r['compile_seconds']:.0f} | "
            + (", ".join(str(largest.get(m, "—")) for m in REMATS) if largest else "—")
            + " |"
        )
    return head + "\n".join(rows)

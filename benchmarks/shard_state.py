"""What each parallel.shard_state costs and saves: the compiled step's memory a device and the bytes
its collectives move, read from the program XLA compiles (no device runs it).

    python benchmarks/shard_state.py --config bench:base --topology v5e:2x2 --batch 32 --seq 128
    python benchmarks/shard_state.py --config bench:mini --batch 8 --seq 128   # 8 CPU devices

For each of none, optimizer and all, the pretraining step (jft.perf.bench's workload) is compiled
for the topology's chips (libtpu's compiler, as `jft bench --topology`) or for 8 CPU devices, its
layers unrolled (model.scan_layers=False) so that every collective of every layer is written out
in the program, and the program's text is read: each all-reduce, all-gather, reduce-scatter (a
TPU's fused all-reduce-scatter too), all-to-all and collective-permute with the bytes of its
result (a reduce-scatter's: its whole input). An all-reduce moves about twice its bytes over a
ring, an all-gather or reduce-scatter once: the "ring bytes" column. Memory: XLA's memory
analysis (arguments, temporaries, peak) of the scanned program, as training compiles it.
"""

import argparse
import collections
import os
import re
import sys

if "--topology" not in sys.argv:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import numpy as np

from jft.config import load_config
from jft.models import config_of
from jft.perf import bench, tpu
from jft.perf.memory import peak_bytes
from jft.train.parallel import AXIS, Runner

GIB = 2**30
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "s64": 8, "u16": 2}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
RING = {"all-reduce": 2.0, "all-gather": 1.0, "reduce-scatter": 1.0, "all-to-all": 1.0, "collective-permute": 1.0}
# An instruction's result type(s) and its op: "%x = bf16[4,768]{1,0} all-gather(" or a tuple "(f32[..], f32[..])".
INSTRUCTION = re.compile(r"=\s*(\([^()]*\)|[a-z0-9]+\[[0-9,]*\][^\s]*)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")


# A TPU's fused reduce-scatter:
# "%fusion.7 = (bf16[768,192], ...) fusion(...), kind=kCustom, calls=%all-reduce-scatter.74"
FUSED_REDUCE_SCATTER = re.compile(r"=\s*(\([^()]*\)|[a-z0-9]+\[[0-9,]*\][^\s]*)\s+fusion\(.*calls=%all-reduce-scatter")


def collective_bytes(text: str, devices: int) -> dict[str, float]:
    """Bytes of each kind of collective in an HLO module's text: of its result, and for a
    reduce-scatter (XLA's, or a TPU's fused all-reduce-scatter) of its whole input."""
    found = collections.Counter()

    def add(op: str, result: str, factor: int = 1):
        for dtype, dims in ARRAY.findall(result):
            size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            found[op] += size * DTYPE_BYTES.get(dtype, 4) * factor

    for result, op in INSTRUCTION.findall(text):
        add(op, result, devices if op == "reduce-scatter" else 1)
    for result in FUSED_REDUCE_SCATTER.findall(text):
        add("reduce-scatter", result, devices)
    return dict(found)


def compile_mode(config, shard_state: str, topology: str | None, scan_layers: bool):
    values = config.copy_and_resolve_references()
    values.model.scan_layers = scan_layers
    family, cfg = config_of(values.model)
    if topology:
        devices = tpu.topology_devices(tpu.parse_topology(topology))
        runner = Runner("shard_map", devices=devices, shard_state=shard_state)
    else:
        runner = Runner("shard_map", shard_state=shard_state)
    values.batch_size = values.batch_size * runner.num_devices
    work = bench.workload("pretrain", values, family, cfg, runner.num_devices)
    widest = max(work.batches, key=lambda b: sum(v.size for v in b.values()))
    state = jax.eval_shape(work.init_state)
    replicated = jax.sharding.NamedSharding(runner.mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(runner.mesh, jax.sharding.PartitionSpec(AXIS))
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, runner.state_shardings(state)
    )
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    lowered = runner.compile(work.step).lower(
        abstract_state, tpu.abstract(widest, split), tpu.abstract(key, replicated)
    )
    return tpu.with_large_stack(lowered.compile), runner.num_devices


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bench:base")
    parser.add_argument("--topology", default="", help="a TPU topology (v5e:2x2); none: 8 CPU devices")
    parser.add_argument("--batch", type=int, default=32, help="rows a device")
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    if args.topology:
        tpu.require_libtpu()
        jax.config.update("jax_platforms", "cpu")
    config = load_config(args.config, [], "bench")
    config.seq_len, config.batch_size, config.workloads = args.seq, args.batch, "pretrain"
    config.max_predictions = args.seq * 20 // 128
    if "attention_impl" in config.model:
        config.model.attention_impl = "xla"
    rows = []
    for shard_state in ("none", "optimizer", "all"):
        program, devices = compile_mode(config, shard_state, args.topology or None, scan_layers=True)
        memory = program.memory_analysis()
        unrolled, _ = compile_mode(config, shard_state, args.topology or None, scan_layers=False)
        moved = collective_bytes(unrolled.as_text(), devices)
        ring = sum(RING[op] * size for op, size in moved.items())
        rows.append((shard_state, memory, moved, ring))
        print(f"shard_state.py: {shard_state} compiled", file=sys.stderr, flush=True)
    where = args.topology or f"{devices} CPU devices"
    print(
        f"{args.config}, pretraining, seq {args.seq}, {args.batch} rows a device, {where} "
        f"(jax {jax.__version__}{', libtpu ' + tpu.libtpu_version() if args.topology else ''})\n"
    )
    print("| shard_state | arguments GiB | temporaries GiB | peak GiB | collectives' results GiB | ring GiB |")
    print("|---|---|---|---|---|---|")
    for shard_state, memory, moved, ring in rows:
        kinds = ", ".join(f"{op} {size / GIB:.3f}" for op, size in sorted(moved.items()))
        print(
            f"| {shard_state} | {memory.argument_size_in_bytes / GIB:.3f} | {memory.temp_size_in_bytes / GIB:.3f} | "
            f"{peak_bytes(memory) / GIB:.3f} | {kinds} | {ring / GIB:.3f} |"
        )


if __name__ == "__main__":
    main()

"""Where a jft training step's device time goes, kernel by kernel: one profiled window of steps.

    python benchmarks/gpu_profile.py --size base --batch 256 --out $OUT/profile-bf16.md
    python benchmarks/gpu_profile.py --size base --batch 256 --model dtype=float32 --model attention_impl=xla \\
        --out $OUT/profile-f32.md
    python benchmarks/gpu_profile.py --size tiny --batch 8 --model dtype=float32 --model attention_impl=xla  # CPU smoke

The step is `jft bench`'s (jft.perf.bench: the same workload, compiled ahead, plain jit on one
device). It runs `--steps` steps under `jax.profiler`, then reads the trace back with
`jax.profiler.ProfileData` and writes, beside the step's wall time: the device's busy time (the
union of its kernels' intervals: what is left of the wall time is the device waiting for the host),
that time by kind of kernel (matmul, attention, random bits, copies, other fusions) and the kernels
that took most of it. On a CPU there is no device plane: the table reads the XLA thread's events, a
check of the script and nothing more. The optimized HLO goes beside the table (`--hlo`), so each
fusion's name can be looked up.
"""

import argparse
import collections
import glob
import os
import re
import tempfile
import time
from pathlib import Path

import jax
from jax.profiler import ProfileData

from jft import defaults
from jft.config import apply_overrides
from jft.models import config_of
from jft.perf import bench
from jft.train.parallel import Runner

# kinds of kernels, by name (cuBLAS/cuBLASLt, CUTLASS and Triton matmuls; cuDNN's fused attention;
# threefry's bits; copies); the first that matches names the kind
KINDS = (
    ("matmul", re.compile(r"gemm|xmma|cutlass|nvjet|matmul|dot|cublas", re.I)),
    ("attention", re.compile(r"fmha|flash|cudnn|attention|sdpa", re.I)),
    ("random bits", re.compile(r"threefry|rng|philox|random", re.I)),
    ("copy, transpose", re.compile(r"memcpy|memset|copy|transpose", re.I)),
    ("reduction", re.compile(r"reduce|reduction", re.I)),
)


def kind_of(name: str) -> str:
    """The kind of a kernel, from its name."""
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other fusion")


def device_events(data: ProfileData) -> tuple[list, list, str]:
    """(name, start ns, end ns) of every kernel on the first GPU's streams, and of every HLO
    operation on its "XLA Ops" line (empty where the trace has none); on a machine without a GPU,
    the events of the CPU client's XLA threads, and no operations. The third value says which."""
    planes = [p for p in data.planes if p.name.startswith("/device:GPU:")]
    if planes:
        summaries = ("XLA Modules", "XLA Ops", "Steps", "Launch Stats", "Source")
        lines = [line for line in planes[0].lines if line.name.startswith("Stream")]
        lines = lines or [line for line in planes[0].lines if line.name not in summaries]  # streams named otherwise
        ops = [line for line in planes[0].lines if line.name == "XLA Ops"]
        source = f"{planes[0].name}, lines {sorted({line.name for line in lines})}"
    else:
        cpu = [p for p in data.planes if p.name == "/host:CPU"]
        lines, ops = [line for p in cpu for line in p.lines if "XLA" in line.name and "Eigen" not in line.name], []
        source = "host CPU (no device plane: a check of the script)"

    def events(lines):
        skip = ("ThreadpoolListener", "ThunkExecutor", "end: ")
        return [(e.name, e.start_ns, e.end_ns) for line in lines for e in line.events if not e.name.startswith(skip)]

    return events(lines), events(ops), source


def busy_ns(events: list) -> float:
    """Nanoseconds in which at least one kernel ran (the union of the intervals)."""
    total, reach = 0.0, float("-inf")
    for _, start, end in sorted(events, key=lambda e: e[1]):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summary(events: list, steps: int, wall_s: float, top: int) -> str:
    """The Markdown tables: busy time against wall time, time by kind, the top kernels."""
    busy = busy_ns(events) * 1e-6 / steps
    wall = wall_s * 1e3 / steps
    lines = [
        f"step wall time {wall:.2f} ms; device busy {busy:.2f} ms ({busy / wall:.0%}); "
        f"{len(events) / steps:.0f} kernels a step",
        "",
        "| kind | ms a step | share of kernel time |",
        "|---|---|---|",
    ]
    by_kind, by_name, count = collections.Counter(), collections.Counter(), collections.Counter()
    for name, start, end in events:
        by_kind[kind_of(name)] += end - start
        by_name[name] += end - start
        count[name] += 1
    kernel_total = sum(by_kind.values())
    for kind, ns in by_kind.most_common():
        lines.append(f"| {kind} | {ns * 1e-6 / steps:.2f} | {ns / kernel_total:.1%} |")
    lines += ["", "| kernel | kind | calls a step | ms a step | share |", "|---|---|---|---|---|"]
    for name, ns in by_name.most_common(top):
        shown = name if len(name) <= 90 else name[:87] + "..."
        lines.append(
            f"| `{shown}` | {kind_of(name)} | {count[name] / steps:.1f} | {ns * 1e-6 / steps:.3f} | "
            f"{ns / kernel_total:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", help="tiny, mini, base or large")
    parser.add_argument("--workload", default="pretrain", choices=("pretrain", "finetune"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (after 3 unprofiled)")
    parser.add_argument("--model", action="append", default=[], help="KEY=VALUE for config.model, repeatable")
    parser.add_argument("--top", type=int, default=30, help="kernels listed")
    parser.add_argument("--out", default="", help="the Markdown summary")
    parser.add_argument("--hlo", default="", help="where to write the compiled step's optimized HLO")
    args = parser.parse_args()

    gpu = jax.default_backend() == "gpu"
    config = defaults.bench()
    fields = {"dtype": "bfloat16" if gpu else "float32", "attention_impl": "cudnn" if gpu else "xla"}
    config.model = defaults.model_fields(args.size, **fields, attention_probs_dropout_prob=0.0)
    apply_overrides(config, [f"model.{pair}" for pair in args.model])  # typed and checked as --config.model.KEY
    config.batch_size, config.seq_len, config.backend, config.workloads = args.batch, args.seq, "jit", args.workload
    family, cfg = config_of(config.model)
    work = bench.workload(args.workload, config, family, cfg)
    runner = Runner("jit")
    state = runner.put_state(work.init_state())
    batch = runner.put_batch(work.batches[0])
    key = runner.put_replicated(jax.random.PRNGKey(config.seed))
    compiled = runner.compile(work.step).lower(state, batch, key).compile()
    hlo = compiled.as_text()
    if args.hlo:
        Path(args.hlo).write_text(hlo)
    # on a GPU, each loop iteration and conditional may wait for the host to read its predicate
    control = {op: len(re.findall(rf"\s{op}\(", hlo)) for op in ("while", "conditional")}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    for _ in range(3):
        state = compiled(state, batch, key)[0]
    jax.block_until_ready(state)

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(args.steps):
            state = compiled(state, batch, key)[0]
        jax.block_until_ready(state)
        wall_s = time.perf_counter() - start
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
        kernels, ops, source = device_events(ProfileData.from_file(path))

    header = (
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {args.size} {args.workload}, batch {args.batch}, "
        f"seq {args.seq}, {config.model.dtype} compute, attention "
        f"{config.model.attention_impl}, overrides {args.model or 'none'}, {args.steps} steps profiled, "
        f"{time.strftime('%Y-%m-%d')}\n\nevents from {source}; XLA's count a step: "
        f"{cost.get('flops', 0) / 1e9:,.1f} GFLOP, {cost.get('bytes accessed', 0) / 2**30:.2f} GiB accessed; "
        f"XLA_FLAGS {os.environ.get('XLA_FLAGS') or 'none'}; the optimized HLO holds {control['while']} while "
        f"loops and {control['conditional']} conditionals\n\n"
    )
    text = header + summary(kernels, args.steps, wall_s, args.top)
    if ops:
        text += "\nBy HLO operation (the fusions' names as in the optimized HLO):\n\n"
        text += summary(ops, args.steps, wall_s, args.top)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Where a training step's compile time goes: per phase (tracing, lowering to StableHLO, XLA's
compile) for the whole step, and per part (the dynamic masking, the model's forward and backward
pass with its loss, the optimizer's update) each compiled alone, for pretraining and fine-tuning
of each text family, on this machine's CPU. The dropout column is what the forward and backward
pass takes more to compile with dropout on (its random draws) than without.

    python benchmarks/compile_parts.py                       # 4 layers × 256, seq 128, batch 16, float32
    python benchmarks/compile_parts.py --families bert --rounds 3
    python benchmarks/compile_parts.py --code    # what XLA:CPU generates: jft's small BERT against HF Flax's
    python benchmarks/compile_parts.py --masking-draws --rounds 7   # the masking's joined hashes against row by row
    python benchmarks/compile_parts.py --dropout-draws --families bert,roberta,gpt2   # dropout's row hashes

Each figure is the median of --rounds fresh compiles (jax's in-memory caches cleared between
them; the persistent cache off). The parts do not add up to the whole: XLA compiles one program,
and what the whole step adds (the finite check, the metrics, the gradient clipping, the L2 term,
the skipped-update logic) is what the last column leaves.

--code compiles jft's and HF Flax's BERT steps of benchmarks/peers.py's CPU comparison once each
in a child process with XLA's dumps on, and reads them: the seconds of XLA's HLO passes and of its
code generation (XLA:CPU's own log), and the kernels it generated with their lines of optimized
LLVM IR, by the part of the step each comes from (its op_name). Identical kernels are generated
once, so HF's unrolled layers cost one layer's kernels.

--masking-draws compiles the pretraining step, and its masking alone, with the masking's random
numbers by the batch's joined threefry hashes (jft.train.masking.threefry_draws) and by each row's
jax.random draws (the same bits), the two alternated round by round, and the compiled steps' times
(windows of 3 steps, alternated); medians. --dropout-draws does the same for dropout's masks: by
each row's hashes (jft.models.layers.kept) against jax.random.bits over the whole array (jft's until
2026-12-06).
"""

import argparse
import collections
import contextlib
import functools
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jft.config import load_config
from jft.models import layers
from jft.perf import bench
from jft.train import masking as masking_module
from jft.train.masking import mask_batch

SIZE = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
GPT2_SIZE = {"n_embd": 256, "n_layer": 4, "n_head": 4, "n_inner": 1024, "n_positions": 128}  # the same, GPT-2's names


def _seconds(function, *args) -> dict[str, float]:
    """Trace, lower and compile seconds of jax.jit(function) on args."""
    jax.clear_caches()
    start = time.perf_counter()
    traced = jax.jit(function).trace(*args)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    lowered.compile()
    return {
        "trace": traced_at - start,
        "lower": lowered_at - traced_at,
        "compile": time.perf_counter() - lowered_at,
    }


def _median(function, args, rounds: int) -> dict[str, float]:
    runs = [_seconds(function, *args) for _ in range(rounds)]
    return {phase: statistics.median(run[phase] for run in runs) for phase in runs[0]}


def _config(family: str, workload: str):
    size = {"modernbert": "modernbert_tiny", "roberta": "roberta_tiny", "gpt2": "gpt2_tiny"}.get(family, "tiny")
    config = load_config(f"bench:{size}", [], "bench")
    config.workloads, config.seq_len, config.batch_size, config.max_predictions = workload, 128, 16, 20
    config.model.dtype, config.model.attention_impl = "float32", "xla"
    for key, value in (GPT2_SIZE if family == "gpt2" else SIZE).items():
        config.model[key] = value
    return config


def _step(family_name: str, workload: str):
    """(config, family, work, state, first batch, key, the step on one device) of a small model's workload."""
    config = _config(family_name, workload)
    _, family, cfg = bench.checked_workloads(config)
    work = bench.workload(workload, config, family, cfg)
    batch = {k: jnp.asarray(v) for k, v in work.batches[0].items()}
    step = functools.partial(work.step, axis_name=None)  # one device, as Runner("jit") runs it
    return config, family, work, work.init_state(), batch, jax.random.key(0), step


def _masking_alone(work, batch, key):
    """(function, args) compiling the step's masking alone, drawing as the step does (classic threefry)."""
    masking = work.step.keywords["setup"].masking

    def masked(*args):
        with jax.threefry_partitionable(False):
            return mask_batch(masking, *args)

    return masked, (key, batch["input_ids"], batch["attention_mask"], batch["word_start"], batch["row_ids"])


def parts(family_name: str, workload: str, rounds: int) -> dict:
    """The phases of the whole step and the compile seconds of its parts."""
    config, family, work, state, batch, key, step = _step(family_name, workload)
    row = {"family": family_name, "workload": workload, "whole": _median(step, (state, batch, key), rounds)}
    setup = work.step.keywords["setup"]
    model = setup.model
    inputs = {name: batch[name] for name in family.inputs if name in batch}
    masking = getattr(setup, "masking", None)
    if workload == "pretrain" and masking is not None:
        row["masking"] = _median(*_masking_alone(work, batch, key), rounds)["compile"]

    def loss(params, dropout_key):
        """The step's loss alone (dropout_key None: no dropout)."""
        train = {} if dropout_key is None else {"deterministic": False, "rngs": {"dropout": dropout_key}}
        if workload == "pretrain" and masking is not None:
            positions = jnp.tile(jnp.arange(config.max_predictions)[None], (config.batch_size, 1))
            logits = model.apply({"params": params}, **inputs, masked_positions=positions, **train)["mlm_logits"]
            labels = jnp.take_along_axis(batch["input_ids"], positions, 1)
        elif workload == "pretrain":  # next word: every position predicts the next token
            logits = model.apply({"params": params}, **inputs, **train)["lm_logits"][:, :-1]
            labels = batch["input_ids"][:, 1:]
        else:
            logits, labels = model.apply({"params": params}, **inputs, **train)["logits"], batch["labels"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    gradient = jax.value_and_grad(loss)
    row["forward_backward"] = _median(lambda p: gradient(p, None), (state.params,), rounds)["compile"]
    with_dropout = _median(gradient, (state.params, key), rounds)["compile"]
    row["dropout"] = with_dropout - row["forward_backward"]  # its random draws: what the rows' keys add
    tx = setup.tx

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    row["optimizer"] = _median(update, (state.params, state.opt_state, state.params), rounds)["compile"]
    row["parameters"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| family | workload | trace s | lower s | XLA compile s | masking | forward+backward | dropout | optimizer "
        "| rest |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        whole = r["whole"]
        known = r.get("masking", 0.0) + r["forward_backward"] + r["dropout"] + r["optimizer"]
        masking = f"{r['masking']:.2f}" if "masking" in r else "—"
        lines.append(
            f"| {r['family']} | {r['workload']} | {whole['trace']:.2f} | {whole['lower']:.2f} | {whole['compile']:.2f} "
            f"| {masking} | {r['forward_backward']:.2f} | {r['dropout']:.2f} | {r['optimizer']:.2f} "
            f"| {whole['compile'] - known:.2f} |"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def each_rows_own_draws():
    """The masking's random numbers by jax.random row by row (each row's key, then its three keys
    and each draw: seven threefry hashes a row), the same bits as the batch's joined hashes."""
    joined = masking_module.threefry_draws
    masking_module.threefry_draws = masking_module.fold_in_draws
    try:
        yield
    finally:
        masking_module.threefry_draws = joined


def _alternated(variants: dict, rounds: int, step, state, batch, key, parts=()) -> dict:
    """XLA compile seconds of the step (and of each (name, function, args) of parts) under each
    variant (a context manager's factory), alternated round by round (the order swapping), and the
    compiled steps' time (9 windows of 3 steps, alternated); medians by (part or "step" or "run", variant)."""
    names = list(variants)
    seconds = collections.defaultdict(list)
    for round_ in range(rounds):
        for variant in names[:: 1 if round_ % 2 == 0 else -1]:
            with variants[variant]():
                seconds["step", variant].append(_seconds(step, state, batch, key)["compile"])
                for part, function, args in parts:
                    seconds[part, variant].append(_seconds(function, *args)["compile"])
    compiled = {}
    for variant in names:
        with variants[variant]():
            compiled[variant] = jax.jit(step).lower(state, batch, key).compile()
        jax.block_until_ready(compiled[variant](state, batch, key))
    for round_ in range(9):
        for variant in names[:: 1 if round_ % 2 == 0 else -1]:
            start = time.perf_counter()
            jax.block_until_ready([compiled[variant](state, batch, key) for _ in range(3)])
            seconds["run", variant].append((time.perf_counter() - start) / 3)
    return {part: statistics.median(values) for part, values in seconds.items()}


def masking_draws(family_name: str, rounds: int) -> dict:
    """XLA compile seconds of the pretraining step and of its masking alone, joined hashes (jft)
    against row by row, and the steps' times (_alternated)."""
    _, _, work, state, batch, key, step = _step(family_name, "pretrain")
    variants = {"joined": contextlib.nullcontext, "row by row": each_rows_own_draws}
    return _alternated(variants, rounds, step, state, batch, key, [("masking", *_masking_alone(work, batch, key))])


@contextlib.contextmanager
def whole_array_dropout_draws():
    """Dropout's masks by jax.random.bits, 16 bits a value, over the whole array by its key: jft's
    draw until 2026-12-06 (each device its own rows by a key folded with its index)."""
    by_row = layers.kept

    def random_bits(key, rate, shape):
        return jax.random.bits(key, shape, jnp.uint16) < round((1.0 - rate) * 2**16)

    layers.kept = random_bits  # the models look kept up when they trace
    try:
        yield
    finally:
        layers.kept = by_row


def dropout_draws_table(families: list[str], workloads: list[str], rounds: int) -> str:
    """The step's compile seconds and time with dropout's masks by row hashes (jft) and by
    jax.random.bits over the whole array, for each family and workload (_alternated)."""
    variants = {"row hashes": contextlib.nullcontext, "whole array": whole_array_dropout_draws}
    lines = [
        f"| family | workload | step compile s (medians of {rounds}): row hashes (jft), jax.random.bits, ratio "
        "| step ms (medians of 9 windows): row hashes, jax.random.bits |",
        "|---|---|---|---|",
    ]
    for family in families:
        for workload in workloads:
            _, _, _, state, batch, key, step = _step(family, workload)
            m = _alternated(variants, rounds, step, state, batch, key)
            print(family, workload, m, flush=True)
            compile_s, run = [m["step", v] for v in variants], [1e3 * m["run", v] for v in variants]
            lines.append(
                f"| {family} | {workload} | {compile_s[0]:.2f}, {compile_s[1]:.2f}, {compile_s[0] / compile_s[1]:.2f} "
                f"| {run[0]:.0f}, {run[1]:.0f} |"
            )
    return "\n".join(lines) + "\n"


def masking_draws_table(families: list[str], rounds: int) -> str:
    lines = [
        f"| family | pretraining step, s (medians of {rounds}): joined (jft), row by row, ratio "
        "| masking alone, s: joined, row by row | step ms (medians of 9 windows): joined, row by row |",
        "|---|---|---|---|",
    ]
    for family in families:
        m = masking_draws(family, rounds)
        print(family, m, flush=True)
        step, alone = (
            [m["step", v] for v in ("joined", "row by row")],
            [m["masking", v] for v in ("joined", "row by row")],
        )
        run = [1e3 * m["run", v] for v in ("joined", "row by row")]
        lines.append(
            f"| {family} | {step[0]:.2f}, {step[1]:.2f}, {step[0] / step[1]:.2f} | {alone[0]:.2f}, {alone[1]:.2f} "
            f"| {run[0]:.0f}, {run[1]:.0f} |"
        )
    return "\n".join(lines) + "\n"


# (pattern in a kernel's op_name, part): the first that matches names the part
CODE_PARTS = (
    (r"threefry|random_bits|_uniform|_bernoulli|_randint", "random bits (dropout, masking)"),
    (r"^transpose\(jvp.*/while", "layer loop, backward"),
    (r"^jvp.*/while", "layer loop, forward"),
    (r"^transpose\(jvp.*/(encoder|layer|h)/", "layers outside a loop, backward"),
    (r"^jvp.*/(encoder|layer|h)/", "layers outside a loop, forward"),
    (r"^transpose\(jvp", "rest of the backward pass (embeddings, heads, loss)"),
    (r"^jvp", "rest of the forward pass"),
    (r"", "outside the model (the optimizer update, norms, metrics, masking)"),
)
PHASE = re.compile(r"(Running HLO passes on|Compiling) \[(jit_\w+)\].*? time: ([\d.]+) (ms|s) ")


def code_child(implementation: str, workload: str) -> None:
    """Compiles one step (run with XLA's dump flags set by `code`)."""
    import peers

    shape = (workload, peers.CPU_SEQ, peers.CPU_BATCH, peers.CPU_SIZE)
    if implementation == "jft":
        peers.jft_step(*shape, False, 0, "shard_map", "")
    else:
        peers.flax_step(*shape, False, 0)


def code(implementation: str, workload: str) -> dict:
    """XLA's phase seconds and the generated kernels by part for one implementation's step."""
    module = {"jft": f"{workload}_step", "hf-flax": "train_step"}[implementation]
    with tempfile.TemporaryDirectory() as dump:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="cpu_compiler=1", JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = f"--xla_dump_to={dump} --xla_dump_hlo_module_re=jit_{module}"
        command = [sys.executable, __file__, "--code-child", implementation, "--workloads", workload]
        log = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stderr
        phases = collections.Counter()
        for kind, name, value, unit in PHASE.findall(log):
            if name == f"jit_{module}":
                phases["HLO passes" if kind.startswith("Running") else "code generation"] += float(value) / (
                    1000 if unit == "ms" else 1
                )
        (hlo,) = glob.glob(f"{dump}/*jit_{module}.cpu_after_optimizations.txt")
        op_names = dict(re.findall(r'^\s+(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', Path(hlo).read_text(), re.M))
        kernels, lines = collections.Counter(), collections.Counter()
        for path in glob.glob(f"{dump}/*jit_{module}.*_kernel_module.ir-with-opt.ll"):
            name = re.search(rf"jit_{module}\.(.*)_kernel_module", path).group(1)
            op_name = re.sub(rf"^jit\({module}\)/", "", op_names.get(name, ""))
            part = next(part for pattern, part in CODE_PARTS if re.search(pattern, op_name))
            kernels[part] += 1
            lines[part] += Path(path).read_text().count("\n")
    return {"phases": dict(phases), "kernels": kernels, "lines": lines}


def code_table(workloads: list[str]) -> str:
    """The --code tables: XLA's phases and the kernels by part, jft against HF Flax."""
    out = []
    for workload in workloads:
        found = {implementation: code(implementation, workload) for implementation in ("jft", "hf-flax")}
        out += [
            f"{workload}: XLA's HLO passes, code generation (s): "
            + "; ".join(
                f"{i} {r['phases'].get('HLO passes', 0):.2f}, {r['phases'].get('code generation', 0):.2f}"
                for i, r in found.items()
            ),
            "",
            "| part | jft: kernels, IR lines | HF Flax: kernels, IR lines |",
            "|---|---|---|",
        ]
        for _, part in CODE_PARTS:
            cells = [f"{r['kernels'][part]}, {r['lines'][part]:,}" for r in found.values()]
            out.append(f"| {part} | {' | '.join(cells)} |")
        totals = [f"{sum(r['kernels'].values())}, {sum(r['lines'].values()):,}" for r in found.values()]
        out += [f"| all | {' | '.join(totals)} |", ""]
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="bert,roberta,modernbert,gpt2")
    parser.add_argument("--workloads", default="pretrain,finetune")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", action="store_true", help="XLA's phases and generated kernels, jft and HF Flax")
    parser.add_argument("--masking-draws", action="store_true", help="the masking's joined hashes against row by row")
    parser.add_argument("--dropout-draws", action="store_true", help="dropout's row hashes against jax.random.bits")
    parser.add_argument("--code-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    if args.code_child:
        return code_child(args.code_child, args.workloads)
    if args.code:
        return print(code_table(args.workloads.split(",")))
    if args.masking_draws:
        return print(masking_draws_table([f for f in args.families.split(",") if f != "gpt2"], args.rounds))
    if args.dropout_draws:
        return print(dropout_draws_table(args.families.split(","), args.workloads.split(","), args.rounds))
    rows = []
    for family in args.families.split(","):
        for workload in args.workloads.split(","):
            rows.append(parts(family, workload, args.rounds))
            print(rows[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()

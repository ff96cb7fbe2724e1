"""Where a training step's compile time goes: per phase (tracing, lowering to StableHLO, XLA's
compile) for the whole step, and per part (the dynamic masking, the model's forward and backward
pass with its loss, the optimizer's update) each compiled alone, for pretraining and fine-tuning
of each text family, on this machine's CPU. The dropout column is what the forward and backward
pass takes more to compile with dropout on (its random draws) than without.

    python benchmarks/compile_parts.py                       # 4 layers × 256, seq 128, batch 16, float32
    python benchmarks/compile_parts.py --families bert --rounds 3

Each figure is the median of --rounds fresh compiles (jax's in-memory caches cleared between
them; the persistent cache off). The parts do not add up to the whole: XLA compiles one program,
and what the whole step adds (the finite check, the metrics, the gradient clipping, the L2 term,
the skipped-update logic) is what the last column leaves.
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jft.config import load_config
from jft.perf import bench
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


def parts(family_name: str, workload: str, rounds: int) -> dict:
    """The phases of the whole step and the compile seconds of its parts."""
    config = _config(family_name, workload)
    _, family, cfg = bench.checked_workloads(config)
    work = bench.workload(workload, config, family, cfg)
    state = work.init_state()
    batch = {k: jnp.asarray(v) for k, v in work.batches[0].items()}
    key = jax.random.key(0)
    step = functools.partial(work.step, axis_name=None)  # one device, as Runner("jit") runs it
    row = {"family": family_name, "workload": workload, "whole": _median(step, (state, batch, key), rounds)}
    setup = work.step.keywords["setup"]
    model = setup.model
    inputs = {name: batch[name] for name in family.inputs if name in batch}
    masking = getattr(setup, "masking", None)
    if workload == "pretrain" and masking is not None:
        args = (key, batch["input_ids"], batch["attention_mask"], batch["word_start"], batch["row_ids"])
        row["masking"] = _median(lambda *a: mask_batch(masking, *a), args, rounds)["compile"]

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="bert,roberta,modernbert,gpt2")
    parser.add_argument("--workloads", default="pretrain,finetune")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    rows = []
    for family in args.families.split(","):
        for workload in args.workloads.split(","):
            rows.append(parts(family, workload, args.rounds))
            print(rows[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()

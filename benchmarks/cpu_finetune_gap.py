"""Where a fine-tuning step's time goes on a CPU, against the peers: the figures behind the notes
on the fine-tuning gap in RESULTS.md.

    python benchmarks/cpu_finetune_gap.py [--parts 3,4]

Four parts, each printed as ratios (CPU figures are compared side by side, never quoted alone):
1. the model's gradient alone (jax.jit of jax.grad), jft scanned and unrolled against HF Flax;
2. single blocks, forward and backward, XLA against PyTorch: one dense layer, its three matmuls
   alone, attention;
3. XLA's cost analysis of whole fine-tuning steps: memory traffic and FLOPs of jft's step (with
   and without the L2 penalty and clipping) and of the peers' HF Flax step;
4. whole fine-tuning steps timed side by side: jft's default, jft doing the peers' work, jft
   without dropout, HF Flax, PyTorch eager.
The small BERT, seq and batch of `peers.py --cpu`.
"""

import argparse
import contextlib
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peers
import torch
import transformers

from jft import defaults
from jft.models import config_of
from jft.models.bert import BertConfig, BertForSequenceClassification, init_params
from jft.perf import bench
from jft.train.parallel import Runner

SEQ, BATCH, SIZE = peers.CPU_SEQ, peers.CPU_BATCH, peers.CPU_SIZE


def alternated(functions: dict, rounds: int = 6, repeats: int = 2) -> dict:
    """Median seconds of each function(), their runs alternated round by round."""
    for f in functions.values():
        f()
    seconds = {name: [] for name in functions}
    names = list(functions)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            for _ in range(repeats):
                functions[name]()
            seconds[name].append((time.perf_counter() - start) / repeats)
    return {name: float(np.median(values)) for name, values in seconds.items()}


def model_gradients() -> None:
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1000, SIZE["vocab_size"], (BATCH, SEQ)), jnp.int32)
    mask, types, labels = jnp.ones_like(ids), jnp.zeros_like(ids), jnp.zeros(BATCH, jnp.int32)
    config = BertConfig(**SIZE, attention_probs_dropout_prob=0.0)

    def jft_loss(model):
        def loss(params):
            logits = model.apply({"params": params}, ids, mask, types)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return loss

    scanned = BertForSequenceClassification(config, 2)
    unrolled = BertForSequenceClassification(dataclasses.replace(config, scan_layers=False), 2)
    params = init_params(scanned, jax.random.key(0))
    hf = transformers.FlaxBertForSequenceClassification(
        transformers.BertConfig(**SIZE, attention_probs_dropout_prob=0.0), seed=0
    )

    def hf_loss(params):
        logits = hf(ids, mask, types, params=params, train=False).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = {
        "jft, scanned": (jax.jit(jax.grad(jft_loss(scanned))), params),
        "jft, unrolled": (jax.jit(jax.grad(jft_loss(unrolled))), params),
        "hf-flax": (jax.jit(jax.grad(hf_loss)), hf.params),
    }
    times = alternated({name: lambda f=f, p=p: jax.block_until_ready(f(p)) for name, (f, p) in grads.items()})
    print("1. the model's gradient (no dropout), time ÷ HF Flax's")
    for name, seconds in times.items():
        print(f"   {name}: {seconds / times['hf-flax']:.2f}")


def blocks() -> None:
    rng = np.random.default_rng(1)
    h = rng.normal(size=(BATCH * SEQ, SIZE["hidden_size"])).astype(np.float32)
    w = rng.normal(size=(SIZE["hidden_size"], SIZE["intermediate_size"])).astype(np.float32)
    dy = rng.normal(size=(BATCH * SEQ, SIZE["intermediate_size"])).astype(np.float32)
    heads = SIZE["num_attention_heads"]
    q = rng.normal(size=(BATCH, SEQ, heads, SIZE["hidden_size"] // heads)).astype(np.float32)
    jh, jw, jdy, jq = map(jnp.asarray, (h, w, dy, q))
    th, tw, tdy = (torch.tensor(x, requires_grad=True) for x in (h, w, dy))
    tq = torch.tensor(q.transpose(0, 2, 1, 3).copy(), requires_grad=True)
    dense = jax.jit(jax.grad(lambda w, h: jnp.sum((h @ w) ** 2), argnums=(0, 1)))
    attention = jax.jit(jax.grad(lambda q: jnp.sum(jax.nn.dot_product_attention(q, q, q) * q)))
    ph, pw, pdy = (x.detach() for x in (th, tw, tdy))
    matmuls = {
        "forward": (jax.jit(lambda h, w: h @ w), (jh, jw), lambda: ph @ pw),
        "input gradient": (jax.jit(lambda d, w: d @ w.T), (jdy, jw), lambda: pdy @ pw.T),
        "weight gradient": (jax.jit(lambda h, d: h.T @ d), (jh, jdy), lambda: ph.T @ pdy),
    }

    def torch_dense():
        th.grad = tw.grad = None
        ((th @ tw) ** 2).sum().backward()

    def torch_attention():
        tq.grad = None
        (torch.nn.functional.scaled_dot_product_attention(tq, tq, tq) * tq).sum().backward()

    cases = {
        "dense layer, forward and backward": (lambda: jax.block_until_ready(dense(jw, jh)), torch_dense),
        "attention, forward and backward": (lambda: jax.block_until_ready(attention(jq)), torch_attention),
    }
    for name, (f, args, t) in matmuls.items():
        cases[f"matmul alone, {name}"] = (lambda f=f, args=args: jax.block_until_ready(f(*args)), t)
    print("2. blocks, XLA's time ÷ PyTorch's")
    for name, (xla, eager) in cases.items():
        times = alternated({"xla": xla, "torch": eager}, rounds=6, repeats=5)
        print(f"   {name}: {times['xla'] / times['torch']:.2f}")


@contextlib.contextmanager
def finetune_defaults(l2: float | None = None, clip: float | None = None):
    """The fine-tuning defaults (jft.defaults.finetune, what bench's step uses) with the L2 weight
    and the clipping norm replaced (None: kept)."""
    default = defaults.finetune

    def changed():
        config = default()
        config.l2.weight = config.l2.weight if l2 is None else l2
        config.optim.max_grad_norm = config.optim.max_grad_norm if clip is None else clip
        return config

    defaults.finetune = changed
    try:
        yield
    finally:
        defaults.finetune = default


def step_costs() -> None:
    print("3. XLA's cost analysis of a whole fine-tuning step (unrolled layers)")
    for label, l2, clip in (("jft", None, None), ("jft, no L2", 0.0, None), ("jft, no L2, no clipping", 0.0, 0.0)):
        with finetune_defaults(l2, clip):
            config = peers._jft_config("finetune", SEQ, BATCH, SIZE, False, 0, "shard_map", "", scan_layers=False)
            runner = Runner("shard_map")
            work = bench.workload("finetune", config, *config_of(config.model))
            state = jax.eval_shape(work.init_state)
            program = runner.compile(work.step).lower(
                state, work.batches[0], jax.eval_shape(lambda: jax.random.PRNGKey(0))
            )
            _print_cost(label, program.compile())
    hf = transformers.FlaxBertForSequenceClassification(
        transformers.BertConfig(**SIZE, attention_probs_dropout_prob=0.0), seed=0
    )
    data = peers._random_batch("finetune", SEQ, BATCH, SIZE["vocab_size"], 5, 0)
    inputs = {k: jnp.asarray(data[k], jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    tx = optax.adamw(1e-4)

    def loss(params, rng):
        logits = hf(**inputs, params=params, dropout_rng=rng, train=True).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(data["labels"])).mean()

    def step(params, opt_state, rng):
        rng, dropout = jax.random.split(rng)
        updates, opt_state = tx.update(jax.grad(loss)(params, dropout), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng

    program = jax.jit(step, donate_argnums=(0, 1)).lower(hf.params, tx.init(hf.params), jax.random.PRNGKey(0))
    _print_cost("hf-flax (peers.py's step)", program.compile())


def _print_cost(label: str, compiled) -> None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    print(f"   {label}: {cost['bytes accessed'] / 1e9:.2f} GB accessed, {cost['flops'] / 1e9:.1f} GFLOP")


def equal_work(rounds: int = 8) -> None:
    """Whole fine-tuning steps timed side by side: jft as it runs by default (L2 penalty, clipping,
    scanned layers), jft doing the peers' work (plain AdamW), jft without dropout (what its random
    bits cost), HF Flax and PyTorch eager."""
    print("4. Whole fine-tuning steps, step time / jft's default, alternated")
    shape = ("finetune", SEQ, BATCH, SIZE, False, 0, "shard_map", "")
    steps = {"jft": peers.jft_step(*shape), "jft, unrolled": peers.jft_step(*shape, scan_layers=False)}
    with finetune_defaults(l2=0.0, clip=0.0):
        steps["jft, no L2, no clipping"] = peers.jft_step(*shape)
        steps["jft, no L2, no clipping, unrolled"] = peers.jft_step(*shape, scan_layers=False)
    steps["jft, no dropout"] = peers.jft_step(*shape, hidden_dropout_prob=0.0)
    steps["hf-flax"] = peers.flax_step("finetune", SEQ, BATCH, SIZE, False, 0)
    steps["hf-torch-eager"] = (*peers.torch_step("finetune", SEQ, BATCH, SIZE, False, 0, False), None)

    def run(step, sync):
        step()
        sync()

    seconds = alternated({name: functools.partial(run, step, sync) for name, (step, sync, _) in steps.items()}, rounds)
    for name, value in seconds.items():
        print(f"   {name}: {value / seconds['jft']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,2,3,4", help="which of the four parts to run")
    parts = parser.parse_args().parts.split(",")
    for number, part in enumerate((model_gradients, blocks, step_costs, equal_work), 1):
        if str(number) in parts:
            part()

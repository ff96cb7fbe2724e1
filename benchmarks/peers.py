"""jft against its peers on one device, same shapes, one process tree; writes RESULTS.md.

    python benchmarks/peers.py --out benchmarks/RESULTS.md            # BERT-base, bf16, on a GPU
    python benchmarks/peers.py --smoke --out /tmp/RESULTS.md          # tiny shapes, any machine

Each (case, implementation) runs in its own child process (`--child`), so JAX and PyTorch never
share a device's memory. Implementations:
- jft: `jft.bench` (the trainer's own steps: bf16, cuDNN attention, MLM logits at masked
  positions only, donated state), backends shard_map and pmap; on short texts, packed and
  bucketed batches (the peers pad to seq);
- hf-torch-eager / hf-torch-compile: transformers' PyTorch BertForPreTraining /
  BertForSequenceClassification, SDPA attention, bf16 autocast, fused AdamW, eager and
  torch.compile;
- hf-flax: transformers 4.57's FlaxBertForPreTraining / FlaxBertForSequenceClassification in
  bf16, a jitted optax AdamW step with donated state.
Every implementation: attention dropout 0 (cuDNN attention in jft has none), hidden dropout 0.1,
random tokens, the same warm-up and median-of-windows timing as `jft bench`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

# (name, workload, seq, batch, mean length): the cases of the targets table. A mean length > 0:
# texts of that mean length (as SST-2's), which the peers pad to seq and jft packs or buckets.
CASES = [
    ("MLM pretraining", "pretrain", 128, 256, 0),
    ("classification fine-tuning", "finetune", 128, 256, 0),
    ("MLM pretraining", "pretrain", 512, 32, 0),
    ("classification fine-tuning", "finetune", 128, 32, 0),
    ("short-text fine-tuning", "finetune", 128, 32, 25),
]
IMPLEMENTATIONS = ("jft", "hf-torch-eager", "hf-torch-compile", "hf-flax")
JFT_RUNS = {False: ("jft:shard_map", "jft:pmap"), True: ("jft:shard_map:packed", "jft:shard_map:bucketed")}
MAX_PREDICTIONS = {128: 20, 512: 80}
NOTES_HEADING = "## Notes"  # RESULTS.md from here on is written by hand and kept by each run


def _size(smoke: bool) -> dict:
    if smoke:
        return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=1000)
    return dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=30522)


def _timed(step, warmup: int, windows: int, window_steps: int, sync) -> float:
    """Median seconds per step over windows, after warm-up."""
    for _ in range(warmup):
        step()
    sync()
    seconds = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(window_steps):
            step()
        sync()
        seconds.append((time.perf_counter() - start) / window_steps)
    return float(np.median(seconds))


def _random_batch(workload: str, seq: int, batch: int, vocab: int, predictions: int, mean_length: int) -> dict:
    """Random tokens: full rows, or (mean_length > 0) texts of jft.bench's lengths padded to seq."""
    from jft.data.synthetic import sentence_lengths  # numpy only: no JAX in a PyTorch child

    rng = np.random.default_rng(0)
    lengths = sentence_lengths(rng, batch, mean_length, seq) if mean_length else np.full(batch, seq)
    mask = np.arange(seq)[None] < lengths[:, None]
    out = {"input_ids": rng.integers(1000 % vocab, vocab, (batch, seq)) * mask, "attention_mask": mask}
    out["token_type_ids"] = (np.arange(seq)[None] >= seq // 2).repeat(batch, 0) * mask
    if workload == "pretrain":
        labels = np.full((batch, seq), -100)
        for row in range(batch):
            positions = rng.choice(seq, predictions, replace=False)
            labels[row, positions] = out["input_ids"][row, positions]
        out["labels"], out["next_sentence_label"] = labels, rng.integers(0, 2, batch)
    else:
        out["labels"] = rng.integers(0, 2, batch)
    return {k: v.astype(np.int64) for k, v in out.items()}


def child_jft(workload, seq, batch, size, smoke, mean_length, backend, layout) -> dict:
    from jft import bench
    from jft.config import model_config

    config = bench.default_config()
    config.model = model_config(
        "base",
        **size,
        dtype="float32" if smoke else "bfloat16",
        attention_impl="xla" if smoke else "cudnn",
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=512,
    )
    config.workloads, config.seq_len, config.batch_size, config.backend = workload, seq, batch, backend
    config.max_predictions = MAX_PREDICTIONS.get(seq, 5)
    config.finetune.mean_length, config.finetune.layout = mean_length, layout or "padded"
    result = bench.run(config)["results"][0]
    return {
        "step_seconds": result["step_ms"] / 1e3,
        "examples_per_second": result["sequences_per_second"],
        "peak_memory_gib": result["peak_memory_gib"],
    }


def child_torch(workload, seq, batch, size, smoke, mean_length, compiled) -> dict:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = transformers.BertConfig(**size, attention_probs_dropout_prob=0.0)
    cls = transformers.BertForPreTraining if workload == "pretrain" else transformers.BertForSequenceClassification
    model = cls._from_config(config, attn_implementation="sdpa").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    data = _random_batch(workload, seq, batch, size["vocab_size"], MAX_PREDICTIONS.get(seq, 5), mean_length)
    inputs = {k: torch.tensor(v, device=device) for k, v in data.items()}
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=not smoke):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timed(step, 3, 10, 5, sync)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"step_seconds": seconds, "examples_per_second": batch / seconds, "peak_memory_gib": memory}


def child_flax(workload, seq, batch, size, smoke, mean_length) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    import transformers

    config = transformers.BertConfig(**size, attention_probs_dropout_prob=0.0)
    dtype = jnp.float32 if smoke else jnp.bfloat16
    if workload == "pretrain":
        model = transformers.FlaxBertForPreTraining(config, dtype=dtype, seed=0)
    else:
        model = transformers.FlaxBertForSequenceClassification(config, dtype=dtype, seed=0)
    data = _random_batch(workload, seq, batch, size["vocab_size"], MAX_PREDICTIONS.get(seq, 5), mean_length)
    inputs = {k: jnp.asarray(data[k], jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    tx = optax.adamw(1e-4)

    def loss_fn(params, rng):
        out = model(**inputs, params=params, dropout_rng=rng, train=True)
        if workload == "pretrain":
            labels = jnp.asarray(data["labels"])
            logits = out.prediction_logits.astype(jnp.float32)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
            mlm = (losses * (labels >= 0)).sum() / (labels >= 0).sum()
            nsp = optax.softmax_cross_entropy_with_integer_labels(
                out.seq_relationship_logits.astype(jnp.float32), jnp.asarray(data["next_sentence_label"])
            ).mean()
            return mlm + nsp
        logits = out.logits.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(data["labels"])).mean()

    def train_step(params, opt_state, rng):
        rng, dropout = jax.random.split(rng)
        grads = jax.grad(loss_fn)(params, dropout)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rng

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    state = [model.params, tx.init(model.params), jax.random.PRNGKey(0)]

    def step():
        state[:] = train_step(*state)

    seconds = _timed(step, 3, 10, 5, lambda: jax.block_until_ready(state))
    stats = jax.devices()[0].memory_stats() or {}
    memory = stats.get("peak_bytes_in_use", 0) / 2**30 or None
    return {"step_seconds": seconds, "examples_per_second": batch / seconds, "peak_memory_gib": memory}


def run_child(args) -> dict:
    shape = (args.workload, args.seq, args.batch, _size(args.smoke), args.smoke, args.mean_length)
    if args.child.startswith("jft"):
        _, backend, *layout = args.child.split(":")
        return child_jft(*shape, backend, layout[0] if layout else "")
    if args.child.startswith("hf-torch"):
        return child_torch(*shape, compiled=args.child == "hf-torch-compile")
    return child_flax(*shape)


def _versions() -> dict:
    out = {"python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # a peer's package may be missing; its rows then say why
            out[name] = "missing"
    try:
        out["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["gpu"] = "none (CPU)"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/RESULTS.md")
    parser.add_argument("--smoke", action="store_true", help="tiny model and batches: checks the script, not speed")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mean-length", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(args)))
        return

    implementations = [i.strip() for i in args.implementations.split(",")]
    peers = [impl for impl in implementations if impl != "jft"]
    notes, versions = _notes_section(args.out), _versions()
    rows = []
    for name, workload, seq, batch, mean_length in CASES:
        if args.smoke:
            seq, batch, mean_length = seq // 8, max(batch // 32, 2), mean_length // 8
        runs = [*(JFT_RUNS[bool(mean_length)] if "jft" in implementations else ()), *peers]
        for impl in runs:
            command = [sys.executable, __file__, "--child", impl, "--workload", workload, "--seq", str(seq)]
            command += ["--batch", str(batch), "--mean-length", str(mean_length)] + (["--smoke"] if args.smoke else [])
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"case": name, "seq": seq, "batch": batch, "impl": impl, "error": error[:200]})
            else:
                result = json.loads(lines[-1].removeprefix("RESULT "))
                rows.append({"case": name, "seq": seq, "batch": batch, "impl": impl, **result})
            print(json.dumps(rows[-1]), flush=True)
            with open(args.out, "w") as f:  # after every row: a run cut short keeps what it measured
                f.write(results_markdown(rows, versions, " ".join(sys.argv)) + notes)
    print(f"wrote {args.out}")


def _notes_section(path: str) -> str:
    """The hand-kept notes of an existing RESULTS.md (from its NOTES_HEADING on), kept across runs."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return ""
    return "\n" + text[text.index(NOTES_HEADING) :] if NOTES_HEADING in text else ""


def results_markdown(rows: list[dict], versions: dict, command: str) -> str:
    """RESULTS.md: the environment, the command, and a table with ratios to PyTorch + torch.compile."""
    lines = [
        "# jft against its peers",
        "",
        f"- command: `{command}`",
        f"- device and driver: {versions['gpu']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items() if k != 'gpu')}",
        "",
        "Short-text fine-tuning: texts of mean length 25 tokens; the peers pad them to seq, jft packs",
        "them (several a row) or buckets them (batches of similar lengths); its seq/s counts examples.",
        "",
        "| case | seq | batch | implementation | step ms | seq/s | × torch.compile | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['case']} | {row['seq']} | {row['batch']} | {row['impl']} | failed: {row['error']} |||"
            )
            continue
        same = [r for r in rows if (r["case"], r["seq"], r["batch"]) == (row["case"], row["seq"], row["batch"])]
        reference = next((r for r in same if r["impl"] == "hf-torch-compile" and "error" not in r), None)
        ratio = f"{row['examples_per_second'] / reference['examples_per_second']:.2f}" if reference else "—"
        memory = "—" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f}"
        lines.append(
            f"| {row['case']} | {row['seq']} | {row['batch']} | {row['impl']} | {1e3 * row['step_seconds']:.1f} | "
            f"{row['examples_per_second']:,.0f} | {ratio} | {memory} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

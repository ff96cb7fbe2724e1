"""jft against its peers on one device, same shapes, one process tree; writes RESULTS.md.

    python benchmarks/peers.py --out benchmarks/RESULTS.md            # BERT-base, bf16, on a GPU
    python benchmarks/peers.py --smoke --out /tmp/RESULTS.md          # tiny shapes, any machine
    python benchmarks/peers.py --cpu --out /tmp/cpu.md                 # side by side on a CPU, one process

Each (case, implementation) runs in its own child process (`--child`), so JAX and PyTorch never
share a device's memory. Implementations:
- jft: `jft.perf.bench` (the trainer's own steps: bf16, cuDNN attention, MLM logits at masked
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
import functools
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
# pmap against shard_map is an ablation (benchmarks/ablations.py): one backend here saves a child a case
JFT_RUNS = {False: ("jft:shard_map",), True: ("jft:shard_map:packed", "jft:shard_map:bucketed")}
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
    """Random tokens: full rows, or (mean_length > 0) texts of jft.perf.bench's lengths padded to seq."""
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


def jft_step(workload, seq, batch, size, gpu, mean_length, backend, layout, **model) -> tuple:
    """(step, sync, compile seconds) of jft's own step (jft.perf.bench's workload), state on the devices."""
    import jax

    from jft.models import config_of
    from jft.perf import bench
    from jft.train.parallel import Runner

    config = _jft_config(workload, seq, batch, size, gpu, mean_length, backend, layout, **model)
    runner = Runner(backend)
    work = bench.workload(workload, config, *config_of(config.model), runner.batch_multiple())
    state = [runner.put_replicated(work.init_state())]
    batches = [runner.put_batch(b) for b in work.batches]
    key = runner.put_replicated(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = runner.compile(work.step).lower(state[0], batches[0], key).compile()
    seconds = time.perf_counter() - start

    def step():
        state[0] = compiled(state[0], batches[0], key)[0]

    return step, lambda: jax.block_until_ready(state), seconds


def jft_every_row_step(*args, **model) -> tuple:
    """jft_step with the encoder's last layer computing every row (ablations.py): what the step
    compiles and costs without the last layer kept to the rows the heads read."""
    from ablations import every_row_in_the_last_layer

    with every_row_in_the_last_layer():
        return jft_step(*args, **model)


def _jft_config(workload, seq, batch, size, gpu, mean_length, backend, layout, **model):
    """A bench config for jft's side of a case: bf16 and cuDNN attention on a GPU."""
    from jft import defaults

    config = defaults.bench()
    config.model = defaults.model_fields(
        "base",
        **size,
        dtype="bfloat16" if gpu else "float32",
        attention_impl="cudnn" if gpu else "xla",
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=512,
        **model,
    )
    config.workloads, config.seq_len, config.batch_size, config.backend = workload, seq, batch, backend
    config.max_predictions = MAX_PREDICTIONS.get(seq, 5)
    config.finetune.mean_length, config.finetune.layout = mean_length, layout or "padded"
    return config


def child_jft(workload, seq, batch, size, smoke, mean_length, backend, layout) -> dict:
    from jft.perf import bench

    config = _jft_config(workload, seq, batch, size, not smoke, mean_length, backend, layout)
    result = bench.run(config)["results"][0]
    return {
        "step_seconds": result["step_ms"] / 1e3,
        "examples_per_second": result["sequences_per_second"],
        "peak_memory_gib": result["peak_memory_gib"],
        "compile_seconds": result["compile_seconds"],
    }


def torch_step(workload, seq, batch, size, autocast, mean_length, compiled) -> tuple:
    """(step, sync) of transformers' PyTorch model with AdamW (fused on a GPU)."""
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
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, torch.cuda.synchronize if device == "cuda" else (lambda: None)


def child_torch(workload, seq, batch, size, smoke, mean_length, compiled) -> dict:
    import torch

    step, sync = torch_step(workload, seq, batch, size, not smoke, mean_length, compiled)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()  # torch.compile compiles in the first step
    step()
    sync()
    first_step = time.perf_counter() - start
    seconds = _timed(step, 3, 10, 5, sync)
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "step_seconds": seconds,
        "examples_per_second": batch / seconds,
        "peak_memory_gib": memory,
        "compile_seconds": first_step if compiled else None,
    }


def flax_step(workload, seq, batch, size, bf16, mean_length) -> tuple:
    """(step, sync, compile seconds) of transformers 4.57's Flax model with a jitted optax AdamW step."""
    import jax
    import jax.numpy as jnp
    import optax
    import transformers

    config = transformers.BertConfig(**size, attention_probs_dropout_prob=0.0)
    dtype = jnp.bfloat16 if bf16 else jnp.float32
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

    state = [model.params, tx.init(model.params), jax.random.PRNGKey(0)]
    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(*state).compile()
    seconds = time.perf_counter() - start

    def step():
        state[:] = compiled(*state)

    return step, lambda: jax.block_until_ready(state), seconds


def child_flax(workload, seq, batch, size, smoke, mean_length) -> dict:
    import jax

    step, sync, compile_seconds = flax_step(workload, seq, batch, size, not smoke, mean_length)
    seconds = _timed(step, 3, 10, 5, sync)
    stats = jax.devices()[0].memory_stats() or {}
    memory = stats.get("peak_bytes_in_use", 0) / 2**30 or None
    return {
        "step_seconds": seconds,
        "examples_per_second": batch / seconds,
        "peak_memory_gib": memory,
        "compile_seconds": compile_seconds,
    }


# The CPU comparison: a small BERT (BERT-mini's sizes with BERT's vocabulary), float32.
CPU_SIZE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, vocab_size=30522)
CPU_SEQ, CPU_BATCH = 128, 16


def model_fields(size: str) -> dict:
    """The sizes of 'small' (CPU_SIZE) or of a preset (tiny, mini, base, large), with BERT's vocabulary."""
    from jft.models.bert.config import PRESETS

    return CPU_SIZE if size == "small" else {**PRESETS[size], "vocab_size": 30522}


def compile_medians(makers: dict, rounds: int) -> dict:
    """Median seconds of `rounds` fresh compiles of each JAX implementation's step (makers: name ->
    a function making (step, sync, compile seconds)), alternated with jax's caches cleared before
    each, so that none pays alone for the process's first compiles or for a busy moment."""
    import jax

    seconds = {name: [] for name in makers}
    for round_ in range(rounds):
        for name in list(makers)[round_ % len(makers) :] + list(makers)[: round_ % len(makers)]:
            jax.clear_caches()
            seconds[name].append(makers[name]()[2])
    return {name: float(np.median(values)) for name, values in seconds.items()}


def cpu_side_by_side(rounds: int, window: int, compile_rounds: int) -> str:
    """jft, HF Flax and PyTorch eager on this CPU in one process, their windows of steps
    alternated (the order rotating each round), so that load and frequency changes fall on every
    implementation alike; medians of the windows, as a Markdown section with ratios. Compile
    times: compile_medians of the JAX steps."""
    versions, load = _versions(), [os.getloadavg()[0]]
    lines = [
        f"CPU, side by side: `python benchmarks/peers.py --cpu` ({rounds} rounds of {window} steps), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "gpu"),
        "",
        f"Small BERT (hidden {CPU_SIZE['hidden_size']}, {CPU_SIZE['num_hidden_layers']} layers, "
        f"{CPU_SIZE['num_attention_heads']} heads, vocab {CPU_SIZE['vocab_size']:,}), "
        f"seq {CPU_SEQ}, batch {CPU_BATCH}, "
        "float32, hidden dropout 0.1, attention dropout 0, AdamW; fine-tuning: classification of full rows.",
        "",
        "| workload | implementation | step time ÷ jft's, median (p10–p90) | jft's speed × this "
        "| compile: median s, ÷ jft's |",
        "|---|---|---|---|---|",
    ]
    for workload in ("pretrain", "finetune"):
        shape = (workload, CPU_SEQ, CPU_BATCH, CPU_SIZE)
        makers = {
            "jft": functools.partial(jft_step, *shape, False, 0, "shard_map", ""),
            "jft, scan_layers=False": functools.partial(jft_step, *shape, False, 0, "shard_map", "", scan_layers=False),
            "jft, last layer every row": functools.partial(jft_every_row_step, *shape, False, 0, "shard_map", ""),
            "hf-flax": functools.partial(flax_step, *shape, False, 0),
        }
        compile_s = compile_medians(makers, compile_rounds)
        steps = {name: make() for name, make in makers.items()}
        steps["hf-torch-eager"] = torch_step(*shape, False, 0, False)
        for step, sync, *_ in steps.values():
            for _ in range(2):
                step()
            sync()
        seconds = {name: [] for name in steps}
        names = list(steps)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                step, sync, *_ = steps[name]
                start = time.perf_counter()
                for _ in range(window):
                    step()
                sync()
                seconds[name].append((time.perf_counter() - start) / window)
        jft = float(np.median(seconds["jft"]))
        for name, values in seconds.items():
            p10, p50, p90 = np.percentile(values, [10, 50, 90]) / jft
            compiled = "—"
            if name in compile_s:
                compiled = f"{compile_s[name]:.2f} s, {compile_s[name] / compile_s['jft']:.2f}"
            lines.append(f"| {workload} | {name} | {p50:.2f} ({p10:.2f}–{p90:.2f}) | {p50:.2f} | {compiled} |")
        load.append(os.getloadavg()[0])
    lines += [
        "",
        f"Load average (1 min) at the start and after each workload: {', '.join(f'{x:.2f}' for x in load)}. "
        f"Compile: `lower().compile()` of the whole training step, the median of {compile_rounds} fresh "
        "compiles of each JAX implementation, alternated. CPU figures are given only as ratios "
        "of implementations run side by side.",
    ]
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--cases", default="", help="numbers of CASES to run, from 1 (e.g. 3,4,5); all by default")
    parser.add_argument("--cpu", action="store_true", help="jft, HF Flax and PyTorch eager side by side on this CPU")
    parser.add_argument("--rounds", type=int, default=9, help="--cpu: rounds of alternated windows")
    parser.add_argument("--window", type=int, default=3, help="--cpu: steps a window")
    parser.add_argument("--compile-rounds", type=int, default=5, help="--cpu: fresh compiles of each JAX step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mean-length", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(args)))
        return
    if args.cpu:
        text = cpu_side_by_side(args.rounds, args.window, args.compile_rounds)
        print(text)
        if args.out != parser.get_default("out"):
            with open(args.out, "w") as f:
                f.write(text)
        return

    implementations = [i.strip() for i in args.implementations.split(",")]
    peers = [impl for impl in implementations if impl != "jft"]
    notes, versions = _notes_section(args.out), _versions()
    rows = []
    chosen = [int(n) for n in args.cases.split(",")] if args.cases else range(1, len(CASES) + 1)
    for name, workload, seq, batch, mean_length in (CASES[n - 1] for n in chosen):
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
        "Compile s: jft's every batch shape of its stream (one for padded rows), HF Flax's one step;",
        "torch.compile's first step, which compiles.",
        "",
        "| case | seq | batch | implementation | step ms | seq/s | × torch.compile | peak GiB | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['case']} | {row['seq']} | {row['batch']} | {row['impl']} | failed: {row['error']} ||||"
            )
            continue
        same = [r for r in rows if (r["case"], r["seq"], r["batch"]) == (row["case"], row["seq"], row["batch"])]
        reference = next((r for r in same if r["impl"] == "hf-torch-compile" and "error" not in r), None)
        ratio = f"{row['examples_per_second'] / reference['examples_per_second']:.2f}" if reference else "—"
        memory = "—" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f}"
        compiled = "—" if row.get("compile_seconds") is None else f"{row['compile_seconds']:.1f}"
        lines.append(
            f"| {row['case']} | {row['seq']} | {row['batch']} | {row['impl']} | {1e3 * row['step_seconds']:.1f} | "
            f"{row['examples_per_second']:,.0f} | {ratio} | {memory} | {compiled} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""`jft bench`: times the trainer's own pretraining and fine-tuning steps on synthetic batches.

The steps are the ones `jft pretrain` and `jft finetune` compile (jft.train.steps under
jft.train.parallel),
with the same optimizer and state donation. Batches are put on the devices before timing, as the
trainers' prefetch does. A measurement: each batch shape compiled ahead of time (timed), warm-up
steps, then `windows` windows of at least `window_steps` steps, each closed by a
block_until_ready; the step time is the median over windows. Reported per workload:
sequences/s, tokens/s (real tokens, not padding), model TFLOP/s and MFU (the family's FLOPs count),
compile time, XLA's memory count of the step's program, and the device's peak memory.
"""

import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
import optax
from ml_collections import ConfigDict

from jft import defaults
from jft.data.synthetic import sentence_lengths
from jft.errors import JftError, choices
from jft.files import write_json
from jft.models import Family, Head, config_of
from jft.perf import tpu
from jft.perf.memory import peak_bytes
from jft.tasks.batches import LAYOUTS, TaskBatches, fill_rows, step_inputs
from jft.tasks.images import ImageData
from jft.tasks.records import Encoded
from jft.train.augment import ImageInputs
from jft.train.masking import MaskingConfig
from jft.train.optim import make_optimizer, weight_decay_mask
from jft.train.parallel import Runner
from jft.train.steps import (
    FinetuneSetup,
    PretrainSetup,
    create_finetune_state,
    create_state,
    finetune_step,
    pretrain_step,
)

WORKLOADS = ("pretrain", "finetune")
IMAGENET_CLASSES = 1000  # an image model's pretraining workload: the ImageNet recipe
# Dense bf16 tensor-core peaks (FLOP/s) by device kind, for MFU; other devices report no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}


def run(config: ConfigDict) -> dict:
    """Measures each workload of config; returns {"environment": ..., "results": [...]}."""
    workloads, family, cfg = checked_workloads(config)
    runner = Runner(config.backend, shard_state=config.shard_state)
    runner.check_batch(config.batch_size)
    report = {"environment": environment(), "config": config.to_dict(), "results": [], "skipped": []}
    reason = cfg.platform_problem(jax.default_backend())
    if reason:
        report["skipped"] = [{"workload": w, "reason": reason} for w in workloads]
        print(f"bench: skipped {', '.join(workloads)}: {reason}", file=sys.stderr, flush=True)
        return report
    for name in workloads:
        print(
            f"bench: measuring {name} (batch {config.batch_size}, seq {config.seq_len}) ...",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        work = workload(name, config, family, cfg, runner.batch_multiple())
        report["results"].append(measure(config, work, runner))
        print(f"bench: {name} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return report


def checked_workloads(config: ConfigDict) -> tuple[list[str], Family, Any]:
    """The workloads a bench config names, its family and model, after the checks that need no device."""
    if "workloads" not in config:
        raise JftError(
            "jft bench takes a bench config (bench:tiny, bench:base, ... or configs/bench.py:SIZE), not a run's."
        )
    workloads = [w.strip() for w in config.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        raise JftError(f"workloads '{config.workloads}': choose from {WORKLOADS}, comma-separated.")
    if config.finetune.layout not in LAYOUTS:
        raise JftError(f"finetune.layout '{config.finetune.layout}' is not one of {choices(LAYOUTS)}.")
    family, cfg = config_of(config.model)
    if family.modality == "text" and config.seq_len > cfg.max_length:
        raise JftError(
            f"seq_len {config.seq_len} is longer than the position table ({cfg.max_length}); "
            f"use seq_len <= {cfg.max_length}."
        )
    return workloads, family, cfg


def compile_for(config: ConfigDict, topology: str, *, search: bool = False, remats: tuple = tpu.REMATS) -> dict:
    """Compiles config's workloads ahead of time for a TPU topology (jft.perf.tpu): memory per device
    against its HBM, and with `search` the largest batch a device holds for each remat choice."""
    target = tpu.parse_topology(topology)
    tpu.require_libtpu()
    workloads, _, _ = checked_workloads(config)
    # This host only compiles: its own TPU runtime (if libtpu would start one) has nothing to do.
    jax.config.update("jax_platforms", "cpu")
    report = tpu.compile_report(config, target, workloads, workload, search=search, remats=remats)
    return {"environment": environment(), "config": config.to_dict(), **report}


def tpu_table(report: dict) -> str:
    """A compile report (compile_for) as Markdown."""
    env = report["environment"]
    return f"jax {env['jax']}, libtpu {report['libtpu']}, {env['date']}: " + tpu.table(report)


def environment() -> dict:
    device = jax.devices()[0]
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


@dataclasses.dataclass
class Workload:
    """A step to measure or compile, with what it runs on: the step (per device, not compiled),
    a function making its initial state (jax.eval_shape of it gives the state's shapes), the host
    batches in the order they are run, and per batch: examples, real tokens and model FLOPs."""

    name: str
    step: Callable
    init_state: Callable[[], Any]
    batches: list[dict[str, np.ndarray]]
    examples: list[int]
    tokens: list[int]
    flops: list[float]
    shape: str


def pretrain_workload(config: ConfigDict, family: Family, cfg, model=None) -> Workload:
    """pretrain_step (of `model`, by default the family's pretraining module) on one batch of random
    rows: masked-LM (+ NSP), or next-word over every token for a next-word family (one document a
    row: GPT-2's full rows)."""
    batch, seq = config.batch_size, config.seq_len
    next_word = "next_word" in family.objectives
    nsp = config.nsp and "mlm+nsp" in family.objectives
    model = model or family.module(cfg, Head("pretraining", nsp=nsp))
    tx, schedule = make_optimizer(defaults.pretrain().optim, 10_000)
    masking = None
    if not next_word:
        masking = MaskingConfig(
            mask_id=103,
            vocab_size=cfg.vocab_size,
            special_ids=(0, 101, 102, 103),
            max_predictions=config.max_predictions,
        )
    rng = np.random.default_rng(config.seed)
    ids = rng.integers(cfg.vocab_size // 2, cfg.vocab_size, (batch, seq)).astype(np.int32)
    host = {
        "input_ids": ids,
        "token_type_ids": (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0),
        "attention_mask": np.ones_like(ids),
        "word_start": np.ones_like(ids, bool) if not next_word else np.arange(seq)[None].repeat(batch, 0) == 0,
        "nsp_labels": rng.integers(0, 2, batch).astype(np.int32),
        "row_ids": np.arange(batch, dtype=np.int32),
    }
    objective = "next_word" if next_word else "mlm"
    setup = PretrainSetup(model, tx, schedule, masking, nsp=nsp, inputs=family.inputs, objective=objective)
    predictions = seq if next_word else config.max_predictions
    return Workload(
        "pretrain",
        functools.partial(pretrain_step, setup=setup),
        lambda: create_state(family.init_params(model, jax.random.key(config.seed)), tx),
        [host],
        [batch],
        [batch * seq],
        [family.flops(cfg, batch, seq, predictions=predictions)],
        f"seq {seq}" + (", next-word" if next_word else ""),
    )


def one_epoch(batches, row_multiple: int) -> tuple[list[int], list[dict]]:
    """The first epoch of batches (a TaskBatches or an ImageBatches) as the step takes them, each
    filled out to a multiple of row_multiple rows, and the examples each holds."""
    examples, host_batches = [], []
    for indices in batches.epoch_indices(0):
        count, host = step_inputs(batches.batch(indices))
        examples.append(count)
        host_batches.append(fill_rows(host, row_multiple))
    return examples, host_batches


def finetune_workload(config: ConfigDict, family: Family, cfg, row_multiple: int = 1) -> Workload:
    """finetune_step on config.finetune.batches batches of random examples laid out per
    finetune.layout, each filled out to a multiple of row_multiple rows (the devices)."""
    f, batch, seq = config.finetune, config.batch_size, config.seq_len
    model = family.module(cfg, Head("classification", f.num_labels))
    ft = defaults.finetune()
    tx, schedule = make_optimizer(ft.optim, 10_000)
    mask = weight_decay_mask(jax.eval_shape(lambda: family.init_params(model, jax.random.key(0))))
    setup = FinetuneSetup(model, tx, schedule, "classification", ft.l2.weight, mask, inputs=family.inputs)
    data = task_data(config, cfg)
    batches = TaskBatches(
        data, "classification", batch, config.seed, layout=f.layout, max_len=seq, max_segments=f.max_segments
    )
    examples, host_batches = one_epoch(batches, row_multiple)
    pooled = f.max_segments if f.layout == "packed" else 1
    lengths = "full rows" if not f.mean_length else f"mean length {np.mean([len(x) for x in data.input_ids]):.1f}"
    return Workload(
        "finetune",
        functools.partial(finetune_step, setup=setup),
        lambda: create_finetune_state(family.init_params(model, jax.random.key(config.seed)), tx),
        host_batches,
        examples,
        [int(b["attention_mask"].sum()) for b in host_batches],
        [
            family.flops(cfg, *b["input_ids"].shape, num_labels=f.num_labels, pooled_per_row=pooled)
            for b in host_batches
        ],
        f"seq {seq}, {lengths}, {f.layout}" + (f", {batches.rows} rows" if f.layout == "packed" else ""),
    )


def image_workload(name: str, config: ConfigDict, family: Family, cfg, row_multiple: int = 1) -> Workload:
    """An image classifier's finetune_step (the step supervised pretraining runs too) on
    finetune.batches batches of random uint8 images at the model's side, cropped, flipped and
    normalised in the step (unless not config.augment): 'pretrain' with ImageNet's 1,000 classes, 'finetune' with
    finetune.num_labels. Reported per second: images (the seq/s column); tokens: none."""
    labels = IMAGENET_CLASSES if name == "pretrain" else config.finetune.num_labels
    model = family.module(cfg, Head("classification", labels))
    ft = defaults.finetune()
    tx, schedule = make_optimizer(ft.optim, 10_000)
    mask = weight_decay_mask(jax.eval_shape(lambda: family.init_params(model, jax.random.key(0))))
    images = ImageInputs.of(cfg, augment=config.augment)
    setup = FinetuneSetup(
        model, tx, schedule, "classification", ft.l2.weight, mask, inputs=family.inputs, images=images
    )
    rng, side, count = np.random.default_rng(config.seed), cfg.image_size, config.finetune.batches * config.batch_size
    pixels = rng.integers(0, 256, (count, side, side, cfg.num_channels), dtype=np.uint8)
    data = ImageData(pixels, rng.integers(0, labels, count).astype(np.int32), [])
    batches = data.batches(config.batch_size, config.seed, shuffle=False)
    examples, host_batches = one_epoch(batches, row_multiple)
    return Workload(
        name,
        functools.partial(finetune_step, setup=setup),
        lambda: create_finetune_state(family.init_params(model, jax.random.key(config.seed)), tx),
        host_batches,
        examples,
        [0] * len(host_batches),
        [family.flops(cfg, len(b["labels"]), side, num_labels=labels) for b in host_batches],
        f"{side}×{side} images, {labels} classes",
    )


def workload(name: str, config: ConfigDict, family: Family, cfg, row_multiple: int = 1) -> Workload:
    """The workload called `name` ('pretrain' or 'finetune') of a bench config."""
    if family.modality == "image":
        return image_workload(name, config, family, cfg, row_multiple)
    if name == "pretrain":
        return pretrain_workload(config, family, cfg)
    return finetune_workload(config, family, cfg, row_multiple)


def measure(config: ConfigDict, work: Workload, runner: Runner) -> dict:
    """Times a workload's step under `runner` (see the module docstring); its report row."""
    with runner.making_state():
        state = work.init_state()
    parameters = _count(state.params)
    step = runner.compile(work.step)
    timing = time_steps(config, runner, step, runner.put_state(state), [runner.put_batch(b) for b in work.batches])
    report = _report(work.name, config, timing, work.examples, work.tokens, work.flops, work.shape)
    return {**report, "parameters": parameters}


def _count(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def task_data(config: ConfigDict, cfg) -> Encoded:
    """Random classification examples: all seq_len long, or with lengths of mean finetune.mean_length."""
    f, seq = config.finetune, config.seq_len
    rng = np.random.default_rng(config.seed)
    count = f.batches * config.batch_size
    if f.mean_length:
        lengths = sentence_lengths(rng, count, f.mean_length, seq)
    else:
        lengths = np.full(count, seq)
    ids = [rng.integers(cfg.vocab_size // 2, cfg.vocab_size, n).astype(np.int32) for n in lengths]
    labels = rng.integers(0, f.num_labels, count).tolist()
    return Encoded(ids, [np.zeros(n, np.int32) for n in lengths], labels)


def time_steps(config: ConfigDict, runner: Runner, step, state, batches: list) -> dict:
    """Runs the step over `batches` in turn, each batch shape compiled ahead of time; returns the
    compile seconds, XLA's memory estimate of the largest program, and per-pass seconds."""
    key = runner.put_replicated(jax.random.PRNGKey(config.seed))
    compiled, compile_seconds, memory = {}, 0.0, 0

    def shape_of(batch):
        return tuple((name, value.shape) for name, value in sorted(batch.items()))

    for batch in batches:
        if shape_of(batch) not in compiled:
            start = time.perf_counter()
            program = step.lower(state, batch, key).compile()
            compile_seconds += time.perf_counter() - start
            compiled[shape_of(batch)] = program
            memory = max(memory, peak_bytes(program.memory_analysis()))

    def run(state, batch):
        return compiled[shape_of(batch)](state, batch, key)[0]

    for _ in range(max(config.warmup_steps, 1)):
        for batch in batches:
            state = run(state, batch)
    jax.block_until_ready(state)
    passes = max(-(-config.window_steps // len(batches)), 1)  # passes over the stream in a window
    seconds = []
    for _ in range(config.windows):
        start = time.perf_counter()
        for _ in range(passes):
            for batch in batches:
                state = run(state, batch)
        jax.block_until_ready(state)
        seconds.append((time.perf_counter() - start) / passes)
    return {
        "compile_seconds": compile_seconds,
        "program_bytes": memory,
        "pass_seconds": seconds,
        "steps_per_pass": len(batches),
    }


def _report(workload, config, timing, examples, tokens, flops, shape) -> dict:
    """The measurements of one workload; per-pass figures divided by the pass's median time."""
    median = float(np.median(timing["pass_seconds"]))
    step_seconds = median / timing["steps_per_pass"]
    tflops = sum(flops) / median / 1e12
    device = jax.devices()[0]
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device.device_kind), None)
    dtype = np.dtype(config_of(config.model)[1].compute_dtype).name
    bf16 = dtype == "bfloat16"
    stats = device.memory_stats() or {}
    return {
        "workload": workload,
        "shape": shape,
        "batch_size": config.batch_size,
        "backend": config.backend,
        "dtype": dtype,
        "attention_impl": config.model.get("attention_impl"),
        "step_ms": 1e3 * step_seconds,
        "step_ms_spread": [1e3 * s / timing["steps_per_pass"] for s in np.percentile(timing["pass_seconds"], [10, 90])],
        "sequences_per_second": sum(examples) / median,
        "tokens_per_second": sum(tokens) / median,
        "model_tflops_per_second": tflops,
        "mfu": tflops * 1e12 / (peak * jax.device_count()) if peak and bf16 else None,
        "compile_seconds": timing["compile_seconds"],
        "xla_memory_gib": timing["program_bytes"] / 2**30 or None,
        "peak_memory_gib": stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None,
    }


def table(report: dict) -> str:
    """The results as a Markdown table."""
    env = report["environment"]
    head = (
        f"{env['device']} × {env['device_count']} ({env['platform']}), jax {env['jax']}, flax {env['flax']}, "
        f"{env['date']}\n\n"
        "| workload | params | shape | batch | backend | dtype | step ms (p10–p90) | seq/s | tokens/s | TFLOP/s "
        "| MFU | compile s | XLA GiB | peak GiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def cell(value, spec):
        return "—" if value is None else format(value, spec)

    rows = [
        f"| {r['workload']} | {r['parameters'] / 1e6:.1f}M | {r['shape']} | {r['batch_size']} | {r['backend']} | "
        f"{r['dtype']} | {r['step_ms']:.2f} ({r['step_ms_spread'][0]:.2f}–{r['step_ms_spread'][1]:.2f}) | "
        f"{r['sequences_per_second']:,.0f} | {r['tokens_per_second']:,.0f} | "
        f"{r['model_tflops_per_second']:.3g} | {cell(r['mfu'], '.1%')} | {r['compile_seconds']:.1f} | "
        f"{cell(r['xla_memory_gib'], '.3f')} | {cell(r['peak_memory_gib'], '.2f')} |"
        for r in report["results"]
    ]
    rows += [f"| {r['workload']} | skipped: {r['reason']} |" for r in report.get("skipped", [])]
    return head + "\n".join(rows)


def write(report: dict, path) -> None:
    """Writes a report as JSON, whole or not at all."""
    write_json(Path(path), report)


def is_report(path: Path) -> bool:
    """Whether path holds a report `jft bench --out` wrote (one it may replace)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and {"environment", "config", "results"} <= found.keys()

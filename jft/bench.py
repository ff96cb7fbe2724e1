"""`jft bench`: times the trainer's own pretraining and fine-tuning steps on synthetic batches.

The steps are the ones `jft pretrain` and `jft finetune` compile (jft.steps under jft.parallel),
with the same optimizer and state donation. Batches are put on the devices before timing, as the
trainers' prefetch does. A measurement: each batch shape compiled ahead of time (timed), warm-up
steps, then `windows` windows of at least `window_steps` steps, each closed by a
block_until_ready; the step time is the median over windows. Reported per workload:
sequences/s, tokens/s (real tokens, not padding), model TFLOP/s and MFU (`model_flops` below),
compile time, XLA's memory count of the step's program, and the device's peak memory.
"""

import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from jft import finetune, pretrain
from jft.config import bert_config, model_config
from jft.data.synthetic import sentence_lengths
from jft.data.tasks import LAYOUTS, Encoded, TaskBatches, step_inputs
from jft.errors import JftError
from jft.masking import MaskingConfig
from jft.models import BertConfig, BertForPreTraining, BertForSequenceClassification, init_params
from jft.models.config import REMAT
from jft.optim import make_optimizer, weight_decay_mask
from jft.parallel import Runner
from jft.steps import FinetuneSetup, PretrainSetup, create_finetune_state, create_state, finetune_step, pretrain_step

WORKLOADS = ("pretrain", "finetune")
# Dense bf16 tensor-core peaks (FLOP/s) by device kind, for MFU; other devices report no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L4": 121e12}


def default_config() -> ConfigDict:
    """What `jft bench` measures when given no --config; configs/bench.py:SIZE for real sizes."""
    config = ConfigDict()
    # dtype auto: float32 on a CPU, bfloat16 on a GPU or TPU (also when compiling for one)
    config.model = model_config("tiny", vocab_size=30522, dtype="auto")
    config.workloads = "pretrain,finetune"
    config.batch_size = 32  # global, over all devices
    config.seq_len = 128
    config.max_predictions = 20  # masked positions a pretraining row (MLM logits only there)
    config.nsp = True
    config.finetune = ConfigDict(
        dict(
            num_labels=2,
            # 0: every example is seq_len tokens long. >0: lengths drawn with this mean (SST-2's is
            # about 25 tokens), batched per `layout`.
            mean_length=0,
            layout="padded",  # padded (to seq_len) | bucketed | packed, as jft finetune's data.layout
            max_segments=16,  # packed: at most this many examples a row
            batches=16,  # distinct batches in the timed stream
        )
    )
    config.backend = "shard_map"  # shard_map | pmap | jit
    config.warmup_steps = 3
    config.windows = 10
    config.window_steps = 5
    config.seed = 0
    return config


def model_flops(
    cfg: BertConfig, batch: int, seq: int, *, predictions: int = 0, num_labels: int = 0, pooled_per_row: int = 1
) -> float:
    """Training FLOPs of one step: 3 × the forward matmul FLOPs (backward = 2 × forward).

    Forward, per token and layer: 2·(4h² + 2hi) for the projections and the MLP, plus 4·s·h for
    QKᵀ and AV over a row of s tokens. The last layer computes only the rows the heads read (its
    keys and values still span the row): the masked predictions and the [CLS] row in pretraining,
    the pooled [CLS] rows in fine-tuning (one a row, or max_segments a packed row). Pretraining adds
    2·(h² + hV) per masked prediction (transform and tied decoder) and the pooler + NSP head per
    row; fine-tuning the pooler and the classifier per pooled output. Counted on the shapes the
    step computes, padding included; embedding lookups, softmax, LayerNorm and the optimizer are
    left out (a few percent).
    """
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers

    def layer(queries: int) -> int:  # one row's layer, asked for `queries` of its seq rows
        return queries * 2 * (2 * h * h + 2 * h * i) + seq * 2 * (2 * h * h) + queries * 4 * seq * h

    asked = predictions + 1 if predictions else pooled_per_row if num_labels else seq
    forward = batch * ((layers - 1) * layer(seq) + layer(asked))
    if predictions:
        forward += batch * predictions * 2 * (h * h + h * cfg.vocab_size) + batch * 2 * (h * h + 2 * h)
    if num_labels:
        forward += batch * pooled_per_row * 2 * (h * h + h * num_labels)
    return 3.0 * forward


def run(config: ConfigDict) -> dict:
    """Measures each workload of config; returns {"environment": ..., "results": [...]}."""
    workloads, cfg = checked_workloads(config)
    runner = Runner(config.backend)
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
        report["results"].append(measure(config, workload(name, config, cfg, runner.batch_multiple()), runner))
        print(f"bench: {name} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return report


def checked_workloads(config: ConfigDict) -> tuple[list[str], BertConfig]:
    """The workloads a bench config names and its model, after the checks that need no device."""
    workloads = [w.strip() for w in config.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        raise JftError(f"workloads '{config.workloads}': choose from {WORKLOADS}, comma-separated.")
    if config.finetune.layout not in LAYOUTS:
        raise JftError(f"finetune.layout '{config.finetune.layout}' is not one of {LAYOUTS}.")
    cfg = bert_config(config.model)
    if config.seq_len > cfg.max_position_embeddings:
        raise JftError(
            f"seq_len {config.seq_len} is longer than the position table ({cfg.max_position_embeddings}); "
            f"use seq_len <= {cfg.max_position_embeddings}."
        )
    return workloads, cfg


def compile_for(config: ConfigDict, topology: str, *, search: bool = False, remats: tuple = REMAT) -> dict:
    """Compiles config's workloads ahead of time for a TPU topology (jft.tpu): memory per device
    against its HBM, and with `search` the largest batch a device holds for each remat choice."""
    from jft import tpu

    target = tpu.parse_topology(topology)
    tpu.require_libtpu()
    workloads, _ = checked_workloads(config)
    # This host only compiles: its own TPU runtime (if libtpu would start one) has nothing to do.
    jax.config.update("jax_platforms", "cpu")
    report = tpu.compile_report(config, target, workloads, workload, search=search, remats=remats)
    return {"environment": environment(), "config": config.to_dict(), **report}


def tpu_table(report: dict) -> str:
    """A compile report (compile_for) as Markdown."""
    from jft import tpu

    env = report["environment"]
    return f"jax {env['jax']}, libtpu {report['libtpu']}, {env['date']}: " + tpu.table(report)


def environment() -> dict:
    import flax
    import jaxlib
    import optax

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


def pretrain_workload(config: ConfigDict, cfg: BertConfig, model=None) -> Workload:
    """pretrain_step (of `model`, by default BertForPreTraining(cfg)) on one batch of random rows."""
    batch, seq = config.batch_size, config.seq_len
    model = model or BertForPreTraining(cfg, nsp=config.nsp)
    tx, schedule = make_optimizer(pretrain.default_config().optim, 10_000)
    masking = MaskingConfig(
        mask_id=103, vocab_size=cfg.vocab_size, special_ids=(0, 101, 102, 103), max_predictions=config.max_predictions
    )
    rng = np.random.default_rng(config.seed)
    ids = rng.integers(cfg.vocab_size // 2, cfg.vocab_size, (batch, seq)).astype(np.int32)
    host = {
        "input_ids": ids,
        "token_type_ids": (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0),
        "attention_mask": np.ones_like(ids),
        "word_start": np.ones_like(ids, bool),
        "nsp_labels": rng.integers(0, 2, batch).astype(np.int32),
        "row_ids": np.arange(batch, dtype=np.int32),
    }
    return Workload(
        "pretrain",
        functools.partial(pretrain_step, setup=PretrainSetup(model, tx, schedule, masking)),
        lambda: create_state(init_params(model, jax.random.key(config.seed)), tx),
        [host],
        [batch],
        [batch * seq],
        [model_flops(cfg, batch, seq, predictions=config.max_predictions)],
        f"seq {seq}",
    )


def finetune_workload(config: ConfigDict, cfg: BertConfig, row_multiple: int = 1) -> Workload:
    """finetune_step on config.finetune.batches batches of random examples laid out per finetune.layout."""
    f, batch, seq = config.finetune, config.batch_size, config.seq_len
    model = BertForSequenceClassification(cfg, f.num_labels)
    ft = finetune.default_config()
    tx, schedule = make_optimizer(ft.optim, 10_000)
    mask = weight_decay_mask(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
    setup = FinetuneSetup(model, tx, schedule, "classification", ft.l2.weight, mask)
    data = task_data(config, cfg)
    batches = TaskBatches(
        data,
        "classification",
        batch,
        config.seed,
        layout=f.layout,
        max_len=seq,
        max_segments=f.max_segments,
        row_multiple=row_multiple,
    )
    examples, host_batches = zip(*(step_inputs(batches.batch(indices)) for indices in batches.epoch_indices(0)))
    pooled = f.max_segments if f.layout == "packed" else 1
    lengths = "full rows" if not f.mean_length else f"mean length {np.mean([len(x) for x in data.input_ids]):.1f}"
    return Workload(
        "finetune",
        functools.partial(finetune_step, setup=setup),
        lambda: create_finetune_state(init_params(model, jax.random.key(config.seed)), tx),
        list(host_batches),
        list(examples),
        [int(b["attention_mask"].sum()) for b in host_batches],
        [model_flops(cfg, *b["input_ids"].shape, num_labels=f.num_labels, pooled_per_row=pooled) for b in host_batches],
        f"seq {seq}, {lengths}, {f.layout}" + (f", {batches.rows} rows" if f.layout == "packed" else ""),
    )


def workload(name: str, config: ConfigDict, cfg: BertConfig, row_multiple: int = 1) -> Workload:
    """The workload called `name` ('pretrain' or 'finetune') of a bench config."""
    return pretrain_workload(config, cfg) if name == "pretrain" else finetune_workload(config, cfg, row_multiple)


def measure(config: ConfigDict, work: Workload, runner: Runner) -> dict:
    """Times a workload's step under `runner` (see the module docstring); its report row."""
    state = work.init_state()
    parameters = _count(state.params)
    step = runner.compile(work.step)
    timing = time_steps(config, runner, step, runner.put_replicated(state), [runner.put_batch(b) for b in work.batches])
    report = _report(work.name, config, timing, work.examples, work.tokens, work.flops, work.shape)
    return {**report, "parameters": parameters}


def _count(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def task_data(config: ConfigDict, cfg: BertConfig) -> Encoded:
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


def peak_bytes(analysis) -> int:
    """XLA's count of one device's memory for a compiled step, from its memory_analysis():
    arguments + outputs − donated (aliased) buffers + temporaries; 0 where the backend gives none."""
    if analysis is None:
        return 0
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )


def _report(workload, config, timing, examples, tokens, flops, shape) -> dict:
    """The measurements of one workload; per-pass figures divided by the pass's median time."""
    median = float(np.median(timing["pass_seconds"]))
    step_seconds = median / timing["steps_per_pass"]
    tflops = sum(flops) / median / 1e12
    device = jax.devices()[0]
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in device.device_kind), None)
    dtype = np.dtype(bert_config(config.model).compute_dtype).name
    bf16 = dtype == "bfloat16"
    stats = device.memory_stats() or {}
    return {
        "workload": workload,
        "shape": shape,
        "batch_size": config.batch_size,
        "backend": config.backend,
        "dtype": dtype,
        "attention_impl": config.model.attention_impl,
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
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

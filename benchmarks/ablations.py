"""What each of jft's speed choices is worth: the trainer's step with one choice switched, here.

    python benchmarks/ablations.py --size mini --out /tmp/ablations.md      # CPU: float32, XLA attention
    python benchmarks/ablations.py --size base --out $OUT/ablations.md      # GPU: bf16, cuDNN attention

Every figure comes from jft.perf.bench (the same steps, compile-ahead timing and XLA memory count as
`jft bench`), one device (plain jit). The ablations (`--groups` picks some), each against its group's
first row:
- the last layer computing only the rows the heads read (jft) against every row, in pretraining
  and fine-tuning;
- the layer loop (scanned against unrolled) and hidden dropout (0.1 against 0), in pretraining;
- MLM logits at the masked positions only (jft) against logits at every position, then gathered;
- fine-tuning on texts of mean length 25: padded to seq, bucketed, packed;
- remat none / dots / full (pretraining);
- on a GPU: bf16 against float32 compute, cuDNN against XLA attention, shard_map against pmap;
- the host's time to make and place one fine-tuning batch, which the prefetch thread hides.
"""

import argparse
import contextlib
import time
from pathlib import Path

import jax

from jft import defaults
from jft.models import config_of
from jft.models.bert import BertForPreTraining
from jft.models.bert.modules import BertEncoder
from jft.models.layers import gather_positions
from jft.perf import bench
from jft.tasks.batches import TaskBatches
from jft.train.parallel import Runner


class DenseLogitsBert(BertForPreTraining):
    """BertForPreTraining computing MLM logits at every position, then keeping the masked ones:
    what an implementation without sparse logits computes."""

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 masked_positions=None, deterministic=True):  # fmt: skip
        out = super().__call__(input_ids, attention_mask, token_type_ids, position_ids, None, deterministic)
        if masked_positions is None:  # init
            return out
        return {**out, "mlm_logits": gather_positions(out["mlm_logits"], masked_positions)}


def _config(size: str, gpu: bool, batch: int, seq: int):
    config = defaults.bench()
    config.model = defaults.model_fields(
        size,
        dtype="bfloat16" if gpu else "float32",
        attention_impl="cudnn" if gpu else "xla",
        attention_probs_dropout_prob=0.0,
    )
    config.batch_size, config.seq_len, config.backend = batch, seq, "jit"
    config.windows, config.window_steps = (10, 5) if gpu else (3, 2)
    return config


def _measure(config, model=None) -> dict:
    runner = Runner(config.backend)
    family, cfg = config_of(config.model)
    if config.workloads == "pretrain":
        work = bench.pretrain_workload(config, family, cfg, model(cfg) if model else None)
        return bench.measure(config, work, runner)
    return bench.measure(config, bench.finetune_workload(config, family, cfg), runner)


def _host_batch_ms(config, layout: str) -> float:
    """Milliseconds to make one fine-tuning batch of config's texts and put it on the device."""
    data = bench.task_data(config, config_of(config.model)[1])
    batches = TaskBatches(data, "classification", config.batch_size, layout=layout, max_len=config.seq_len)
    runner = Runner("jit")
    indices = batches.epoch_indices(0)
    start = time.perf_counter()
    for index in indices:
        jax.block_until_ready(runner.put_batch(batches.batch(index)))
    return 1e3 * (time.perf_counter() - start) / len(indices)


def _table(rows: list, args) -> str:
    """The ablations measured so far as a Markdown table, under the device and versions."""
    lines = [
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {args.size}, batch {args.batch}, seq 128, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| ablation | variant | step ms | seq/s | XLA GiB | seq/s × the group's first row |",
        "|---|---|---|---|---|---|",
    ]
    for ablation, variant, result, ratio in rows:
        memory = "—" if result["xla_memory_gib"] is None else f"{result['xla_memory_gib']:.3f}"
        lines.append(
            f"| {ablation} | {variant} | {result['step_ms']:.2f} | {result['sequences_per_second']:,.0f} | "
            f"{memory} | {ratio:.2f}× |"
        )
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def every_row_in_the_last_layer():
    """The encoder's last layer computing every row, in the loop with the others, its output then
    gathered at the rows the heads read: the same values, what jft did before the last layer kept
    to those rows (more FLOPs, one layer fewer to compile)."""
    split = BertEncoder.__call__

    def every_row(self, x, mask, deterministic, query_positions=None):
        x = split(self, x, mask, deterministic, None)
        return x if query_positions is None else gather_positions(x, query_positions)

    BertEncoder.__call__ = every_row
    try:
        yield
    finally:
        BertEncoder.__call__ = split


GROUPS = ("last layer", "layer loop", "MLM logits", "remat", "short texts", "precision", "backend")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini", help="tiny, mini, base or large")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--groups", default=",".join(GROUPS), help="the ablations to run, of: " + ", ".join(GROUPS))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    gpu = jax.default_backend() == "gpu"
    groups = args.groups.split(",")
    if unknown := set(groups) - set(GROUPS):
        parser.error(f"unknown groups {sorted(unknown)}: choose from {', '.join(GROUPS)}")
    rows = []

    def add(ablation, variant, result, baseline=None):
        ratio = result["sequences_per_second"] / baseline["sequences_per_second"] if baseline else 1.0
        rows.append((ablation, variant, result, ratio))
        print(ablation, variant, f"{result['step_ms']:.2f} ms", f"{ratio:.2f}x", flush=True)
        if args.out:  # after every row: a run cut short keeps what it measured
            Path(args.out).write_text(_table(rows, args))

    pretrain = _config(args.size, gpu, args.batch, 128)
    pretrain.workloads = "pretrain"
    sparse = _measure(pretrain) if set(groups) - {"short texts"} else None
    if "last layer" in groups:  # what the last layer's few rows save, in both steps
        finetune = _config(args.size, gpu, args.batch, 128)
        finetune.workloads = "finetune"
        few = _measure(finetune)
        with every_row_in_the_last_layer():
            every, every_finetune = _measure(pretrain), _measure(finetune)
        add("last layer", "pretraining: the rows the heads read (jft)", sparse)
        add("last layer", "pretraining: every row", every, sparse)
        add("last layer", "fine-tuning: the [CLS] rows (jft)", few)
        add("last layer", "fine-tuning: every row", every_finetune, few)
    if "layer loop" in groups:  # where jft's step loses to its peers': the loop and the dropout masks
        add("layer loop, dropout", "scanned, hidden dropout 0.1 (jft)", sparse)
        pretrain.model.scan_layers = False
        add("layer loop, dropout", "unrolled", _measure(pretrain), sparse)
        pretrain.model.scan_layers, pretrain.model.hidden_dropout_prob = True, 0.0
        add("layer loop, dropout", "hidden dropout 0", _measure(pretrain), sparse)
        pretrain.model.hidden_dropout_prob = 0.1
    if "MLM logits" in groups:
        add("MLM logits", "at masked positions (jft)", sparse)
        add("MLM logits", "at every position", _measure(pretrain, lambda cfg: DenseLogitsBert(cfg)), sparse)
    if "remat" in groups:
        for remat in ("dots", "full"):
            pretrain.model.remat = remat
            add("remat", remat, _measure(pretrain), sparse)
        pretrain.model.remat = "none"

    short = _config(args.size, gpu, args.batch, 128)
    short.workloads, short.finetune.mean_length, short.finetune.batches = "finetune", 25, 8
    if "short texts" in groups:
        results = {}
        for layout in ("padded", "bucketed", "packed"):
            short.finetune.layout = layout
            results[layout] = _measure(short)
            add("short texts (mean 25)", layout, results[layout], results["padded"])

    if gpu and "precision" in groups:
        add("precision, attention", "bf16, cuDNN (jft)", sparse)
        pretrain.model.attention_impl = "xla"
        add("precision, attention", "bf16, XLA", _measure(pretrain), sparse)
        pretrain.model.dtype = "float32"
        add("precision, attention", "float32, XLA", _measure(pretrain), sparse)
        pretrain.model.dtype, pretrain.model.attention_impl = "bfloat16", "cudnn"
    if gpu and "backend" in groups:
        pretrain.backend = "shard_map"
        shard_map = _measure(pretrain)
        add("backend", "shard_map", shard_map)
        pretrain.backend = "pmap"
        add("backend", "pmap", _measure(pretrain), shard_map)

    text = _table(rows, args)
    if "short texts" in groups:
        for layout in ("bucketed", "packed"):
            text += f"\nhost time to make and place one {layout} batch: {_host_batch_ms(short, layout):.2f} ms\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

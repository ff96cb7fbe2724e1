"""Unpadded against padded fine-tuning of ModernBERT on short texts, side by side on one machine.

    python benchmarks/unpadded.py [--rounds 5] [--seq 512] [--mean-length 25]

The same random classification examples (lengths drawn with mean --mean-length, SST-2's is about
25 tokens, none over --seq) are fine-tuned with `jft bench`'s finetune workload in two layouts:
padded (one text a row, every row --seq wide: the padding is computed and thrown away) and packed
(several texts a row, segment ids keeping them apart, positions restarting: unpadded computation,
only the end of a row is padding). The layouts run alternately, `rounds` times each, and the
medians of their real tokens per second are compared: a CPU figure, so only the ratio is given.
Also printed: the share of computed tokens that are real in each layout.
"""

import argparse
import statistics

from jft.config import load_config
from jft.models import config_of
from jft.perf import bench
from jft.tasks.batches import TaskBatches


def bench_config(layout: str, args):
    config = load_config("bench:modernbert_tiny", [], "bench")
    config.workloads, config.seq_len, config.batch_size = "finetune", args.seq, args.batch
    config.model.update(dtype="float32", attention_impl="xla", hidden_size=256, intermediate_size=384)
    config.model.update(num_attention_heads=4, num_hidden_layers=6, vocab_size=8000)
    config.finetune.update(layout=layout, mean_length=args.mean_length, batches=8)
    config.windows, config.window_steps, config.warmup_steps = 3, 2, 1
    return config


def real_fraction(config) -> float:
    """Real tokens among the tokens the layout's rows compute."""
    data = bench.task_data(config, config_of(config.model)[1])
    f = config.finetune
    batches = TaskBatches(
        data,
        "classification",
        config.batch_size,
        config.seed,
        layout=f.layout,
        max_len=config.seq_len,
        max_segments=f.max_segments,
    )
    masks = [batches.batch(indices)["attention_mask"] for indices in batches.epoch_indices(0)]
    return sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)


def measure(layout: str, args) -> dict:
    (row,) = bench.run(bench_config(layout, args))["results"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mean-length", type=int, default=25)
    args = parser.parse_args()
    rows: dict[str, list] = {"padded": [], "packed": []}
    for _ in range(args.rounds):
        for layout in rows:
            rows[layout].append(measure(layout, args))
    tokens = {layout: statistics.median(r["tokens_per_second"] for r in runs) for layout, runs in rows.items()}
    for layout, runs in rows.items():
        fraction = real_fraction(bench_config(layout, args))
        print(f"{layout}: {runs[-1]['shape']}; real tokens among those computed: {fraction:.2f}")
    ratio = tokens["packed"] / tokens["padded"]
    print(f"unpadded / padded, real tokens per second (median of {args.rounds} alternating runs): {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Dropout masks on this CPU: jft's 16-bit draw (`jft.models.layers.kept`) against
jax.random.bernoulli's 32-bit one, for a step's worth of values, classic threefry as in jft's steps.

    python benchmarks/dropout_bits.py        # 4.7 million values: a small BERT's fine-tuning step
    python benchmarks/dropout_bits.py --topology v6e:2x2 --layers 2,6,12   # needs jft[tpu]

Also checks the kept fraction of both against 1 - rate. With --topology, the memory side instead:
BERT-base-wide pretraining at seq 512, 184 rows a device, remat 'dots', compiled for the TPU
topology with jft's masks and with jax.random.bernoulli's, per layer count (XLA's peak a device).
"""

import argparse
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jft.models.layers import kept


def bernoulli(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """kept's contract by jax.random.bernoulli (a 32-bit float a value), as flax's nn.Dropout draws."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def tpu_peaks(topology: str, layers: list[int]) -> None:
    """Prints the compiled step's peak a device with each mask draw, for each layer count."""
    from jft.config import load_config
    from jft.perf import bench, tpu

    devices = tpu.parse_topology(topology).chips  # a device a chip (megacore on v4 and v5p)

    print(
        f"`python benchmarks/dropout_bits.py --topology {topology} --layers {','.join(map(str, layers))}`: "
        f"jax {jax.__version__}, {datetime.date.today()}\n"
    )
    print("| layers | peak GiB, 16-bit masks (jft) | peak GiB, jax.random.bernoulli |\n|---|---|---|")
    for count in layers:
        peaks = []
        for draw in (kept, bernoulli):
            layers.kept = draw  # the model looks kept up when it traces
            config = load_config("bench:base", [], "bench")
            config.workloads, config.seq_len, config.max_predictions = "pretrain", 512, 80
            config.batch_size = 184 * devices
            config.model.update(remat="dots", attention_impl="xla", num_hidden_layers=count)
            (row,) = bench.compile_for(config, topology)["results"]
            peaks.append(f"{row['peak_gib']:.2f}" if not row["error"] else "does not fit")
        layers.kept = kept
        print(f"| {count} | {peaks[0]} | {peaks[1]} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=16 * 128 * (256 * 9 + 1))
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--topology", default="", help="compile for this TPU topology instead (e.g. v6e:2x2)")
    parser.add_argument("--layers", default="2,6,12", help="with --topology: the layer counts")
    args = parser.parse_args()
    if args.topology:
        tpu_peaks(args.topology, [int(n) for n in args.layers.split(",")])
        return
    shape = (args.values,)
    masks = {
        "jft (16 bits a value)": jax.jit(lambda key: kept(key, args.rate, shape)),
        "jax.random.bernoulli (32 bits)": jax.jit(lambda key: bernoulli(key, args.rate, shape)),
    }
    times: dict[str, list[float]] = {name: [] for name in masks}
    with jax.threefry_partitionable(False):
        key = jax.random.key(0)
        fractions = {name: float(jnp.mean(mask(key))) for name, mask in masks.items()}
        for _ in range(args.rounds):
            for name, mask in masks.items():
                start = time.perf_counter()
                mask(key).block_until_ready()
                times[name].append(time.perf_counter() - start)
    print(
        f"`python benchmarks/dropout_bits.py --values {args.values} --rate {args.rate}`: {os.cpu_count()} cores, "
        f"jax {jax.__version__}, {datetime.date.today()}, medians of {args.rounds} alternated rounds\n"
    )
    print("| dropout mask | ms | kept fraction |\n|---|---|---|")
    for name in masks:
        print(f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | {fractions[name]:.5f} |")


if __name__ == "__main__":
    main()

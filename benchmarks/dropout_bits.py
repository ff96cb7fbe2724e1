"""Dropout masks on this CPU: jft's 16-bit draw (`jft.models.layers.kept`: a threefry hash of each
row's place in the batch and the values' place in the row) against jax.random's 16 bits a value
(jft's draw until 2026-12-06, a device's rows by its own key) and jax.random.bernoulli's 32-bit
one, for a step's worth of values, classic threefry as in jft's steps: their compile and run times.

    python benchmarks/dropout_bits.py        # 16 rows of 128 x 2305 values: a small BERT's fine-tuning step
    python benchmarks/dropout_bits.py --topology v6e:2x2 --layers 2,6,12   # needs jft[tpu]
    python benchmarks/dropout_bits.py --topology v5e:2x2 --layers 12 --seq 128 --rows 64 --remat none

Also checks the kept fraction of each against 1 - rate. With --topology, the memory side instead:
BERT-base-wide pretraining (by default at seq 512, 184 rows a device, remat 'dots') compiled for
the TPU topology with each draw, per layer count (XLA's peak a device, the compile's seconds).
"""

import argparse
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jft.models.layers import kept


def random_bits(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """kept's contract by jax.random.bits, 16 bits a value (jft's draw until 2026-12-06)."""
    return jax.random.bits(key, shape, jnp.uint16) < round((1.0 - rate) * 2**16)


def bernoulli(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """kept's contract by jax.random.bernoulli (a 32-bit float a value), as flax's nn.Dropout draws."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


DRAWS = {
    "jft: a hash of (row, place), 16 bits a value": kept,
    "jax.random.bits, 16 bits a value (jft until 2026-12-06)": random_bits,
    "jax.random.bernoulli (32 bits)": bernoulli,
}


def tpu_peaks(topology: str, counts: list[int], seq: int, rows: int, remat: str) -> None:
    """Prints the compiled step's peak a device and compile seconds with each mask draw, for each layer count."""
    from jft.config import load_config
    from jft.models import layers
    from jft.perf import bench, tpu

    devices = tpu.parse_topology(topology).chips  # a device a chip (megacore on v4 and v5p)

    print(
        f"`python benchmarks/dropout_bits.py --topology {topology} --layers {','.join(map(str, counts))} "
        f"--seq {seq} --rows {rows} --remat {remat}`: "
        f"jax {jax.__version__}, {datetime.date.today()}\n"
    )
    print(f"| layers | {' | '.join(f'{name}: peak GiB, compile s' for name in DRAWS)} |")
    print(f"|---|{'---|' * len(DRAWS)}")
    for count in counts:
        cells = []
        for draw in DRAWS.values():
            layers.kept = draw  # the model looks kept up when it traces
            config = load_config("bench:base", [], "bench")
            config.workloads, config.seq_len, config.max_predictions = "pretrain", seq, seq * 20 // 128
            config.batch_size = rows * devices
            config.model.update(remat=remat, attention_impl="xla", num_hidden_layers=count)
            (row,) = bench.compile_for(config, topology)["results"]
            peak = f"{row['peak_gib']:.2f}" if not row["error"] else "does not fit"
            cells.append(f"{peak}, {row['compile_seconds']:.0f}")
        layers.kept = kept
        print(f"| {count} | {' | '.join(cells)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=0, help="default 16 (with --topology: a device's, 184)")
    parser.add_argument("--values", type=int, default=128 * (256 * 9 + 1), help="a row's")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--topology", default="", help="compile for this TPU topology instead (e.g. v6e:2x2)")
    parser.add_argument("--layers", default="2,6,12", help="with --topology: the layer counts")
    parser.add_argument("--seq", type=int, default=512, help="with --topology: BERT-base pretraining's sequence length")
    parser.add_argument("--remat", default="dots", help="with --topology: the layers' remat")
    args = parser.parse_args()
    if args.topology:
        tpu_peaks(args.topology, [int(n) for n in args.layers.split(",")], args.seq, args.rows or 184, args.remat)
        return
    args.rows = args.rows or 16
    shape = (args.rows, args.values)
    masks = {name: jax.jit(lambda key, draw=draw: draw(key, args.rate, shape)) for name, draw in DRAWS.items()}
    times: dict[str, list[float]] = {name: [] for name in masks}
    compiles: dict[str, list[float]] = {name: [] for name in masks}
    with jax.threefry_partitionable(False):
        key = jax.random.key(0)
        for _ in range(3):
            for name, mask in masks.items():
                jax.clear_caches()
                start = time.perf_counter()
                mask.lower(key).compile()
                compiles[name].append(time.perf_counter() - start)
        fractions = {name: float(jnp.mean(mask(key))) for name, mask in masks.items()}
        for _ in range(args.rounds):
            for name, mask in masks.items():
                start = time.perf_counter()
                mask(key).block_until_ready()
                times[name].append(time.perf_counter() - start)
    print(
        f"`python benchmarks/dropout_bits.py --rows {args.rows} --values {args.values} --rate {args.rate}`: "
        f"{os.cpu_count()} cores, jax {jax.__version__}, {datetime.date.today()}, medians of {args.rounds} "
        "alternated rounds (compile: of 3)\n"
    )
    print("| dropout mask | ms | compile s | kept fraction |\n|---|---|---|---|")
    for name in masks:
        print(
            f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | {statistics.median(compiles[name]):.2f} | "
            f"{fractions[name]:.5f} |"
        )


if __name__ == "__main__":
    main()

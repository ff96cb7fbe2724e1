"""Dropout masks on this CPU: jft's 16-bit draw (`jft.models.bert.kept`) against
jax.random.bernoulli's 32-bit one, for a step's worth of values, classic threefry as in jft's steps.

    python benchmarks/dropout_bits.py        # 4.7 million values: a small BERT's fine-tuning step

Also checks the kept fraction of both against 1 - rate.
"""

import argparse
import datetime
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jft.models.bert import kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=16 * 128 * (256 * 9 + 1))
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    shape = (args.values,)
    masks = {
        "jft (16 bits a value)": jax.jit(lambda key: kept(key, args.rate, shape)),
        "jax.random.bernoulli (32 bits)": jax.jit(lambda key: jax.random.bernoulli(key, 1.0 - args.rate, shape)),
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

"""K fine-tuning runs trained at once as one population (`jft sweep`) against the same K runs one
after another.

    python benchmarks/sweep_population.py                                  # CPU: the small BERT
    python benchmarks/sweep_population.py --size base --members 8,32 --batch 32   # GPU (gpu_session.sh)

Both sides train the same members (learning rates apart) on the same data with the same step,
jft.population.population_step: once as a population of K, and as K populations of one member (the
program one run compiles, a member axis of 1), run one after another. Rounds alternate a window
of `--steps` steps of the population with the same steps of each single run; the table gives
medians, and the compile seconds of each side (the population compiles once; K runs compile K
times). Classification of full rows of --seq tokens, float32, hidden dropout 0.1, Adam.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import peers

from jft import population, sweep
from jft.data.synthetic import write_topic_task, write_vocab
from jft.finetune import default_config
from jft.perf import bench
from jft.train.parallel import Runner


def members_config(root: Path, size: str, members: int, batch: int, seq: int):
    config = default_config()
    config.data.train = str(write_topic_task(root / "train.csv", 4 * batch, seed=0))
    config.data.eval = str(write_topic_task(root / "dev.csv", batch, seed=1))
    config.data.vocab = str(write_vocab(root / "vocab.txt"))
    config.data.layout, config.data.seq_len, config.batch_size, config.epochs = "padded", seq, batch, 1000
    for key, value in peers.model_fields(size).items():
        config.model[key] = value
    config.model.max_position_embeddings = max(seq, 512)
    config.progress = False
    config.sweep.grid = {"optim.lr": [float(lr) for lr in np.geomspace(1e-5, 1e-3, members)]}
    return config


def timed_window(run, runner: Runner, steps: int):
    """Seconds for `steps` steps of a population (host batches included, as a sweep runs them)."""
    start = time.perf_counter()
    state = run.state
    for _ in range(steps):
        state, metrics = run.step(state, runner.put_global_batch(next(run.batches)[1]), run.rngs)
    jax.block_until_ready(metrics)
    run.state = state
    return time.perf_counter() - start


def measure(size: str, members: int, batch: int, seq: int, steps: int, rounds: int) -> dict:
    runner = Runner("shard_map")
    with tempfile.TemporaryDirectory() as root:
        config = members_config(Path(root), size, members, batch, seq)
        everyone, shared = sweep.plan(config), sweep.sweep_data(config)
        start = time.perf_counter()
        together_run = population.start_population(everyone, shared, runner, log=lambda _: None)
        population_compile = time.perf_counter() - start
        start = time.perf_counter()
        singles = [population.start_population([m], shared, runner, log=lambda _: None) for m in everyone]
        singles_compile = time.perf_counter() - start
        timed_window(together_run, runner, 1)  # the first call of each: placement, warm caches
        for single in singles:
            timed_window(single, runner, 1)
        together, apart = [], []
        for _ in range(rounds):
            together.append(timed_window(together_run, runner, steps))
            apart.append(sum(timed_window(single, runner, steps) for single in singles))
    together, apart = np.median(together) / steps, np.median(apart) / steps
    return {
        "size": size,
        "members": members,
        "batch": batch,
        "seq": seq,
        "population_step_s": together,
        "one_by_one_step_s": apart,
        "speedup": apart / together,
        "population_compile_s": population_compile,
        "one_by_one_compile_s": singles_compile,
        "population_gib": together_run.peak_bytes / population.GIB,
        "single_gib": singles[0].peak_bytes / population.GIB,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="small (peers.CPU_SIZE) or a preset: tiny, mini, base, large")
    parser.add_argument("--members", default="4,8", help="population sizes K")
    parser.add_argument("--batch", type=int, default=peers.CPU_BATCH)
    parser.add_argument("--seq", type=int, default=peers.CPU_SEQ)
    parser.add_argument("--steps", type=int, default=3, help="steps a timed window")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="", help="also write the Markdown table here")
    args = parser.parse_args()
    env = bench.environment()
    lines = [
        f"`python benchmarks/sweep_population.py --size {args.size} --members {args.members} --batch {args.batch} "
        f"--seq {args.seq} --steps {args.steps} --rounds {args.rounds}`: {env['device']} ×{env['device_count']}, "
        f"jax {env['jax']}, {env['date']}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| members K | population: s a step | K runs one by one: s a step of all K | population's speed × one by one "
        "| compile s: population, K runs | XLA's memory count a device: population, one run |",
        "|---|---|---|---|---|---|",
    ]
    for members in map(int, args.members.split(",")):
        r = measure(args.size, members, args.batch, args.seq, args.steps, args.rounds)
        lines.append(
            f"| {members} | {r['population_step_s']:.3f} | {r['one_by_one_step_s']:.3f} | {r['speedup']:.2f} "
            f"| {r['population_compile_s']:.0f}, {r['one_by_one_compile_s']:.0f} "
            f"| {r['population_gib']:.2f} GiB, {r['single_gib']:.2f} GiB |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

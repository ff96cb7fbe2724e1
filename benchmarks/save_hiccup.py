"""The step-time hiccup of a checkpoint save: pretraining steps with a save every few steps, the
way `jft pretrain` saves (Runner.replica, then Orbax, asynchronous).

    python benchmarks/save_hiccup.py                          # CPU: the small BERT
    python benchmarks/save_hiccup.py --size base --batch 64   # GPU (gpu_session.sh)

Prints the median time of a step without a save, and the median extra time of a step that saves
(the save's work in the training thread: what the run waits for before its next step).
"""

import argparse
import dataclasses
import tempfile
import time

import jax
import numpy as np
import peers

from jft import defaults
from jft.models import config_of
from jft.perf import bench
from jft.train.checkpoint import Checkpoints
from jft.train.parallel import Runner


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--size", default="small", help="small (peers.CPU_SIZE) or a preset: tiny, mini, base, large")
    parser.add_argument("--batch", type=int, default=peers.CPU_BATCH)
    args = parser.parse_args()
    config = defaults.bench()
    config.batch_size, config.seq_len = args.batch, peers.CPU_SEQ
    family, cfg = config_of(config.model)
    cfg = dataclasses.replace(cfg, vocab_size=30522, **peers.model_fields(args.size))
    work = bench.pretrain_workload(config, family, cfg)
    runner = Runner("shard_map")
    step = runner.compile(work.step)
    state, batch = runner.put_replicated(work.init_state()), runner.put_batch(work.batches[0])
    key = runner.put_replicated(jax.random.PRNGKey(0))
    state = jax.block_until_ready(step(state, batch, key)[0])
    size = sum(np.size(x) * x.dtype.itemsize for x in jax.tree.leaves(runner.get(state)))
    plain, saving = [], []
    with tempfile.TemporaryDirectory() as directory:
        checkpoints = Checkpoints(directory, every_steps=args.every, keep=2)
        for index in range(1, args.steps + 1):
            start = time.perf_counter()
            state, metrics = step(state, batch, key)
            float(runner.get(metrics)["loss"])  # the loop's host sync
            saved = checkpoints.save(index, {"train": runner.replica(state), "rng": np.zeros(2, np.uint32)}, {})
            (saving if saved else plain).append(time.perf_counter() - start)
        checkpoints.wait()
        checkpoints.close()
    base = float(np.median(plain))
    print(
        f"{jax.devices()[0].device_kind}, {args.size}: state {size / 1e6:.0f} MB; "
        f"step without a save {base * 1e3:.0f} ms (median of {len(plain)}); "
        f"a step that saves takes {(float(np.median(saving)) - base) * 1e3:.0f} ms more (median of {len(saving)})"
    )


if __name__ == "__main__":
    main()

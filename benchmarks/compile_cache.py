"""Time to the first step of `jft pretrain` and `jft finetune` with XLA's persistent compilation
cache: a first run (empty cache), a second run (the same programs, loaded from the cache), and a
run with the cache off, each a fresh process on this machine's synthetic data.

    python benchmarks/compile_cache.py                 # tiny config; --size mini for 4 layers

The figure is the one each run prints, "compiled and ran the first step in X s": tracing,
compiling (or loading) and the first step.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from jft.data.synthetic import write_corpus, write_topic_task

SIZES = {
    "tiny": {},
    "mini": {"model.preset": "mini"},
}
FIRST_STEP = re.compile(r"(pretraining|fine-tuning): compiled and ran the first step in ([0-9.]+) s")


def _first_step_seconds(command: list[str], env: dict) -> float:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return float(FIRST_STEP.search(done.stderr).group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="jft-compile-cache-"))
    write_corpus(root / "corpus.txt", documents=200)
    write_topic_task(root / "train.csv", 64, seed=0)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env |= {"JFT_XLA_CACHE": str(root / "cache"), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    common = [f"--config.{k}={v}" for k, v in SIZES[args.size].items()] + ["--config.progress=True"]
    jft = [sys.executable, "-m", "jft.cli"]

    def pretrain(name):
        settings = ["--config.total_steps=2", f"--config.data.corpus={root / 'corpus.txt'}", "--config.batch_size=16"]
        return [*jft, "pretrain", "--config", "tiny", "--workdir", str(root / name), *common, *settings]

    def finetune(name):
        settings = [f"--config.data.train={root / 'train.csv'}", "--config.max_steps=2", "--config.eval_every=0"]
        settings += [f"--config.init_from={root / 'pre-first'}"]
        return [*jft, "finetune", "--config", "finetune/tiny", "--workdir", str(root / name), *common, *settings]

    rows = []
    for stage, command in (("pretrain", pretrain), ("finetune", finetune)):
        first = _first_step_seconds(command(f"{stage[:3]}-first"), env)
        second = _first_step_seconds(command(f"{stage[:3]}-second"), env)
        off = _first_step_seconds(command(f"{stage[:3]}-off"), {**env, "JFT_XLA_CACHE": "off"})
        rows.append((stage, first, second, off))
    print(
        f"`python benchmarks/compile_cache.py --size {args.size}`: {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{datetime.date.today()}\n"
    )
    print("| stage | first run (empty cache) | second run (cache) | cache off | second ÷ off |\n|---|---|---|---|---|")
    for stage, first, second, off in rows:
        print(f"| {stage} | {first:.1f} s | {second:.1f} s | {off:.1f} s | {second / off:.2f} |")


if __name__ == "__main__":
    main()

"""What `model.vocab_multiple=128` changes: the pretraining step's speed on this machine's device
(alternated with the unpadded step, as a ratio) and, where libtpu is installed, its memory and
FLOPs compiled for a TPU (v5e:2x2, BERT-base).

    python benchmarks/vocab_padding.py [--topology v5e:2x2]           # CPU: the small BERT
    python benchmarks/vocab_padding.py --size base --batch 64          # GPU (gpu_session.sh)

The padding widens only the masked-LM decoder's matmul (vocab 30,522 -> 30,592); parameters,
checkpoints and exports are the same either way (tests/test_pretrain.py).
"""

import argparse
import dataclasses
import functools

import jax
import peers
from cpu_finetune_gap import alternated

from jft import defaults
from jft.config import load_config
from jft.models import config_of
from jft.perf import bench, tpu
from jft.train.parallel import Runner


def _step(program, held: dict, batch, key) -> None:
    held["state"] = jax.block_until_ready(program(held["state"], batch, key)[0])  # the old one is donated


def step_ratio(size: str, batch: int, rounds: int) -> dict:
    config = defaults.bench()
    config.batch_size, config.seq_len = batch, peers.CPU_SEQ
    steps = {}
    for multiple in (1, 128):
        family, cfg = config_of(config.model)
        fields = {**peers.model_fields(size), "vocab_multiple": multiple, "attention_probs_dropout_prob": 0.0}
        work = bench.pretrain_workload(config, family, dataclasses.replace(cfg, **fields))
        runner = Runner("jit")
        step = runner.compile(work.step)
        state, batch = runner.put_replicated(work.init_state()), runner.put_batch(work.batches[0])
        key = runner.put_replicated(jax.random.PRNGKey(0))
        program = step.lower(state, batch, key).compile()

        steps[multiple] = functools.partial(_step, program, {"state": state}, batch, key)
    seconds = alternated(steps, rounds=rounds, repeats=3)
    return {"seconds": seconds, "padded_over_unpadded": seconds[128] / seconds[1]}


def tpu_memory(topology: str) -> dict:
    out = {}
    for multiple in (1, 128):
        config = load_config("bench:base", [], "bench")
        config.workloads, config.batch_size = "pretrain", 64 * 4
        config.model.vocab_multiple, config.model.attention_impl = multiple, "xla"
        (row,) = bench.compile_for(config, topology)["results"]
        out[multiple] = {k: v for k, v in row.items() if k != "largest_batch_per_device"}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5e:2x2", help="empty: no TPU compile")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", default="small", help="small (peers.CPU_SIZE) or a preset: tiny, mini, base, large")
    parser.add_argument("--batch", type=int, default=peers.CPU_BATCH)
    args = parser.parse_args()
    where = f"{jax.devices()[0].device_kind}, {args.size} BERT pretraining step"
    where += f" (seq 128, batch {args.batch}, 20 predictions a row)"
    print(f"{where}:", step_ratio(args.size, args.batch, args.rounds))
    if args.topology and tpu.libtpu_version():
        print(f"{args.topology}, BERT-base pretraining, 64 rows a device:", tpu_memory(args.topology))


if __name__ == "__main__":
    main()

"""GPU checks that CPU CI cannot make: cuDNN fused attention against the XLA path, and the step
time of the parallel backends. Run on a GPU machine:

    python benchmarks/gpu_checks.py --out gpu_checks.json

1. cuDNN attention (bf16) vs XLA attention (bf16 and float32) on BERT-base-sized inputs with
   right padding and with packed segments: max |difference| of the hidden states.
2. pretrain_step of BERT-base (seq 128, batch 256, bf16, cuDNN attention) under each backend:
   median step time after warm-up, sequences/s.
"""

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jft.masking import MaskingConfig
from jft.models import BertConfig, BertForPreTraining, BertModel, init_params
from jft.optim import make_optimizer
from jft.parallel import Runner
from jft.pretrain import default_config
from jft.steps import PretrainSetup, create_state, pretrain_step


def attention_parity(batch: int = 8, seq: int = 128) -> dict:
    base = BertConfig.preset("base", attention_probs_dropout_prob=0.0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int32)
    lengths = rng.integers(seq // 4, seq + 1, batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    segments = (np.arange(seq)[None] >= (lengths // 2)[:, None]).astype(np.int32) + 1
    params = init_params(BertModel(base), jax.random.key(0))
    results = {}
    for name, extra in {"padding": {}, "padding+segments": {"segment_ids": segments}}.items():
        outputs = {}
        for label, fields in {
            "xla_f32": dict(dtype="float32", attention_impl="xla"),
            "xla_bf16": dict(dtype="bfloat16", attention_impl="xla"),
            "cudnn_bf16": dict(dtype="bfloat16", attention_impl="cudnn"),
        }.items():
            model = BertModel(dataclasses.replace(base, **fields))
            apply = jax.jit(lambda p, m=model, kw=extra: m.apply({"params": p}, ids, mask, **kw)[0])
            outputs[label] = np.asarray(apply(params).astype(jnp.float32))
        real = mask.astype(bool)
        results[name] = {
            "cudnn_vs_xla_bf16": float(np.abs(outputs["cudnn_bf16"] - outputs["xla_bf16"])[real].max()),
            "cudnn_vs_xla_f32": float(np.abs(outputs["cudnn_bf16"] - outputs["xla_f32"])[real].max()),
            "xla_bf16_vs_xla_f32": float(np.abs(outputs["xla_bf16"] - outputs["xla_f32"])[real].max()),
        }
    return results


def backend_step_times(batch: int = 256, seq: int = 128, steps: int = 30) -> dict:
    config = BertConfig.preset("base", dtype="bfloat16", attention_impl="cudnn", attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config)
    tx, schedule = make_optimizer(default_config().optim, 10_000)
    setup = PretrainSetup(model, tx, schedule, MaskingConfig(103, config.vocab_size, (0, 101, 102, 103)))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int32)
    host_batch = {
        "input_ids": ids,
        "token_type_ids": np.zeros_like(ids),
        "attention_mask": np.ones_like(ids),
        "word_start": np.ones_like(ids, bool),
        "nsp_labels": rng.integers(0, 2, batch).astype(np.int32),
        "row_ids": np.arange(batch, dtype=np.int32),
    }
    params = init_params(model, jax.random.key(0))
    results = {}
    for backend in ("shard_map", "pmap", "jit"):
        runner = Runner(backend)
        step = runner.compile(functools.partial(pretrain_step, setup=setup))
        state = runner.put_replicated(create_state(params, tx))
        key = runner.put_replicated(jax.random.PRNGKey(0))
        device_batch = runner.put_batch(host_batch)
        start = time.perf_counter()
        state, metrics = step(state, device_batch, key)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = step(state, device_batch, key)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        results[backend] = {"median_step_s": median, "sequences_per_s": batch / median, "first_step_s": compile_s}
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_checks.json")
    args = parser.parse_args()
    report = {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "attention": attention_parity(),
        "backends": backend_step_times(),
    }
    print(json.dumps(report, indent=2))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

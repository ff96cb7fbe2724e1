"""A GPU check that CPU CI cannot make: cuDNN fused attention against the XLA path. Run on a GPU:

    python benchmarks/gpu_checks.py --out gpu_checks.json

cuDNN attention (bf16) vs XLA attention (bf16 and float32) on BERT-base-sized inputs with right
padding and with packed segments: max |difference| of the hidden states. (Step times of the
parallel backends: `jft bench --config configs/bench.py:base --config.backend=pmap`.)
"""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from jft.models.bert import BertConfig, BertModel, init_params


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_checks.json")
    args = parser.parse_args()
    report = {
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "attention": attention_parity(),
    }
    print(json.dumps(report, indent=2))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

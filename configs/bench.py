"""`jft bench` at a real size: BERT-base or -large in bf16 with cuDNN attention, for a GPU.

    jft bench --config configs/bench.py:base --config.batch_size=256 --config.seq_len=128
    jft bench --config configs/bench.py:large --config.workloads=pretrain --config.seq_len=512

The text after ':' picks the size (tiny, mini, base, large). On a CPU, use `jft bench` without
--config (a tiny model in float32).
"""

from ml_collections import ConfigDict

from jft.defaults import bench, model_fields


def get_config(size: str = "base") -> ConfigDict:
    config = bench()
    config.model = model_fields(size, dtype="bfloat16", attention_impl="cudnn", attention_probs_dropout_prob=0.0)
    config.batch_size = 256
    return config

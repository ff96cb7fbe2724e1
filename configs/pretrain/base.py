"""BERT-base (12 layers, hidden 768) with the original recipe: batch 256, seq 128, AdamW 1e-4.

    jft pretrain --config pretrain/base --workdir runs/base --config.data.corpus=corpus.txt \
        --config.data.vocab=vocab.txt

bf16 compute on GPU/TPU (dtype 'auto'), float32 master weights. For the original's second
phase at 512 tokens: --config.data.seq_len=512 --config.masking.max_predictions=80.
"""

from jft.defaults import model_group
from jft.defaults import pretrain as default_config


def get_config():
    config = default_config()
    config.model = model_group("base", dtype="auto")
    config.data.vocab_size = 30522
    config.data.eval_fraction = 0.001
    config.batch_size = 256
    config.total_steps = 1_000_000
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 10_000
    config.log_every = 100
    config.eval_every = 10_000
    config.checkpoint_every = 5_000
    return config

"""GPT-2 small (124M: 12 layers, width 768) with GPT-2's shapes: 1,024-token rows, a 50,257-token
byte-level vocabulary, AdamW 6e-4 with cosine decay, batch 512 rows (half a million tokens).

    jft pretrain --config pretrain/gpt2_small --workdir runs/gpt2-small --config.data.prepared=rows

Prepare the rows once (jft vocab corpus.txt --kind bytelevel --vocab-size 50257 --out vocab; jft
prepare corpus.txt --vocab vocab --mode causal --seq-len 1024 --out rows), or continue from GPT-2's
own weights with --config.init_from=DIR (a Hugging Face GPT-2 directory). bf16 compute on GPU/TPU,
float32 master weights; --config.accum_steps splits the batch where a device cannot hold it.
"""

from jft.defaults import model_group
from jft.defaults import pretrain as default_config


def get_config():
    config = default_config("gpt2")
    config.model = model_group("small", "gpt2", dtype="auto")
    config.data.mode = "causal"
    config.data.lowercase = False
    config.data.vocab_size = 50257
    config.data.seq_len = 1024
    config.data.eval_fraction = 0.001
    config.batch_size = 512
    config.total_steps = 600_000
    config.optim.lr = 6e-4
    config.optim.b2 = 0.95
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.1
    config.optim.decay = "cosine"
    config.optim.warmup_steps = 2_000
    config.log_every = 100
    config.eval_every = 5_000
    config.eval_batches = 20
    config.checkpoint_every = 5_000
    return config

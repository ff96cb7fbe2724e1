"""A tiny BERT (2 layers, hidden 64) for a CPU: pretrain on your own text file in one command.

    jft pretrain --config pretrain/tiny --workdir runs/tiny --config.data.corpus=my_text.txt

The text file holds one sentence per line and a blank line between documents. A WordPiece
vocabulary is trained on it, the rows are prepared into runs/tiny/data, and checkpoints go to
runs/tiny/checkpoints. Kill it and run the same command again: it resumes where it stopped.
"""

from jft.defaults import pretrain as default_config


def get_config():
    config = default_config()
    config.data.vocab_size = 4000
    config.data.seq_len = 128
    config.batch_size = 32
    config.total_steps = 2000
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 100
    config.log_every = 20
    config.eval_every = 200
    config.checkpoint_every = 200
    return config

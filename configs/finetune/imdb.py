"""IMDb sentiment (TFDS imdb_reviews, prepared beforehand), long reviews truncated to 512 tokens.

jft finetune --config finetune/imdb --workdir runs/imdb --config.init_from=runs/base
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config()
    config.l2.reference = "auto"  # θ_ref: the weights init_from gives (L2-SP), 0 from scratch
    config.task = "classification"
    config.data.train, config.data.eval = "tfds:imdb_reviews:train", "tfds:imdb_reviews:test"
    config.data.seq_len = 512
    config.batch_size = 16
    config.epochs = 2
    config.optim.lr = 2e-5
    return config

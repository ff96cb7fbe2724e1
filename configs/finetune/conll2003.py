"""CoNLL-2003 named entities (TFDS conll2003, prepared beforehand): a tag on the first word-piece
of each word, entity-level F1 picks the best checkpoint.

    jft finetune --config finetune/conll2003 --workdir runs/ner --config.init_from=runs/base
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config()
    config.l2.reference = "auto"  # θ_ref: the weights init_from gives (L2-SP), 0 from scratch
    config.task = "token_classification"
    config.data.train, config.data.eval = "tfds:conll2003:train", "tfds:conll2003:dev"
    config.data.text_column, config.data.label_column = "tokens", "ner"
    config.data.lowercase = False
    config.best_metric = "entity_f1"
    config.batch_size = 32
    config.epochs = 3
    config.optim.lr = 3e-5
    return config

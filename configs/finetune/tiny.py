"""A tiny task from scratch or from a tiny pretraining run: fine-tune on your own CSV.

    jft finetune --config finetune/tiny --workdir runs/tiny-task \\
        --config.init_from=runs/tiny --config.data.train=train.csv --config.data.eval=dev.csv

The CSV has a `text` and a `label` column (map others with --config.data.text_column=...,
text_pair_column=..., label_column=...). init_from may be a pretraining run, a fine-tuning run or a
Hugging Face directory: its architecture and vocabulary are used. Without init_from the model
starts from scratch, a tiny preset with data.vocab as its vocabulary.
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config()
    config.l2.reference = "auto"  # θ_ref: the weights init_from gives (L2-SP), 0 from scratch
    config.model.preset = "tiny"  # from scratch; with init_from, its architecture
    config.optim.lr = 1e-3
    config.epochs = 3
    config.batch_size = 16
    config.log_every = 10
    return config

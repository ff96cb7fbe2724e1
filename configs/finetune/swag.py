"""Multiple choice as SWAG poses it: a context (sent1), the start of its next sentence (sent2) and
four endings (ending0..ending3) of which `label` is the right one. Each candidate is the pair
(sent1, sent2 + " " + ending), scored by one output on the pooled state; a softmax over the four
gives the loss (Hugging Face's run_swag). SWAG's train.csv / val.csv have these columns.

    jft finetune --config finetune/swag --workdir runs/swag --config.init_from=runs/base \
        --config.data.train=train.csv --config.data.eval=val.csv
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config()
    config.task = "multiple_choice"
    config.data.text_column, config.data.text_pair_column, config.data.label_column = "sent1", "sent2", "label"
    config.data.choice_columns = "ending0,ending1,ending2,ending3"
    config.data.seq_len = 128
    config.best_metric = "accuracy"
    config.batch_size = 16
    config.epochs = 3
    config.optim.lr = 5e-5
    return config

"""Extractive question answering on SQuAD v2.0, where a question may have no answer in its context:
finetune/squad with unanswerable questions (the first token's start and end logits score "no
answer"; qa.null_threshold moves the balance).

    jft finetune --config finetune/squad_v2 --workdir runs/squad2 --config.init_from=runs/base \
        --config.data.train=train-v2.0.json --config.data.eval=dev-v2.0.json
"""

from jft.configs.finetune.squad import get_config as squad


def get_config():
    config = squad()
    config.qa.unanswerable = True
    return config

"""Extractive question answering on SQuAD v1.1 (its train-v1.1.json and dev-v1.1.json, or the same
records as JSONL/CSV with question, context and answers): windows of 384 tokens sharing 128
(Hugging Face's run_qa), batch 32, lr 5e-5, 3 epochs (the BERT paper's SQuAD v1.1 settings); F1
picks the best checkpoint.

    jft finetune --config finetune/squad --workdir runs/squad --config.init_from=runs/base \
        --config.data.train=train-v1.1.json --config.data.eval=dev-v1.1.json
    jft eval --workdir runs/squad --data dev-v1.1.json
    jft predict --workdir runs/squad --input dev-v1.1.json --output predictions.json
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config()
    config.task = "question_answering"
    config.data.text_column, config.data.text_pair_column, config.data.label_column = "question", "context", "answers"
    config.data.seq_len, config.data.doc_stride = 384, 128
    config.best_metric = "f1"
    config.batch_size = 32
    config.epochs = 3
    config.optim.lr = 5e-5
    return config

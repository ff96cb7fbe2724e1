"""GLUE tasks from TFDS (prepared beforehand: `tfds build glue/TASK --file_format=array_record`).

    jft finetune --config finetune/glue:sst2 --workdir runs/sst2 --config.init_from=runs/base

The text after ':' is the task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli. Defaults
follow BERT's fine-tuning recipe: Adam, lr 2e-5 with 10% warmup and linear decay, batch 32,
3 epochs, seq 128, plus the L2 term λ·Σ‖θ − θ_ref‖² with λ = 1e-4 and θ_ref = init_from's
weights (L2-SP; --config.l2.reference=zero for plain L2). Model sizes come from init_from.
"""

from jft.defaults import finetune as default_config

# task: (text column, text pair column, kind, metric that picks the best checkpoint, eval split)
TASKS = {
    "cola": ("sentence", "", "classification", "mcc", "validation"),
    "sst2": ("sentence", "", "classification", "accuracy", "validation"),
    "mrpc": ("sentence1", "sentence2", "classification", "f1", "validation"),
    "qqp": ("question1", "question2", "classification", "f1", "validation"),
    "stsb": ("sentence1", "sentence2", "regression", "pearson", "validation"),
    "mnli": ("premise", "hypothesis", "classification", "accuracy", "validation_matched"),
    "qnli": ("question", "sentence", "classification", "accuracy", "validation"),
    "rte": ("sentence1", "sentence2", "classification", "accuracy", "validation"),
    "wnli": ("sentence1", "sentence2", "classification", "accuracy", "validation"),
}


def get_config(task: str = "sst2"):
    if task not in TASKS:
        raise ValueError(f"unknown GLUE task '{task}'; choose one of {', '.join(sorted(TASKS))}")
    text, pair, kind, metric, eval_split = TASKS[task]
    config = default_config()
    config.l2.reference = "auto"  # θ_ref: the weights init_from gives (L2-SP), 0 from scratch
    config.task = kind
    config.data.train = f"tfds:glue/{task}:train"
    config.data.eval = f"tfds:glue/{task}:{eval_split}"
    config.data.text_column, config.data.text_pair_column = text, pair
    config.best_metric = metric
    config.optim.lr = 2e-5
    config.epochs = 3
    config.batch_size = 32
    return config

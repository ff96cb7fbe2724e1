"""What every config key means, and the names other trainers give them.

`jft config CONFIG` prints each key with its value, its default and the line below; an unknown
key that another trainer uses (learning_rate, num_train_epochs, ...) is answered with jft's name.
A test checks that every key of every stage's default config has a meaning here.
"""

from ml_collections import ConfigDict

MODEL = {
    "model.preset": "architecture of a run from scratch: tiny, mini, base or large (init_from: the checkpoint's)",
    "model.vocab_size": "tokens in the embedding table (unset: the vocabulary's size)",
    "model.hidden_size": "width of the encoder",
    "model.num_hidden_layers": "encoder layers",
    "model.num_attention_heads": "attention heads a layer",
    "model.intermediate_size": "width of each layer's feed-forward block",
    "model.hidden_act": "activation of the feed-forward block (gelu, relu, ...)",
    "model.hidden_dropout_prob": "dropout on hidden states (may differ from init_from's)",
    "model.attention_probs_dropout_prob": "dropout on attention weights (0 for attention_impl cudnn or splash)",
    "model.max_position_embeddings": "position table: the longest row the model takes",
    "model.type_vocab_size": "token types (segments A and B)",
    "model.initializer_range": "standard deviation of new weights",
    "model.layer_norm_eps": "LayerNorm epsilon",
    "model.pad_token_id": "id of [PAD]",
    "model.classifier_dropout": "dropout before the task head (unset: hidden_dropout_prob)",
    "model.dtype": "compute dtype: float32, bfloat16 or auto (bf16 on GPU/TPU); may change on resume",
    "model.param_dtype": "dtype of the weights (keep float32)",
    "model.attention_impl": "xla; cudnn (fused GPU kernel) or splash (Pallas TPU kernel): no attention dropout",
    "model.remat": "recompute in the backward pass: none (no matmul twice), dots (attention's too), full (least kept)",
    "model.scan_layers": "layers as one loop (compiles fast at any depth); false: unrolled (same weights)",
    "model.vocab_multiple": "pad the masked-LM decoder's vocabulary to a multiple of this (e.g. 128); never exported",
}
OPTIM = {
    "optim.name": "adamw or lamb",
    "optim.lr": "peak learning rate",
    "optim.warmup_steps": "steps of linear warmup (fine-tuning, 0: warmup_fraction of all steps)",
    "optim.decay": "after warmup: linear, cosine (to 0 at the last step) or constant",
    "optim.b1": "Adam's first-moment decay",
    "optim.b2": "Adam's second-moment decay",
    "optim.eps": "Adam's epsilon",
    "optim.weight_decay": "AdamW's decoupled decay (never on biases or LayerNorm)",
    "optim.max_grad_norm": "clip the global gradient norm to this (0: no clipping)",
}
RUN = {
    "init_from": "a jft run or a Hugging Face BERT directory to start from (its architecture and vocabulary)",
    "batch_size": "global batch: rows (pretraining) or examples (fine-tuning) a step, over all devices",
    "accum_steps": "split each batch into this many micro-batches (gradient accumulation; same update)",
    "seed": "initialisation, data order, masking and dropout",
    "log_every": "steps between training metrics (metrics.jsonl, TensorBoard, the progress line)",
    "progress": "a progress bar on a terminal, a line every log step otherwise",
    "parallel.backend": "shard_map, pmap, or jit (one device)",
    "parallel.coordinator_address": "several processes: HOST:PORT of process 0",
    "parallel.num_processes": "several processes: how many (0: found by jax.distributed on a TPU pod or SLURM)",
    "parallel.process_id": "several processes: this one's index",
    "guard.max_skipped_in_a_row": "stop (exit 1) after this many updates in a row were not finite",
    "guard.warn_loss_above": "warn when the training loss goes above this",
    "guard.warn_rising_evals": "warn when an evaluation loss rose this many times in a row (0: never)",
}
PRETRAIN = {
    "data.corpus": "text file(s) (comma-separated), JSONL, or tfds:NAME[:SPLIT]; prepared into <workdir>/data",
    "data.prepared": "a `jft prepare` directory, instead of data.corpus",
    "data.vocab": "vocab.txt or tokenizer.json (empty: init_from's, or trained on the corpus)",
    "data.vocab_size": "size of a vocabulary trained on the corpus",
    "data.lowercase": "lowercase the text (a vocab.txt's casing)",
    "data.text_field": "the text field of JSONL and TFDS records",
    "data.tfds_data_dir": "where TFDS datasets are built (empty: TFDS's default)",
    "data.seq_len": "tokens a row",
    "data.mode": "pairs (masked-LM + next-sentence) or packed (masked-LM only)",
    "data.eval_fraction": "documents held out for evaluation",
    "data.streams": "streams of whole shards a batch draws from equally (processes or a multiple: each reads its own)",
    "masking.rate": "fraction of tokens masked",
    "masking.max_predictions": "at most this many masked tokens a row",
    "masking.whole_word": "mask all pieces of a word together",
    "total_steps": "optimizer steps of the run",
    "eval_every": "steps between held-out evaluations",
    "eval_batches": "batches a held-out evaluation reads (0: none)",
    "checkpoint_every": "steps between checkpoints",
    "keep_checkpoints": "checkpoints kept (at least 1)",
    "async_checkpoints": "save in the background",
}
FINETUNE = {
    "task": "classification, regression or token_classification",
    "data.train": "CSV, TSV or JSONL file, or tfds:NAME:SPLIT",
    "data.eval": "evaluation data (empty: none; the last weights count as best)",
    "data.test": "test data, evaluated once at the end with the best model",
    "data.text_column": "the text column (token classification: the list of words)",
    "data.text_pair_column": "the second text of sentence-pair tasks",
    "data.label_column": "the label column (token classification: the list of tags)",
    "data.seq_len": "longer texts are truncated",
    "data.vocab": "vocab.txt or tokenizer.json (empty: init_from's)",
    "data.lowercase": "lowercase the text (a vocab.txt's casing)",
    "data.layout": "padded, bucketed (similar lengths a batch) or packed (several short texts a row)",
    "data.buckets": "bucketed: at most this many batch widths, each a compiled program",
    "data.max_segments": "packed: at most this many examples a row",
    "data.tfds_data_dir": "where TFDS datasets are built",
    "l2.weight": "λ of the penalty λ·Σ‖θ − θ_ref‖² (part of the loss)",
    "l2.reference": "θ_ref: zero, or init (the weights the run started from: L2-SP)",
    "l2.exclude_bias_and_layer_norm": "leave biases and LayerNorm out of the penalty",
    "joint_mlm.weight": "μ of the joint objective: + μ·(masked-LM loss on the task's text); 0: off",
    "joint_mlm.rate": "joint objective: fraction of tokens masked",
    "joint_mlm.max_predictions": "joint objective: at most this many masked tokens a row",
    "warmup_fraction": "warmup as a fraction of all steps, when optim.warmup_steps is 0",
    "epochs": "passes over the training data",
    "max_steps": "stop after this many steps, whatever epochs say (0: no limit)",
    "eval_every": "steps between evaluations (0: at each epoch's end)",
    "eval_batch_size": "examples a batch when evaluating and predicting (0: batch_size)",
    "best_metric": "the score that picks best/ (empty: accuracy, pearson or entity_f1)",
    "early_stopping.patience": "stop after this many evaluations without a better best_metric (0: never)",
    "sweep.grid": "jft sweep: {'optim.lr': [...], 'seed': [...]}, every combination trained (finetune ignores it)",
    "sweep.folds": "jft sweep: k-fold cross-validation on data.train (0: score on data.eval)",
    "sweep.metric": "jft sweep: the score that ranks grid points (empty: best_metric's)",
    "sweep.population": "jft sweep: at most this many members trained at once (0: a whole group)",
}
QUICKSTART = {
    "corpus.documents": "synthetic documents to pretrain on",
    "corpus.seed": "seed of the synthetic corpus",
    "pretrain.steps": "pretraining steps",
    "pretrain.batch_size": "pretraining batch",
    "pretrain.seq_len": "tokens a row",
    "pretrain.lr": "pretraining learning rate",
    "pretrain.warmup_steps": "pretraining warmup",
    "pretrain.max_predictions": "masked tokens a row",
    "pretrain.vocab_size": "size of the vocabulary trained on the corpus",
    "finetune.train_examples": "labeled sentences a seed trains on",
    "finetune.eval_examples": "held-out sentences with unseen nouns",
    "finetune.seeds": "seeds, each with its own labeled sentences",
    "finetune.epochs": "fine-tuning epochs",
    "finetune.batch_size": "fine-tuning batch",
    "finetune.lr": "fine-tuning learning rate",
    "finetune.l2_weight": "λ of the L2 penalty",
    "finetune.l2_reference": "θ_ref: zero or init",
    "parallel_backend": "shard_map, pmap or jit",
    "progress": "progress bars",
}
BENCH = {
    "workloads": "pretrain, finetune (comma-separated)",
    "batch_size": "global batch",
    "seq_len": "tokens a row",
    "max_predictions": "masked positions a pretraining row",
    "nsp": "pretraining with next-sentence prediction",
    "finetune.num_labels": "classes of the fine-tuning head",
    "finetune.mean_length": "0: every example seq_len long; >0: lengths drawn with this mean",
    "finetune.layout": "padded, bucketed or packed",
    "finetune.max_segments": "packed: examples a row at most",
    "finetune.batches": "distinct batches in the timed stream",
    "backend": "shard_map, pmap or jit",
    "warmup_steps": "untimed steps after compiling",
    "windows": "timed windows (the figure is their median)",
    "window_steps": "steps a timed window",
    "seed": "seed of the synthetic data",
}
INIT = {
    "heads": "pretraining (MLM + NSP), mlm or encoder",
    "seed": "initialisation",
    "format": "safetensors or msgpack",
}

# Names other trainers use (Hugging Face Trainer, big_vision, fairseq) and jft's; a target that
# starts with '--' is a command-line option, not a config key.
SYNONYMS = {
    "learning_rate": "optim.lr",
    "lr": "optim.lr",
    "peak_lr": "optim.lr",
    "warmup_steps": "optim.warmup_steps",
    "weight_decay": "optim.weight_decay",
    "max_grad_norm": "optim.max_grad_norm",
    "adam_beta1": "optim.b1",
    "adam_beta2": "optim.b2",
    "adam_epsilon": "optim.eps",
    "optimizer": "optim.name",
    "lr_scheduler_type": "optim.decay",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "max_steps": "total_steps",
    "num_train_steps": "total_steps",
    "train_steps": "total_steps",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "accum_steps",
    "max_seq_length": "data.seq_len",
    "max_length": "data.seq_len",
    "seq_len": "data.seq_len",
    "logging_steps": "log_every",
    "eval_steps": "eval_every",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "model_name_or_path": "init_from",
    "output_dir": "--workdir",
    "train_file": "data.train",
    "validation_file": "data.eval",
    "test_file": "data.test",
    "metric_for_best_model": "best_metric",
    "early_stopping_patience": "early_stopping.patience",
    "dropout": "model.hidden_dropout_prob",
    "mlm_probability": "masking.rate",
    "vocab": "data.vocab",
}


def _stage(config: ConfigDict) -> str:
    keys = set(config.keys())
    for stage, key in (("pretrain", "total_steps"), ("finetune", "epochs"), ("bench", "workloads")):
        if key in keys:
            return stage
    return "quickstart" if "corpus" in keys else "init" if "heads" in keys else ""


def meanings(config: ConfigDict) -> dict[str, str]:
    """The meaning of each key of a config, by the stage its keys tell."""
    stage = {"pretrain": PRETRAIN, "finetune": FINETUNE, "bench": BENCH, "quickstart": QUICKSTART, "init": INIT}
    return {**MODEL, **OPTIM, **RUN, **stage.get(_stage(config), {})}


def defaults(config: ConfigDict) -> ConfigDict | None:
    """The default config of the stage whose keys config has (None for another kind of config)."""
    from jft import bench, finetune, pretrain, quickstart

    makers = {
        "pretrain": pretrain.default_config,
        "finetune": finetune.default_config,
        "bench": bench.default_config,
        "quickstart": quickstart.default_config,
    }
    maker = makers.get(_stage(config))
    return maker() if maker else None


def describe(config: ConfigDict) -> str:
    """Every key of config: its value, its default where it differs, and what it means."""
    from jft.config import leaf_keys

    values, base, table = config.to_dict(), defaults(config), meanings(config)
    lines = []
    for key in leaf_keys(config):
        value = _get(values, key)
        default = _get(base.to_dict(), key) if base is not None and key in leaf_keys(base) else value
        changed = f"  (default {default!r})" if default != value else ""
        lines.append(f"{key} = {value!r}{changed}  # {table.get(key, '')}".rstrip(" #"))
    return "\n".join(lines)


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def synonym(key: str, valid: list[str]) -> str:
    """' jft calls it X (--config.X=...).' when key is another trainer's name for a key of valid."""
    target = SYNONYMS.get(key.rsplit(".", 1)[-1])
    if target == "total_steps" and target not in valid and "max_steps" in valid:
        target = "max_steps"
    if target and target.startswith("--"):
        return f" jft takes it as the command-line option {target}."
    if target and target in valid:
        return f" jft calls it '{target}' (--config.{target}=...)."
    return ""

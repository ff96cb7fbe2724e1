"""Every key of every command's config, its default and what it means, in one place.

A stage's config is built from its table here (`pretrain()`, `finetune()`, `bench()`, ...), so a
key cannot exist without a meaning: `jft config CONFIG` prints each key with its value, its
default and its line, and docs/config.md is generated from these tables (`jft config
--reference`; a test keeps it current). The `model` group holds the family ("bert"), a preset
and the family's own fields, whose meanings the family gives (jft.models).
"""

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict, config_dict

from jft.config import leaf_keys, value_at, with_overrides
from jft.data.prepare import EVAL_FRACTION
from jft.errors import JftError, choices
from jft.models import FAMILIES, field_names
from jft.models import get as get_family

# A table: dotted key -> (default, meaning). Groups are the keys' prefixes.
Table = dict[str, tuple[Any, str]]

MODEL: Table = {
    "model.family": (
        "",
        f"the family of a model from scratch: {', '.join(FAMILIES)} (empty: bert; init_from: its own)",
    ),
    "model.preset": (
        "",
        "architecture of a run from scratch: bert tiny, mini, base, large; gpt2 tiny, small, medium, large; "
        "roberta and modernbert tiny, base, large; resnet tiny, resnet18, 34, 50, 101; vgg tiny, vgg11, 13, 16, "
        "19 (each also _bn) (init_from: the checkpoint's)",
    ),
}
OPTIM: Table = {
    "optim.name": ("adamw", "adamw, lamb or sgd (momentum optim.b1, the ImageNet recipe's)"),
    "optim.lr": (1e-4, "peak learning rate"),
    "optim.warmup_steps": (100, "steps of linear warmup (fine-tuning, 0: warmup_fraction of all steps)"),
    "optim.decay": ("linear", "after warmup: linear, cosine (to 0 at the last step) or constant"),
    "optim.b1": (0.9, "Adam's first-moment decay; sgd: the momentum (0: none)"),
    "optim.nesterov": (True, "sgd: Nesterov's momentum"),
    "optim.b2": (0.999, "Adam's second-moment decay"),
    "optim.eps": (1e-6, "Adam's epsilon"),
    "optim.weight_decay": (0.01, "AdamW's decoupled decay; sgd: added to the gradients (never on biases or LayerNorm)"),
    "optim.max_grad_norm": (1.0, "clip the global gradient norm to this (0: no clipping)"),
}
PARALLEL: Table = {
    "parallel.backend": ("shard_map", "shard_map, pmap, or jit (one device)"),
    "parallel.shard_state": (
        "none",
        "split the training state over the devices: none (a copy on each), optimizer (Adam's moments: ZeRO-1), "
        "all (parameters, moments and θ_ref: FSDP); shard_map backend",
    ),
    "parallel.coordinator_address": ("", "several processes: HOST:PORT of process 0"),
    "parallel.num_processes": (1, "several processes: how many (0: found by jax.distributed on a TPU pod or SLURM)"),
    "parallel.process_id": (0, "several processes: this one's index"),
}
GUARD: Table = {
    # Skipped updates change nothing, so the saved weights stay the last good ones.
    "guard.max_skipped_in_a_row": (10, "stop (exit 1) after this many updates in a row were not finite"),
    "guard.warn_loss_above": (1e4, "warn when the training loss goes above this"),
    "guard.warn_rising_evals": (3, "warn when an evaluation loss rose this many times in a row (0: never)"),
    "guard.min_context_gain": (
        0.1,
        "warn when a pretraining's held-out MLM loss ends less than this many nats below the unigram entropy "
        "of its data (context_gain): it learned token frequencies, not context (0: never)",
    ),
}
# The regulariser the project is named for, part of the loss (coupled L2).
L2: Table = {
    "l2.weight": (1e-4, "λ of the penalty λ·Σ‖θ − θ_ref‖² (part of the loss)"),
    "l2.reference": (
        "auto",
        "θ_ref: zero (λ‖θ‖²), init (λ‖θ − θ_init‖², L2-SP: the weights the run started from, heads aside), "
        "or auto: init with init_from, zero from scratch",
    ),
    "l2.exclude_bias_and_layer_norm": (True, "leave biases and LayerNorm out of the penalty"),
}
RUN: Table = {
    "init_from": ("", "a jft run or a Hugging Face directory to start from (its architecture and vocabulary)"),
    "batch_size": (256, "global batch: rows (pretraining) or examples (fine-tuning) a step, over all devices"),
    "accum_steps": (1, "split each batch into this many micro-batches (gradient accumulation; same update)"),
    "seed": (0, "initialisation, data order, masking and dropout"),
    "log_every": (50, "steps between training metrics (metrics.jsonl, TensorBoard, the progress line)"),
    "progress": (True, "a progress bar on a terminal, a line every log step otherwise (off: only evaluations)"),
    **PARALLEL,
    **GUARD,
}
PRETRAIN: Table = {
    **MODEL,
    "data.corpus": ("", "text file(s) (comma-separated), JSONL, or tfds:NAME[:SPLIT]; prepared into <workdir>/data"),
    "data.vocab": ("", "vocab.txt, tokenizer.json or vocab.json + merges.txt (empty: init_from's, or trained)"),
    "data.vocab_size": (8000, "size of a vocabulary trained on the corpus"),
    "data.vocab_kind": (
        "",
        "the vocabulary trained on the corpus: wordpiece, bytelevel, roberta or unigram (XLM-R's); empty: the "
        "family's (bert: wordpiece, gpt2: bytelevel, roberta and modernbert: roberta)",
    ),
    "data.lowercase": (True, "lowercase the text (a vocab.txt's casing)"),
    "data.text_field": ("text", "the text field of JSONL and TFDS records"),
    "data.tfds_data_dir": ("", "where TFDS datasets are built (empty: TFDS's default)"),
    "data.prepared": ("", "a `jft prepare` directory, instead of data.corpus"),
    "data.seq_len": (128, "tokens a row"),
    "data.mode": (
        "pairs",
        "pairs (masked-LM + next-sentence), packed (masked-LM only) or causal (next-word: gpt2)",
    ),
    # jft prepare's default, so that both prepare the same rows from the same corpus.
    "data.eval_fraction": (EVAL_FRACTION, "documents held out for evaluation (as `jft prepare --eval-fraction`)"),
    "data.streams": (
        1,
        "streams of whole shards a batch draws from equally (processes or a multiple: each reads its own)",
    ),
    "masking.rate": (0.15, "fraction of tokens masked (masked-LM)"),
    "masking.max_predictions": (20, "at most this many masked tokens a row"),
    "masking.whole_word": (False, "mask all pieces of a word together"),
    # Continued pretraining on a domain corpus pulled toward the weights it starts from (L2-SP).
    **L2,
    "l2.weight": (0.0, "λ of the penalty λ·Σ‖θ − θ_ref‖² (part of the loss; 0: none, the usual from scratch)"),
    **OPTIM,
    **RUN,
    "total_steps": (1000, "optimizer steps of the run (may be raised on resume: the schedule stretches)"),
    "eval_every": (500, "steps between held-out evaluations"),
    "eval_batches": (10, "batches a held-out evaluation reads (0: none)"),
    "checkpoint_every": (500, "steps between checkpoints"),
    "keep_checkpoints": (3, "checkpoints kept (at least 1)"),
    "async_checkpoints": (True, "save in the background"),
}
SWEEP: Table = {
    "sweep.grid": (
        {},
        "jft sweep: {'optim.lr': [...], 'seed': [...]}, every combination trained (finetune ignores it)",
    ),
    "sweep.folds": (0, "jft sweep: k-fold cross-validation on data.train (0: score on data.eval)"),
    "sweep.metric": ("", "jft sweep: the score that ranks grid points (empty: best_metric's)"),
    "sweep.population": (0, "jft sweep: at most this many members trained at once (0: a whole group)"),
}
FINETUNE: Table = {
    **MODEL,
    "task": (
        "classification",
        "classification, regression, token_classification, question_answering or multiple_choice",
    ),
    "label_smoothing": (0.0, "classification: ε of the target spread over every class (0.1 in the ImageNet recipe)"),
    "qa.max_answer_length": (30, "question answering: the longest answer, in tokens"),
    "qa.n_best": (20, "question answering: the start and end tokens tried, and the candidate answers kept"),
    "qa.unanswerable": (False, "question answering: a question may have no answer (SQuAD v2.0)"),
    "qa.null_threshold": (0.0, "unanswerable: answer nothing when the no-answer score beats the best span's by more"),
    "data.train": (
        "",
        "CSV, TSV or JSONL file, or tfds:NAME:SPLIT; an image model's: a folder a class (DIR/<class>/<image>), an "
        ".npz (images, labels), a TFDS image dataset, or a `jft prepare --side` directory of them",
    ),
    "data.eval": ("", "evaluation data (empty: none; the last weights count as best)"),
    "data.test": ("", "test data, evaluated once at the end with the best model"),
    "data.text_column": ("text", "the text column (token classification: the list of words; QA: the question)"),
    "data.text_pair_column": ("", "the second text of sentence-pair tasks (question answering: the context)"),
    "data.label_column": ("label", "the label column (token classification: the list of tags; QA: the answers)"),
    "data.choice_columns": ("", "multiple choice: the candidates' columns, comma-separated (ending0,ending1,...)"),
    "data.seq_len": (128, "longer texts are truncated (question answering: cut into windows)"),
    "data.doc_stride": (128, "question answering: the tokens of context two windows of one question share"),
    "data.vocab": ("", "vocab.txt or tokenizer.json (empty: init_from's)"),
    "data.lowercase": (True, "lowercase the text (a vocab.txt's casing)"),
    "data.layout": ("bucketed", "padded, bucketed (similar lengths a batch) or packed (several short texts a row)"),
    "data.buckets": (4, "bucketed: at most this many batch widths, each a compiled program"),
    "data.max_segments": (16, "packed: at most this many examples a row"),
    "data.tfds_data_dir": ("", "where TFDS datasets are built"),
    "data.skip_bad_images": (False, "images: leave out files PIL cannot read (else each is an error naming it)"),
    "data.augment": (True, "images: random resized crop and horizontal flip in training (on the device)"),
    "data.min_crop": (0.08, "images: the smallest crop, a fraction of the image's area"),
    "data.mixup": (0.0, "images: mixup's α (neighbouring rows mixed with Beta(α, α) weights; 0.2 is usual; 0: off)"),
    **L2,
    **OPTIM,
    # AdamW's decoupled decay is a different regulariser: off, so the L2 term is the only one.
    "optim.lr": (2e-5, "peak learning rate"),
    "optim.warmup_steps": (0, "steps of linear warmup (fine-tuning, 0: warmup_fraction of all steps)"),
    "optim.weight_decay": (0.0, "AdamW's decoupled decay; sgd: added to the gradients (never on biases or LayerNorm)"),
    "joint_mlm.weight": (
        0.0,
        "μ of the joint objective: + μ·(the family's pretraining loss on the task's text: masked-LM, or next-word "
        "for gpt2; an image model's: its pretraining classifier's on joint_mlm.data); 0: off",
    ),
    "joint_mlm.data": (
        "",
        "image models only: the pretraining images L_pre is computed on (a folder a class; init_from's classes); "
        "a text model's is the task's text",
    ),
    "joint_mlm.rate": (0.15, "joint objective: fraction of tokens masked"),
    "joint_mlm.max_predictions": (20, "joint objective: at most this many masked tokens a row"),
    "warmup_fraction": (0.1, "warmup as a fraction of all steps, when optim.warmup_steps is 0"),
    "epochs": (3, "passes over the training data (may be raised on resume: the schedule stretches)"),
    "max_steps": (0, "stop after this many steps, whatever epochs say (0: no limit)"),
    **RUN,
    "batch_size": (32, "global batch: examples a step, over all devices"),
    "eval_batch_size": (0, "examples a batch when evaluating and predicting (0: batch_size)"),
    "eval_every": (0, "steps between evaluations (0: at each epoch's end)"),
    "keep_checkpoints": (2, "checkpoints kept, one an epoch (at least 1; a damaged newest: the one before)"),
    "best_metric": ("", "the score that picks best/ (empty: accuracy, pearson or entity_f1)"),
    "early_stopping.patience": (0, "stop after this many evaluations without a better best_metric (0: never)"),
    **SWEEP,
}
BENCH: Table = {
    "model.family": ("bert", f"the family of models: {', '.join(FAMILIES)}"),
    "workloads": ("pretrain,finetune", "pretrain, finetune (comma-separated)"),
    "batch_size": (32, "global batch"),
    "seq_len": (128, "tokens a row"),
    "max_predictions": (20, "masked positions a pretraining row (MLM logits only there)"),
    "nsp": (True, "pretraining with next-sentence prediction"),
    "finetune.num_labels": (2, "classes of the fine-tuning head"),
    "finetune.mean_length": (0, "0: every example seq_len long; >0: lengths drawn with this mean (SST-2's: about 25)"),
    "finetune.layout": ("padded", "padded, bucketed or packed"),
    "finetune.max_segments": (16, "packed: examples a row at most"),
    "finetune.batches": (16, "distinct batches in the timed stream"),
    "augment": (True, "image models: random resized crop and flip in the step, as training does"),
    "backend": ("shard_map", "shard_map, pmap or jit"),
    "shard_state": ("none", "none, optimizer or all: the training state split over the devices (parallel.shard_state)"),
    "warmup_steps": (3, "untimed steps after compiling"),
    "windows": (10, "timed windows (the figure is their median)"),
    "window_steps": (5, "steps a timed window"),
    "seed": (0, "seed of the synthetic data"),
}
QUICKSTART: Table = {
    **MODEL,
    "corpus.documents": (300, "synthetic documents to pretrain on"),
    "corpus.seed": (0, "seed of the synthetic corpus"),
    "pretrain.steps": (1000, "pretraining steps"),
    "pretrain.batch_size": (32, "pretraining batch"),
    "pretrain.seq_len": (64, "tokens a row"),
    "pretrain.lr": (2e-3, "pretraining learning rate"),
    "pretrain.warmup_steps": (20, "pretraining warmup"),
    "pretrain.max_predictions": (10, "masked tokens a row"),
    # 200 splits a few nouns into word-pieces. (400 keeps every word whole, and pretraining then
    # helped less in 1000 steps: 0.50 against 0.29 held-out accuracy, instead of 0.96 against 0.31.)
    "pretrain.vocab_size": (200, "size of the vocabulary trained on the corpus"),
    "finetune.train_examples": (16, "labeled sentences a seed trains on (few, so that pretraining matters)"),
    "finetune.eval_examples": (400, "held-out sentences with unseen nouns"),
    "finetune.seeds": (3, "seeds, each with its own labeled sentences"),
    "finetune.epochs": (60, "fine-tuning epochs (enough for both runs to fit the labeled sentences)"),
    "finetune.batch_size": (8, "fine-tuning batch"),
    "finetune.lr": (1e-3, "fine-tuning learning rate"),
    "finetune.l2_weight": (1e-4, "λ of the L2 penalty"),
    "finetune.l2_reference": ("auto", "θ_ref: zero, init or auto (init for the pretrained run, zero from scratch)"),
    "parallel_backend": ("jit", "shard_map, pmap or jit"),
    "progress": (True, "progress bars"),
}
INIT: Table = {
    "model.family": ("bert", f"the family of models: {', '.join(FAMILIES)}"),
    "heads": ("pretraining", "pretraining (MLM + NSP), mlm or encoder"),
    "seed": (0, "initialisation"),
    "format": ("safetensors", "safetensors or msgpack"),
}
INFERENCE: Table = {
    "data.text_column": ("", "the text column of the new data (empty: the run's)"),
    "data.text_pair_column": ("", "the second text column (empty: the run's)"),
    "data.label_column": ("", "the label column (empty: the run's)"),
    "data.id_column": ("", "predict: the column whose value names each prediction (empty: its row)"),
    "data.skip_bad_images": (False, "images: leave out files PIL cannot read (else each is an error naming it)"),
    "batch_size": (32, "examples a batch"),
    "step": (0, "the model of this step, in best/ or checkpoints/ (0: the best model)"),
    "with_text": (False, "predict: write each record's text beside its prediction"),
}
STAGES: dict[str, Table] = {
    "pretrain": PRETRAIN,
    "finetune": FINETUNE,
    "bench": BENCH,
    "quickstart": QUICKSTART,
    "init": INIT,
    "inference": INFERENCE,
}


def build(table: Table) -> ConfigDict:
    """A ConfigDict of a table's defaults, groups nested by the dots (a dict default, such as
    sweep.grid, stays a plain dict of keys of its own)."""
    config = ConfigDict(convert_dict=False)
    for key, (value, _) in table.items():
        *groups, leaf = key.split(".")
        node = config
        for group in groups:
            if group not in node:
                node[group] = ConfigDict(convert_dict=False)
            node = node[group]
        node[leaf] = dict(value) if isinstance(value, dict) else value
    return config


def model_group(preset: str = "", family: str = "", **fields: Any) -> ConfigDict:
    """The `model` group of a training config: the family (empty: init_from's, or bert), a preset
    and every field of the family's config, unset (None) unless given. A run turns it into its
    model (jft.train.session)."""
    group = ConfigDict({"family": family, "preset": preset})
    for field in dataclasses.fields(get_family(family or "bert").config_type):
        kind = field.type if isinstance(field.type, type) else typing.get_args(field.type)[0]  # float | None: float
        group[field.name] = fields.pop(field.name) if field.name in fields else config_dict.placeholder(kind)
    if fields:
        raise JftError(f"unknown model fields {choices(sorted(fields))}.")
    return group


def overridden(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """config locked, with its 'a.b=value' overrides applied (jft.config.with_overrides), its model
    group first made for the family an override names ('model.family=modernbert'): a training
    config's group holds one family's fields (BERT's where it names none), so the family's own
    (model.mlp_dropout) can then be set. Where the config or the overrides set fields the family
    lacks, the group is left as it is (the run refuses the mix); a field of another family given
    without model.family is refused in one line naming that override. A group of every field (bench,
    init: jft.defaults.model_fields) takes its family from the config's argument instead."""
    if "model" in config and "preset" in config.model and "family" in config.model:
        _for_the_family(config, overrides)
    return with_overrides(config, overrides)


def _for_the_family(config: ConfigDict, overrides: Sequence[str]) -> None:
    group = config.model
    current = get_family(group.family or "bert")
    named = next((o.partition("=")[2] for o in reversed(overrides) if o.startswith("model.family=")), "")
    given = {o.partition("=")[0].removeprefix("model.") for o in overrides if o.startswith("model.")}
    wanted = {name for name in given if "." not in name and name not in group}  # fields the group lacks
    if named and named != current.name:
        own = field_names(get_family(named))  # an unknown name: its own error
        chosen = {key: value for key, value in group.items() if key not in ("family", "preset") and value is not None}
        lacking = sorted((chosen.keys() | (given - {"family", "preset"})) - own)
        if not lacking:
            locked = config.is_locked
            config.model = model_group(group.preset, named, **chosen)
            if locked:
                config.model.lock()
        elif wanted and wanted <= own:  # the family's own fields, which a mixed group cannot take
            raise JftError(
                f"model.family={named}, but the config sets fields {named} models lack ({choices(lacking)}); "
                f"start from a config made for {named} (`jft config` lists them), or leave those out."
            )
        return
    for name in sorted(wanted):
        theirs = [n for n, f in FAMILIES.items() if name in field_names(f) and f.modality == current.modality]
        if theirs:
            which = theirs[0] if len(theirs) == 1 else "NAME, one of them (init_from's)"
            raise JftError(
                f"model.{name} is a field of {choices(theirs)} models, and this config's model group is "
                f"{current.name}'s: give --config.model.family={which} with it."
            )


def model_fields(size: str, family: str = "bert", **overrides: Any) -> ConfigDict:
    """Every field of a named size of the family ('tiny', 'mini', 'base', 'large') as a ConfigDict,
    for commands that build a model from their config alone (bench, init). The values are checked
    when the model is built, so a placeholder may stand for what the run fills in."""
    values = dataclasses.asdict(get_family(family).preset(size))
    return ConfigDict({"family": family, **values, **overrides})


# How the packaged configs' argument names a family's preset (bench:gpt2_small, init:roberta_base):
# BERT's, ResNet's and VGG's bare (their tiny ones as resnet_tiny and vgg_tiny).
SIZE_PREFIXES = {
    "bert": "",
    "gpt2": "gpt2_",
    "roberta": "roberta_",
    "modernbert": "modernbert_",
    "resnet": "",
    "vgg": "",
}


def named_sizes(families: Sequence[str]) -> list[str]:
    """Every preset of families as a packaged config's argument names it (RoBERTa's also as xlm_roberta_)."""
    names = [
        f"{family}_tiny" if family in ("resnet", "vgg") and preset == "tiny" else SIZE_PREFIXES[family] + preset
        for family in families
        for preset in get_family(family).presets
    ]
    if "roberta" in families:
        names += [f"xlm_roberta_{preset}" for preset in get_family("roberta").presets]
    return names


def roberta_vocabulary(size: str) -> dict[str, Any]:
    """The vocabulary fields of a named RoBERTa size ('roberta_base'): RoBERTa's 50,265 tokens, or
    for an xlm_roberta_ size XLM-R's 250,002 and its model_type."""
    if size.startswith("xlm_"):
        return {"vocab_size": 250002, "model_type": "xlm-roberta"}
    return {"vocab_size": 50265}


def _with_model(table: Table, model: ConfigDict) -> ConfigDict:
    config = build(table)
    config.model = model
    return config


def pretrain(family: str = "") -> ConfigDict:
    """Every key of a pretraining config (configs/pretrain/*.py start from it)."""
    return _with_model(PRETRAIN, model_group("tiny", family))


def finetune(family: str = "") -> ConfigDict:
    """Every key of a fine-tuning (and sweep) config (configs/finetune/*.py start from it)."""
    return _with_model(FINETUNE, model_group("", family))


def bench(family: str = "bert") -> ConfigDict:
    """What `jft bench` measures when given no --config; configs/bench.py:SIZE for real sizes.
    dtype auto: float32 on a CPU, bfloat16 on a GPU or TPU (also when compiling for one)."""
    return _with_model(BENCH, model_fields("tiny", family, vocab_size=30522, dtype="auto"))


def quickstart() -> ConfigDict:
    """Sizes and budgets of `jft quickstart`; a few minutes on two CPU cores."""
    model = model_group(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=64
    )
    return _with_model(QUICKSTART, model)


def init(size: str = "tiny", family: str = "bert") -> ConfigDict:
    """`jft init`: a randomly initialised model of a named size, in Hugging Face format."""
    return _with_model(INIT, model_fields(size, family))


def inference() -> ConfigDict:
    """What `jft eval` and `jft predict` take as --config.KEY=VALUE."""
    return build(INFERENCE)


def stage_of(config: ConfigDict) -> str:
    """Which command's config this is, by its keys ('' for none)."""
    keys = set(config.keys())
    for stage, key in (("pretrain", "total_steps"), ("finetune", "epochs"), ("bench", "workloads")):
        if key in keys:
            return stage
    if "corpus" in keys:
        return "quickstart"
    return "init" if "heads" in keys else "inference" if "with_text" in keys else ""


def defaults_of(stage: str) -> ConfigDict | None:
    """The default config of a stage (None for ''), with its model group's family."""
    return {
        "pretrain": pretrain,
        "finetune": finetune,
        "bench": bench,
        "quickstart": quickstart,
        "init": init,
        "inference": inference,
    }.get(stage, lambda: None)()


def meanings(stage: str, family: str = "") -> dict[str, str]:
    """The meaning of every key of a stage's config: its table's, and the model family's fields."""
    fields = {f"model.{name}": meaning for name, meaning in get_family(family or "bert").field_meanings.items()}
    return {key: meaning for key, (_, meaning) in STAGES.get(stage, {}).items()} | fields


def reference(stages: Mapping[str, str] | None = None) -> str:
    """docs/config.md: every key of every command, its default and meaning, as Markdown tables."""
    titles = stages or {
        "pretrain": "`jft pretrain`",
        "finetune": "`jft finetune` and `jft sweep`",
        "bench": "`jft bench`",
        "quickstart": "`jft quickstart`",
        "init": "`jft init`",
        "inference": "`jft eval` and `jft predict`",
    }
    lines = [
        "# Config keys",
        "",
        "Generated from `jft/defaults.py` by `jft config --reference > docs/config.md` (a test keeps it",
        "current). Set any key with `--config.KEY=VALUE`; `jft config CONFIG` prints a config's values.",
    ]
    for stage, title in titles.items():
        config = defaults_of(stage)
        family = (config.model.get("family") if "model" in config else "") or "bert"
        table = meanings(stage, family)
        lines += ["", f"## {title}", "", "| key | default | meaning |", "|---|---|---|"]
        for key in leaf_keys(config):
            value = value_at(config, key)
            shown = "—" if value is None or value == "" else f"`{value!r}`"
            meaning = table.get(key, "").replace("<", "&lt;").replace("|", "\\|")
            lines.append(f"| `{key}` | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"

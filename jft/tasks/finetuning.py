"""What a fine-tuning run is made of, shared by `jft finetune` and `jft sweep`'s members: the
settings checked, the task and its data read and encoded, the tokenizer, the starting parameters
and θ_ref, the batches, the length of the run and the step's setup."""

import dataclasses
import sys
from pathlib import Path

import jax
from ml_collections import ConfigDict

from jft.data.tokenizer import load_tokenizer, special_ids
from jft.errors import JftError, choices
from jft.models import FAMILIES
from jft.models import get as get_family
from jft.params import flatten, merge, subtree
from jft.tasks.batches import LAYOUTS, TaskBatches
from jft.tasks.records import (
    KINDS,
    Columns,
    Encoded,
    Spans,
    Task,
    check_answered,
    encode,
    label_vocabulary,
    read_records,
)
from jft.train import rundir
from jft.train.augment import ImageInputs
from jft.train.log import check_guard
from jft.train.masking import MaskingConfig
from jft.train.optim import check_optim, penalty_mask
from jft.train.steps import FinetuneSetup

REFERENCES = ("auto", "zero", "init")
# The tasks each head serves, in words.
FAMILY_OF_HEAD = {
    "classification": "classification and regression",
    "token_classification": "token classification",
    "question_answering": "question answering",
    "multiple_choice": "multiple choice",
}
DEFAULT_METRIC = {
    "classification": "accuracy",
    "regression": "pearson",
    "token_classification": "entity_f1",
    "question_answering": "f1",
    "multiple_choice": "accuracy",
}


def check_settings(config: ConfigDict) -> None:
    """Settings that are wrong whatever the data and the workdir hold."""
    if config.task not in KINDS:
        raise JftError(f"task '{config.task}' is not one of {choices(KINDS)}.")
    if config.l2.reference not in REFERENCES:
        raise JftError(f"l2.reference '{config.l2.reference}' is not one of {choices(REFERENCES)}.")
    if config.data.layout not in LAYOUTS:
        raise JftError(f"data.layout '{config.data.layout}' is not one of {choices(LAYOUTS)}.")
    for key in (
        "epochs",
        "batch_size",
        "accum_steps",
        "log_every",
        "data.seq_len",
        "data.buckets",
        "data.max_segments",
        "keep_checkpoints",
    ):
        if config[key] < 1:
            raise JftError(f"{key} must be at least 1, got {config[key]}.")
    for key in ("max_steps", "eval_batch_size", "early_stopping.patience"):
        if config[key] < 0:
            raise JftError(f"{key} must be 0 (off) or more, got {config[key]}.")
    if config.early_stopping.patience and not config.data.eval:
        raise JftError("early_stopping.patience needs evaluation data: set data.eval.")
    check_optim(config.optim)
    check_guard(config.guard)
    if config.eval_every < 0 or not 0 <= config.warmup_fraction < 1:
        raise JftError(
            f"eval_every must be 0 (each epoch's end) or more and warmup_fraction in [0, 1), got "
            f"{config.eval_every} and {config.warmup_fraction}."
        )
    if not (config.l2.weight >= 0 and config.joint_mlm.weight >= 0):  # nan too
        raise JftError(
            f"l2.weight and joint_mlm.weight must be 0 or more, got {config.l2.weight}, {config.joint_mlm.weight}."
        )
    if not config.data.train:
        raise JftError("no training data: set data.train (a CSV, TSV or JSONL file, or tfds:NAME:SPLIT).")
    if config.task == "question_answering":
        check_spans(config)
    if config.task == "multiple_choice" and len(choice_columns(config)) < 2:
        raise JftError(
            "multiple choice scores candidates: name their columns, at least two, in data.choice_columns "
            "(SWAG's: ending0,ending1,ending2,ending3)."
        )


def check_spans(config: ConfigDict) -> None:
    """Question answering's settings."""
    if not config.data.text_pair_column:
        raise JftError(
            "question answering reads a question (data.text_column) and its context (data.text_pair_column): set "
            "both, as finetune/squad does (question, context, and answers in data.label_column)."
        )
    if config.label_smoothing:
        raise JftError("label_smoothing spreads a class's target over the others; question answering has none: set 0.")
    if not 0 <= config.data.doc_stride < config.data.seq_len:
        raise JftError(f"data.doc_stride must be in [0, data.seq_len), got {config.data.doc_stride}.")
    for key in ("qa.max_answer_length", "qa.n_best"):
        if config[key] < 1:
            raise JftError(f"{key} must be at least 1, got {config[key]}.")


def choice_columns(config: ConfigDict) -> tuple[str, ...]:
    """data.choice_columns as a tuple of names ("ending0,ending1" -> ("ending0", "ending1"))."""
    return tuple(name.strip() for name in config.data.choice_columns.split(",") if name.strip())


def spans_of(config: ConfigDict) -> Spans:
    """Question answering's settings of config (jft.tasks.records.Spans)."""
    qa = config.qa
    return Spans(config.data.doc_stride, qa.max_answer_length, qa.n_best, qa.unanswerable, qa.null_threshold)


def read_task(config: ConfigDict, recorded: dict | None = None) -> tuple[Task, str, dict[str, list]]:
    """The task (its labels from the training data; TFDS: its class names), the score that picks
    the best model, and the records of the train, eval and test splits (empty when not set).
    recorded: the task a resumed run or init_from's head recorded, whose label order is kept for
    the same labels (an earlier jft sorted integer labels as text)."""
    data = config.data
    candidates = choice_columns(config) if config.task == "multiple_choice" else ()
    columns = Columns(data.text_column, data.text_pair_column or None, data.label_column, candidates)
    tfds_dir = data.tfds_data_dir or None
    records = {
        split: read_records(data[split], columns, config.task, tfds_data_dir=tfds_dir) if data[split] else []
        for split in ("train", "eval", "test")
    }
    labels = label_vocabulary(
        records["train"], config.task, columns.label, source=data.train, tfds_data_dir=tfds_dir, choices=len(candidates)
    )
    if config.task in ("classification", "token_classification") and data.train:
        _check_classes(labels, f"data.train {data.train}", columns.label)
    if recorded and recorded["kind"] == config.task and sorted(recorded["labels"]) == sorted(labels):
        labels = list(recorded["labels"])
    spans = spans_of(config) if config.task == "question_answering" else None
    task = Task(config.task, labels, columns, data.seq_len, spans)
    if spans and not spans.unanswerable:
        for split_records in records.values():
            check_answered(split_records, columns, "fine-tune with --config finetune/squad_v2 (qa.unanswerable=true)")
    best_metric = config.best_metric or DEFAULT_METRIC[task.kind]
    if best_metric not in task.metrics() or best_metric == "mse":
        scores = [name for name in task.metrics() if name != "mse"]
        raise JftError(f"best_metric '{best_metric}' is not a score of this task; choose one of {choices(scores)}.")
    return task, best_metric, records


def _check_classes(labels: list[str], source: str, column: str) -> None:
    """A classifier learns from two classes or more; labels that differ only in case or spaces
    (a typo in the data, most often) are separate classes, and a warning says so."""
    if len(labels) < 2:
        found = f"one label, {labels[0]!r}," if labels else "no label"
        raise JftError(
            f"{source} has {found} in column '{column}': a classifier learns from two classes or more. Check "
            "data.label_column, or add examples of the other classes."
        )
    alike: dict[str, list[str]] = {}
    for label in labels:
        alike.setdefault(" ".join(label.split()).casefold(), []).append(label)
    twins = [" and ".join(repr(label) for label in group) for group in alike.values() if len(group) > 1]
    if twins and jax.process_index() == 0:
        print(
            f"warning: {source}: labels that differ only in case or spaces are separate classes: "
            f"{'; '.join(twins[:3])}{'; ...' if len(twins) > 3 else ''}; make them the same if they are one class.",
            file=sys.stderr,
            flush=True,
        )


def task_tokenizer(config: ConfigDict, workdir: Path | None, init: rundir.InitSource | None):
    """The run's tokenizer: a resumed run's own (workdir given), else init_from's or data.vocab's
    (both given: the same one)."""
    given = load_tokenizer(config.data.vocab, lowercase=config.data.lowercase) if config.data.vocab else None
    if workdir is not None:
        tokenizer = rundir.run_tokenizer(workdir)
    elif init is not None and init.tokenizer is not None:
        tokenizer = init.tokenizer
    elif given is not None:
        return given
    elif init is not None:
        raise JftError(f"init_from {init.path} has no tokenizer.json or vocab.txt; set data.vocab to its vocabulary.")
    else:
        raise JftError("no vocabulary: set data.vocab (vocab.txt or tokenizer.json), or init_from a checkpoint.")
    if given is not None:
        source = "the run's own" if workdir is not None else "init_from's"
        rundir.check_same_vocabulary(
            tokenizer, given, f"data.vocab {config.data.vocab}", f"Leave data.vocab empty to use {source}."
        )
    return tokenizer


def encode_splits(task: Task, tokenizer, family, model, records: dict[str, list]) -> dict[str, Encoded | None]:
    """The records of each split tokenized (None for a split without records), once the family is
    known to have the task's head and the sequence length to fit the model's position table."""
    head = task.head().kind
    if head not in family.task_heads:
        having = [FAMILY_OF_HEAD[h] for h in family.task_heads if h in FAMILY_OF_HEAD]
        others = [f.name for f in FAMILIES.values() if head in f.task_heads]
        raise JftError(
            f"a {family.name} model has no {head} head (it fine-tunes for {', '.join(having)}); the families with "
            f"one: {', '.join(others)}."
        )
    if task.seq_len > model.max_length:
        raise JftError(
            f"data.seq_len {task.seq_len} is longer than the position table "
            f"({model.max_length}); use data.seq_len <= {model.max_length}."
        )
    return {
        split: encode(split_records, tokenizer, task.kind, task.columns, task.labels, task.seq_len, spans=task.spans)
        if split_records
        else None
        for split, split_records in records.items()
    }


def initial_params(params: dict, config: ConfigDict, init, task: Task, quiet: bool = False) -> tuple[dict, dict | None]:
    """The parameters a new run starts from (params, fresh, with init_from's merged in: its task
    head kept only for the same task and labels), and θ_ref for L2-SP (None: θ_ref = 0); what was
    loaded is printed unless `quiet`."""
    if init is None:
        return params, None
    loaded = dict(init.params)
    if "joint_classifier" in params and "classifier" in loaded:  # the joint objective's pretraining head
        loaded["joint_classifier"] = loaded["classifier"]
    same_task = init.task is not None and (init.task["kind"], init.task["labels"]) == (task.kind, task.labels)
    heads = [scope for scope in init.family.label_heads if scope in loaded]
    # another task's head, or other labels': this task's is created new
    dropped = [] if same_task else [f"{scope}/{path}" for scope in heads for path in flatten(loaded.pop(scope))]
    params, report = merge(params, loaded)
    if jax.process_index() == 0 and not quiet:
        head = f"\nnot used: init_from's head ({', '.join(dropped)}), of another task or other labels; replaced"
        head = head if dropped else "\nits head kept: the same task and labels" if heads else ""
        print(f"init from {init.describe()}: {report.summary()}{head}", flush=True)
    if config.l2.reference != "init":
        return params, None
    return params, subtree(params, report.loaded)


def resolve_reference(config: ConfigDict, recorded: str | None = None) -> ConfigDict:
    """config with l2.reference=auto resolved: the run's recorded choice when it resumes one (a run
    keeps its θ_ref), else init (L2-SP) when it starts from init_from and zero from scratch.
    Pulling a pretrained model toward 0 undoes its pretraining as λ grows; toward its own weights it
    helps (docs/finetuning.md#l2-or-l2-sp). An explicit zero or init is kept."""
    if config.l2.reference != "auto":
        return config
    config = config.copy_and_resolve_references()
    config.l2.reference = recorded or ("init" if config.init_from else "zero")
    return config


def describe_penalty(config: ConfigDict, toward_weights: bool) -> str:
    """The L2 term of a resolved config, in words, for the start of a run; toward_weights: whether
    the run holds θ_ref (init_from's weights, or those a resumed run saved, whatever init_from is now)."""
    l2 = config.l2
    if not l2.weight:
        return f"l2: λ = 0, no penalty (l2.reference={l2.reference})"
    if l2.reference == "init" and not toward_weights:
        return f"l2: λ = {l2.weight:g}, pulling toward 0 (l2.reference=init, and no init_from: the weights start new)"
    toward = "the weights it starts from (L2-SP)" if l2.reference == "init" else "0"
    return f"l2: λ = {l2.weight:g}, pulling toward {toward} (l2.reference={l2.reference})"


def task_modality(config: ConfigDict, session) -> str:
    """What the run's model reads, "text" or "image": the family of the run it resumes, else of
    init_from, else of model.family (bert when empty)."""
    if session.resuming:
        family = rundir.run_model(session.run)[0]
    elif session.init is not None:
        family = session.init.family
    else:
        family = get_family(config.model.family or "bert")
    return family.modality


def image_joint_objective(config: ConfigDict) -> tuple[str | None, None]:
    """An image model's joint objective: "classify" (μ · the pretraining classifier's cross-entropy
    on joint_mlm.data, the pretraining images; image_joint_classes checks what it needs) when
    joint_mlm.weight > 0, else None."""
    return ("classify", None) if config.joint_mlm.weight else (None, None)


def image_joint_classes(config: ConfigDict, init, recorded: list[str] | None = None) -> list[str]:
    """The pretraining classes of an image model's joint objective: those a resumed run recorded
    (recorded), or init_from's (init), whose classifier becomes the joint head; [] without the
    objective (joint_mlm.weight 0)."""
    if not config.joint_mlm.weight:
        return []
    if not config.joint_mlm.data:
        raise JftError(
            "joint_mlm.weight > 0 adds μ · the pretraining loss, and an image model's is its pretraining classifier's "
            "on the pretraining images: give them as joint_mlm.data=DIR (a folder a class), with init_from the run "
            "that pretrained on them."
        )
    if recorded is not None:
        return list(recorded)
    if init is None or not (init.task or {}).get("labels") or "classifier" not in init.params:
        raise JftError(
            "joint_mlm.weight > 0 for an image model trains the pretraining classifier beside the task's: "
            "init_from must be the jft run that pretrained it (its classes in run.json)"
            + (f", and {init.path} is not one." if init is not None else ", and none is given.")
        )
    return list(init.task["labels"])


def check_text_joint_data(config: ConfigDict) -> None:
    """A text model's joint objective is computed on the task's own text: joint_mlm.data (an image
    model's pretraining images) would go unread, so it is refused."""
    if config.joint_mlm.data:
        raise JftError(
            f"joint_mlm.data={config.joint_mlm.data} is an image model's pretraining images; a text model's joint "
            "objective (joint_mlm.weight) is computed on the task's own text: leave joint_mlm.data empty."
        )


def joint_objective(config: ConfigDict, family, tokenizer, model) -> tuple[str | None, MaskingConfig | None]:
    """The joint objective's loss, the family's pretraining loss on the task's own text ("mlm" or
    "next_word"; None when joint_mlm.weight is 0), and its masking (masked-LM only)."""
    joint = config.joint_mlm
    if not joint.weight:
        return None, None
    if "next_word" in family.objectives:
        return "next_word", None
    special = dataclasses.asdict(special_ids(tokenizer))
    masking = MaskingConfig.for_vocabulary(
        special, model.vocab_size, rate=joint.rate, max_predictions=joint.max_predictions
    )
    return "mlm", masking


def task_batches(config: ConfigDict, train_data, task: Task, seed: int):
    """The training batches of config's layout, in the order of `seed` (whatever the devices): of
    Encoded texts, or of images (jft.tasks.images.ImageData, shuffled each epoch)."""
    if hasattr(train_data, "batches"):
        return train_data.batches(config.batch_size, seed, shuffle=True)
    return TaskBatches(
        train_data,
        task.kind,
        config.batch_size,
        seed,
        layout=config.data.layout,
        max_len=task.seq_len,
        buckets=config.data.buckets,
        max_segments=config.data.max_segments,
    )


def planned_steps(config: ConfigDict, steps_an_epoch: int) -> int:
    """The run's optimizer steps: epochs × steps an epoch, at most max_steps (when set)."""
    total_steps = config.epochs * steps_an_epoch
    return min(total_steps, config.max_steps) if config.max_steps else total_steps


def with_warmup(config: ConfigDict, total_steps: int) -> ConfigDict:
    """config with optim.warmup_steps resolved from warmup_fraction when it is 0."""
    if config.optim.warmup_steps:
        return config
    config = config.copy_and_resolve_references()
    config.optim.warmup_steps = int(config.warmup_fraction * total_steps)
    return config


def finetune_setup(
    config: ConfigDict,
    family,
    model,
    tx,
    schedule,
    task: Task,
    params,
    joint: tuple[str | None, MaskingConfig | None],
    model_config=None,
) -> FinetuneSetup:
    """The static parts of the fine-tuning step of config: the family's module and inputs, the
    optimizer, λ with the leaves it applies to, μ and the joint objective (joint_objective's); an
    image model's augmentation and normalisation (from model_config, its config)."""
    images = None
    if family.modality == "image":
        images = ImageInputs.of(model_config, config.data.augment, config.data.min_crop, config.data.mixup)
    elif config.data.mixup:
        raise JftError("data.mixup mixes images; a text model's run takes no mixup. Set data.mixup=0.")
    return FinetuneSetup(
        model,
        tx,
        schedule,
        task.kind,
        config.l2.weight,
        penalty_mask(params, config.l2.exclude_bias_and_layer_norm),
        config.joint_mlm.weight,
        joint[1],
        config.accum_steps,
        family.inputs,
        joint[0],
        images,
        config.label_smoothing if task.kind != "regression" else 0.0,
    )

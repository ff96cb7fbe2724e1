"""Fine-tuning: `train_and_evaluate(config, workdir)` on task loss + λ·Σ‖θ − θ_ref‖² (+ μ·MLM
loss on the task's text, the optional joint objective), then
`evaluate`, `predict` and `export` from the workdir it leaves.

Order of a (re)start:
0. start jax.distributed when the config asks for several processes (each reads all the task data
   and makes the same global batches, and puts its share of the rows on its devices);
1. read the task data; the label set comes from the training data (saved in <workdir>/task.json);
2. build the model: sizes from init_from's checkpoint (a jft pretraining workdir or a Hugging Face
   directory; its NSP head dropped, its MLM head kept only for the joint objective, the task
   head created), or from config.model for a run
   from scratch; print what was loaded and what was created;
3. θ_ref: None (plain L2, θ_ref = 0) or the loaded weights (L2-SP; created weights go toward 0);
4. restore <workdir>/checkpoints if present (same model checked), else start at step 0;
5. train epochs × batches, evaluating every eval_every steps and at the end; the best evaluation
   by best_metric is kept in <workdir>/best.
"""

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from jft import hf, metrics
from jft.checkpoint import Checkpoints, StopRequest, check_same_model, restore_latest
from jft.config import model_config
from jft.data.loader import prefetch
from jft.data.tasks import (
    IGNORE,
    LAYOUTS,
    Columns,
    TaskBatches,
    encode,
    label_vocabulary,
    read_records,
    step_inputs,
)
from jft.data.tokenizer import load_tokenizer, special_ids
from jft.errors import JftError
from jft.masking import MaskingConfig
from jft.models import BertConfig, BertForSequenceClassification, BertForTokenClassification, init_params
from jft.models.config import ARCHITECTURE_FIELDS
from jft.optim import make_optimizer, weight_decay_mask
from jft.parallel import Runner, initialize_distributed, parallel_config
from jft.params import flatten, merge, unflatten
from jft.steps import FinetuneSetup, create_finetune_state, finetune_step, predict_step
from jft.training_log import TrainingLog

REFERENCES = ("zero", "init")


def default_config() -> ConfigDict:
    """Every key a fine-tuning config has; configs/finetune/*.py start from this."""
    config = ConfigDict()
    config.init_from = ""  # a jft pretraining workdir, a Hugging Face BERT directory, or "" (from scratch)
    # Sizes of 0 follow init_from's checkpoint; a run from scratch sets them (e.g. model_config("tiny")).
    config.model = model_config("tiny", **dict.fromkeys(ARCHITECTURE_FIELDS, 0))
    config.task = "classification"  # classification | regression | token_classification
    config.data = ConfigDict(
        dict(
            train="",  # CSV/TSV/JSONL file, or tfds:NAME[:SPLIT]
            eval="",
            text_column="text",  # token classification: the list of words
            text_pair_column="",  # sentence-pair tasks
            label_column="label",  # token classification: the list of tags
            seq_len=128,  # longer texts are truncated
            vocab="",  # vocab.txt or tokenizer.json; empty: the one that came with init_from
            lowercase=True,
            # padded (every batch seq_len wide) | bucketed (similar lengths share a batch) |
            # packed (several short examples a row, kept apart by the attention mask; for short texts)
            layout="bucketed",
            max_segments=16,  # packed: at most this many examples a row
            tfds_data_dir="",
        )
    )
    # The regulariser the project is named for, part of the loss: λ·Σ‖θ − θ_ref‖² (coupled L2).
    config.l2 = ConfigDict(dict(weight=1e-4, reference="zero", exclude_bias_and_layer_norm=True))
    # optim.weight_decay is AdamW's decoupled decay, a different regulariser; 0 here, so the
    # optimizer is plain Adam and the L2 term above is the only regularisation.
    config.optim = ConfigDict(
        dict(
            name="adamw",
            lr=2e-5,
            warmup_steps=0,
            decay="linear",
            b1=0.9,
            b2=0.999,
            eps=1e-6,
            weight_decay=0.0,
            max_grad_norm=1.0,
        )
    )
    # The optional joint objective L_task + μ·L_MLM: the masked-LM loss on the task's own text, masked
    # as in pretraining (the pretrained MLM head is kept when init_from has one). 0: off.
    config.joint_mlm = ConfigDict(dict(weight=0.0, rate=0.15, max_predictions=20))
    config.warmup_fraction = 0.1  # of all steps, when optim.warmup_steps is 0
    config.epochs = 3
    config.batch_size = 32
    config.seed = 0
    config.eval_every = 0  # steps; 0: at the end of each epoch
    config.best_metric = ""  # empty: accuracy, pearson or entity_f1 by task
    config.log_every = 50
    config.parallel = parallel_config()
    config.progress = True
    return config


@dataclasses.dataclass
class Task:
    """What a fine-tuned workdir needs to read new data and name its outputs (saved as task.json)."""

    kind: str
    labels: list[str]
    columns: Columns
    seq_len: int

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "labels": self.labels,
            "columns": dataclasses.asdict(self.columns),
            "seq_len": self.seq_len,
        }

    @classmethod
    def from_json(cls, values: dict) -> "Task":
        return cls(values["kind"], values["labels"], Columns(**values["columns"]), values["seq_len"])


def _columns(config: ConfigDict) -> Columns:
    data = config.data
    return Columns(data.text_column, data.text_pair_column or None, data.label_column)


def load_init(init_from: str) -> tuple[BertConfig, dict, Path]:
    """(model config, params, tokenizer path) of a jft pretraining workdir or a Hugging Face directory."""
    path = Path(init_from)
    if (path / "checkpoints").is_dir():
        state, meta = restore_latest(path, f"{path} has no complete checkpoint to start from.")
        tokenizer = Path(meta["data"]) / "tokenizer.json"
        return BertConfig.from_dict(meta["model"]), state["train"]["params"], tokenizer
    config, params = hf.load(path)
    return config, params, path if path.is_dir() else path.parent


def _model_config(config: ConfigDict, loaded: BertConfig | None, vocab_size: int) -> BertConfig:
    values = config.model.to_dict()
    if loaded is None:
        values["vocab_size"] = values["vocab_size"] or vocab_size
        unset = [name for name in ARCHITECTURE_FIELDS if not values[name]]
        if unset:
            raise JftError(f"a run from scratch needs model sizes: set model.{unset[0]} (or use init_from).")
        return BertConfig.from_dict(values)
    checkpoint = dataclasses.asdict(loaded)
    for name in ARCHITECTURE_FIELDS:
        if values[name] and values[name] != checkpoint[name]:
            raise JftError(
                f"model.{name}={values[name]}, but the checkpoint in {config.init_from} has {checkpoint[name]}; "
                f"set model.{name}=0 to follow the checkpoint."
            )
        values[name] = checkpoint[name]
    return BertConfig.from_dict(values)


def build_model(model_cfg: BertConfig, task: Task, mlm: bool = False):
    """The task's model; with `mlm`, with the masked-LM head of the joint objective as well."""
    num_labels = max(len(task.labels), 1)
    if task.kind == "token_classification":
        return BertForTokenClassification(model_cfg, num_labels, mlm=mlm)
    return BertForSequenceClassification(model_cfg, num_labels, mlm=mlm)


def train_and_evaluate(config: ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Fine-tunes per config in workdir (resuming if it holds a checkpoint); returns the last metrics."""
    workdir = Path(workdir)
    p = config.parallel
    initialize_distributed(p.coordinator_address, p.num_processes, p.process_id)
    main_process = jax.process_index() == 0  # prints and writes the workdir's own files
    if config.l2.reference not in REFERENCES:
        raise JftError(f"l2.reference '{config.l2.reference}' is not one of {REFERENCES}.")
    if config.data.layout not in LAYOUTS:
        raise JftError(f"data.layout '{config.data.layout}' is not one of {LAYOUTS}.")
    columns = _columns(config)
    if not config.data.train:
        raise JftError("no training data: set data.train (a CSV, TSV or JSONL file, or tfds:NAME:SPLIT).")
    tfds_dir = config.data.tfds_data_dir or None
    train_records = read_records(config.data.train, columns, tfds_data_dir=tfds_dir)
    eval_records = read_records(config.data.eval, columns, tfds_data_dir=tfds_dir) if config.data.eval else []
    labels = label_vocabulary(
        train_records, config.task, columns.label, source=config.data.train, tfds_data_dir=tfds_dir
    )
    task = Task(config.task, labels, columns, config.data.seq_len)

    loaded_cfg, loaded, tokenizer_path = load_init(config.init_from) if config.init_from else (None, None, None)
    tokenizer_path = config.data.vocab or tokenizer_path
    if not tokenizer_path:
        raise JftError("no vocabulary: set data.vocab (vocab.txt or tokenizer.json), or init_from a checkpoint.")
    tokenizer = load_tokenizer(tokenizer_path, lowercase=config.data.lowercase)
    model_cfg = _model_config(config, loaded_cfg, tokenizer.get_vocab_size())
    if task.seq_len > model_cfg.max_position_embeddings:
        raise JftError(
            f"data.seq_len {task.seq_len} is longer than the position table "
            f"({model_cfg.max_position_embeddings}); use data.seq_len <= {model_cfg.max_position_embeddings}."
        )
    train_data = encode(train_records, tokenizer, task.kind, columns, task.labels, task.seq_len)
    eval_data = encode(eval_records, tokenizer, task.kind, columns, task.labels, task.seq_len) if eval_records else None

    joint = config.joint_mlm
    masking = None
    if joint.weight:
        options = dict(rate=joint.rate, max_predictions=joint.max_predictions)
        special = dataclasses.asdict(special_ids(tokenizer))
        masking = MaskingConfig.for_vocabulary(special, model_cfg.vocab_size, **options)
    model = build_model(model_cfg, task, mlm=masking is not None)
    rng = jax.random.PRNGKey(config.seed)
    params = init_params(model, jax.random.fold_in(rng, 0))
    reference = None
    if loaded is not None:
        params, report = merge(params, loaded)
        if main_process:
            print(f"init from {config.init_from}: {report.summary()}", flush=True)
        if config.l2.reference == "init":
            flat = flatten(params)
            reference = unflatten({path: flat[path] for path in report.loaded})

    runner = Runner(config.parallel.backend)
    runner.check_batch(config.batch_size)
    batches = TaskBatches(
        train_data,
        task.kind,
        config.batch_size,
        config.seed,
        layout=config.data.layout,
        max_len=task.seq_len,
        max_segments=config.data.max_segments,
        row_multiple=runner.batch_multiple(),
    )
    if config.data.layout == "packed" and main_process:
        print(
            f"packed {len(train_data)} examples into {len(batches.packed_rows)} rows of {task.seq_len} tokens; "
            f"{batches.rows} rows a step",
            flush=True,
        )
    total_steps = config.epochs * len(batches)
    if not config.optim.warmup_steps:
        config = config.copy_and_resolve_references()
        config.optim.warmup_steps = int(config.warmup_fraction * total_steps)
    tx, schedule = make_optimizer(config.optim, total_steps)
    mask = weight_decay_mask(params) if config.l2.exclude_bias_and_layer_norm else jax.tree.map(lambda _: True, params)
    setup = FinetuneSetup(model, tx, schedule, task.kind, config.l2.weight, mask, joint.weight, masking)
    train_step = runner.compile(functools.partial(finetune_step, setup=setup))
    predict = runner.compile_rows(functools.partial(predict_step, setup=setup))

    if main_process:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "task.json").write_text(json.dumps(task.to_json(), indent=2) + "\n")
        tokenizer.save(str(workdir / "tokenizer.json"))
    checkpoints = Checkpoints(workdir, every_steps=max(len(batches), 1), keep=1)
    best = Checkpoints(workdir / "best", every_steps=1, keep=1, asynchronous=False)
    host_state = {"train": jax.tree.map(np.asarray, create_finetune_state(params, tx)), "rng": np.asarray(rng)}
    run_meta = {"model": dataclasses.asdict(model_cfg), "task": task.to_json(), "config": config.to_dict()}
    best_metric = (
        config.best_metric
        or {"classification": "accuracy", "regression": "pearson", "token_classification": "entity_f1"}[task.kind]
    )
    best_value = -np.inf
    if checkpoints.latest_step() is not None:
        check_same_model(checkpoints.restore_meta(), model_cfg, workdir)
        host_state, saved_meta = checkpoints.restore(host_state)
        best_value = saved_meta.get("best_value", -np.inf)
    state = runner.put_replicated(host_state["train"]).replace(reference=runner.put_replicated(reference))
    rng = runner.put_replicated(host_state["rng"])
    start = int(host_state["train"].step)

    eval_every = config.eval_every or len(batches)
    log = TrainingLog(workdir, total_steps, start, "fine-tuning", "examples", config.progress)
    device_batches = prefetch(
        ((n, runner.put_global_batch(batch)) for n, batch in map(step_inputs, batches.stream(start))), ahead=2
    )
    with StopRequest() as stop:
        for step in range(start + 1, total_steps + 1):
            examples, batch = next(device_batches)
            state, step_metrics = train_step(state, batch, rng)
            log.step(step, examples)
            stopping = stop.agreed(step % config.log_every == 0)
            if step % config.log_every == 0 or step == total_steps or stopping:
                log.train(step, {k: float(v) for k, v in runner.get(step_metrics).items()})  # host sync, log steps only
            if eval_data is not None and (step % eval_every == 0 or step == total_steps):
                scores = evaluate_data(runner, predict, state.params, eval_data, task, config.batch_size)
                log.write(step, "eval", scores)
                if scores[best_metric] > best_value:
                    best_value = scores[best_metric]
                    best.save(
                        step, {"params": _task_params(runner, state)}, {**run_meta, best_metric: best_value}, force=True
                    )
            if step == total_steps or stopping or step % len(batches) == 0:
                saved = {"train": runner.get(state.replace(reference=None)), "rng": host_state["rng"]}
                checkpoints.save(step, saved, {**run_meta, "best_value": float(best_value)}, force=True)
            if stopping:
                log.stopped(step)
                break
    if eval_data is None and log.last["step"] == total_steps:  # no evaluation data: the last weights count as best
        best.save(total_steps, {"params": _task_params(runner, state)}, run_meta, force=True)
    device_batches.close()  # stops the prefetching thread
    for manager in (checkpoints, best):
        manager.wait()
        manager.close()
    log.close()
    return log.last


def _task_params(runner: Runner, state) -> dict:
    """The parameters a fine-tuned model keeps: without the joint objective's masked-LM head."""
    return {name: tree for name, tree in runner.get(state.params).items() if name != "cls"}


def evaluate_data(runner: Runner, predict, params, data, task: Task, batch_size: int) -> dict[str, float]:
    """Task metrics of params on encoded data (every example once, in order)."""
    logits, labels = _predict_all(runner, predict, params, data, task, batch_size)
    if task.kind == "regression":
        scores = logits[:, 0]
        return {
            "pearson": metrics.pearson(labels, scores),
            "spearman": metrics.spearman(labels, scores),
            "mse": float(np.mean((scores - labels) ** 2)),
        }
    if task.kind == "classification":
        predicted = logits.argmax(-1)
        out = {"accuracy": metrics.accuracy(labels, predicted), "mcc": metrics.matthews_corrcoef(labels, predicted)}
        out["f1" if len(task.labels) == 2 else "macro_f1"] = (
            metrics.f1(labels, predicted) if len(task.labels) == 2 else metrics.macro_f1(labels, predicted)
        )
        return out
    gold, predicted = [], []
    for token_logits, token_labels in zip(logits, labels):
        keep = token_labels != IGNORE
        gold.append([task.labels[i] for i in token_labels[keep]])
        predicted.append([task.labels[i] for i in token_logits[keep].argmax(-1)])
    hits = sum(np.sum(np.array(g) == np.array(p)) for g, p in zip(gold, predicted))
    return {**metrics.entity_f1(gold, predicted), "token_accuracy": float(hits / max(sum(map(len, gold)), 1))}


def _predict_all(runner: Runner, predict, params, data, task: Task, batch_size: int):
    """Logits and labels of every example of data, in the data's order."""
    batches = TaskBatches(data, task.kind, batch_size, shuffle=False, max_len=task.seq_len)
    logits, labels = [None] * len(data), [None] * len(data)
    no_key = runner.put_replicated(jax.random.PRNGKey(0))
    for batch in batches.epoch(0):
        out = runner.get_rows(predict(params, runner.put_global_batch(step_inputs(batch)[1]), no_key))
        for row, example in enumerate(batch["example_ids"]):
            if example >= 0:
                n = len(data.input_ids[example])
                logits[example] = out[row, :n] if task.kind == "token_classification" else out[row]
                labels[example] = (
                    batch["labels"][row, :n] if task.kind == "token_classification" else batch["labels"][row]
                )
    if task.kind == "token_classification":
        return logits, labels
    return np.stack(logits), np.stack(labels)


class FinetunedModel:
    """A fine-tuned workdir, ready to evaluate, predict and export (its best checkpoint)."""

    def __init__(self, workdir: str | Path, backend: str = "jit"):
        workdir = Path(workdir)
        if not (workdir / "task.json").is_file():
            raise JftError(f"{workdir} is not a fine-tuning workdir (no task.json); run `jft finetune` first.")
        self.task = Task.from_json(json.loads((workdir / "task.json").read_text()))
        state, meta = restore_latest(
            workdir / "best", f"{workdir} has no saved model yet (best/ is empty); let `jft finetune` finish."
        )
        self.model_config = BertConfig.from_dict(meta["model"])
        self.params = state["params"]
        self.tokenizer = load_tokenizer(workdir / "tokenizer.json")
        self.runner = Runner(backend)
        model = build_model(self.model_config, self.task)
        setup = FinetuneSetup(model, None, None, self.task.kind, 0.0, None)
        self.predict_fn = self.runner.compile_rows(functools.partial(predict_step, setup=setup))

    def _encode(self, source: str, with_labels: bool):
        records = read_records(
            source, self.task.columns if with_labels else dataclasses.replace(self.task.columns, label=None)
        )
        return records, encode(
            records,
            self.tokenizer,
            self.task.kind,
            self.task.columns,
            self.task.labels,
            self.task.seq_len,
            with_labels=with_labels,
        )

    def evaluate(self, source: str, batch_size: int = 32) -> dict[str, float]:
        _, data = self._encode(source, with_labels=True)
        params = self.runner.put_replicated(self.params)
        return evaluate_data(self.runner, self.predict_fn, params, data, self.task, batch_size)

    def predict(self, source: str, batch_size: int = 32) -> list[dict]:
        """One dict a record: label and probabilities (classification), score (regression), or
        one tag a word (token classification)."""
        records, data = self._encode(source, with_labels=False)
        params = self.runner.put_replicated(self.params)
        logits, _ = _predict_all(self.runner, self.predict_fn, params, data, self.task, batch_size)
        out = []
        for record, example_logits in zip(records, logits):
            if self.task.kind == "regression":
                out.append({"score": float(example_logits[0])})
                continue
            probs = np.exp(example_logits - example_logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            if self.task.kind == "classification":
                out.append(
                    {
                        "label": self.task.labels[int(probs.argmax())],
                        "probabilities": {name: float(p) for name, p in zip(self.task.labels, probs)},
                    }
                )
            else:
                words = _first_pieces(self.tokenizer, record[self.task.columns.text], self.task.seq_len)
                out.append({"tags": [self.task.labels[int(probs[i].argmax())] for i in words]})
        return out

    def export(self, out_dir: str | Path, format: str = "safetensors") -> Path:
        labels = self.task.labels if self.task.labels else None
        return hf.save(out_dir, self.model_config, self.params, format=format, labels=labels)


def _first_pieces(tokenizer, words: list[str], seq_len: int) -> list[int]:
    """Token positions of the first word-piece of each word that fits in seq_len tokens."""
    encoding = tokenizer.encode(words, is_pretokenized=True)
    positions, previous = [], None
    for position, word in enumerate(encoding.word_ids[:seq_len]):
        if word is not None and word != previous:
            positions.append(position)
        previous = word
    return positions

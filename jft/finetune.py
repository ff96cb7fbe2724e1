"""Fine-tuning: `train_and_evaluate(config, workdir)` on task loss + λ·Σ‖θ − θ_ref‖² (+ μ·MLM
loss on the task's text, the optional joint objective). jft.inference evaluates, predicts with and
exports the run directory it leaves.

Order of a (re)start. Steps 1-6 only read, so a refusal leaves the workdir as it was:
1. check the settings; start jax.distributed when the config asks for several processes (each
   reads all the task data and makes the same global batches, and puts its share on its devices);
2. hold the workdir (run.lock, jft.rundir) and read its run.json: a run there is resumed;
3. read the task data; the label set comes from the training data (TFDS: its class names);
4. the tokenizer: the run's own; else init_from's or data.vocab's (both given: the same one);
5. the model: the run's own; else init_from's architecture (a pretraining run, a fine-tuning run
   or its best/, a Hugging Face directory); else model.preset and model.*;
6. a resumed run must have the same settings (but for logging and devices), the same data by
   content and the same labels: else refuse, naming every difference;
7. write run.json, the tokenizer, and θ_ref for L2-SP (reference.safetensors);
8. restore the latest checkpoint, and the best score from best/ (a finished run says so and
   returns); or initialise: init_from's weights (its NSP head dropped, its MLM head kept only for
   the joint objective, its task head kept only for the same task and labels), the rest created;
9. train epochs × batches, evaluating every eval_every steps and at the end: an evaluation better
   than best/'s replaces it. Save at each epoch's end, at the end, and on SIGTERM/SIGINT (then
   RunStopped).
"""

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
import safetensors.numpy
from ml_collections import ConfigDict

from jft import rundir
from jft.checkpoint import Checkpoints, StopRequest
from jft.config import model_group
from jft.data.corpus import source_identity
from jft.data.loader import prefetch
from jft.data.tasks import (
    KINDS,
    LAYOUTS,
    Columns,
    Encoded,
    Task,
    TaskBatches,
    encode,
    label_vocabulary,
    read_records,
    step_inputs,
)
from jft.data.tokenizer import load_tokenizer, special_ids
from jft.errors import JftError
from jft.inference import build_model, evaluate_data
from jft.masking import MaskingConfig
from jft.models import init_params
from jft.optim import check_optim, make_optimizer, weight_decay_mask
from jft.parallel import Runner, parallel_config
from jft.params import flatten, merge, unflatten
from jft.steps import FinetuneSetup, create_finetune_state, finetune_step, predict_step
from jft.training_log import TrainingLog, check_guard, guard_config

REFERENCES = ("zero", "init")
REFERENCE_FILE = "reference.safetensors"
DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson", "token_classification": "entity_f1"}
# Settings a resumed run may change: where things are (data is compared by content instead),
# logging and devices. The model is compared field by field (rundir.resume_model).
MAY_CHANGE_ON_RESUME = (
    "init_from",
    "model",
    "data.train",
    "data.eval",
    "data.test",
    "data.vocab",
    "data.tfds_data_dir",
    "log_every",
    "eval_every",
    "eval_batch_size",
    "progress",
    "parallel",
    "guard",
    "sweep",
)


def default_config() -> ConfigDict:
    """Every key a fine-tuning config has; configs/finetune/*.py start from this."""
    config = ConfigDict()
    # A jft pretraining workdir, a fine-tuning workdir (or its best/), a Hugging Face BERT
    # directory, or "" (from scratch). Its architecture and vocabulary are used as they are.
    config.init_from = ""
    # The architecture of a run from scratch: a preset (tiny, mini, base, large) and any field set
    # here; vocab_size follows the vocabulary. With init_from, the checkpoint's architecture is used,
    # and only dropout, dtype, attention_impl, remat and initializer_range may be set differently.
    config.model = model_group()
    config.task = "classification"  # classification | regression | token_classification
    config.data = ConfigDict(
        dict(
            train="",  # CSV/TSV/JSONL file, or tfds:NAME[:SPLIT]
            eval="",
            test="",  # evaluated once at the end, with the best model
            text_column="text",  # token classification: the list of words
            text_pair_column="",  # sentence-pair tasks
            label_column="label",  # token classification: the list of tags
            seq_len=128,  # longer texts are truncated
            vocab="",  # vocab.txt or tokenizer.json; empty: init_from's (both given: they must be the same)
            lowercase=True,
            # padded (every batch seq_len wide) | bucketed (similar lengths share a batch) |
            # packed (several short examples a row, kept apart by the attention mask; for short texts)
            layout="bucketed",
            buckets=4,  # bucketed: at most this many batch widths (compiled programs) an epoch
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
    config.max_steps = 0  # >0: stop after this many steps, whatever epochs say
    config.batch_size = 32
    config.accum_steps = 1  # micro-batches a step (gradient accumulation: the same update, less memory)
    config.eval_batch_size = 0  # 0: batch_size
    config.seed = 0
    config.eval_every = 0  # steps; 0: at the end of each epoch
    config.best_metric = ""  # empty: accuracy, pearson or entity_f1 by task; higher is better
    # Stop after this many evaluations in a row without a better best_metric (0: never).
    config.early_stopping = ConfigDict(dict(patience=0))
    config.log_every = 50
    config.parallel = parallel_config()
    config.guard = guard_config()
    config.progress = True
    from jft.sweep import sweep_config  # jft.sweep builds on this module

    config.sweep = sweep_config()  # `jft sweep`'s settings; `jft finetune` does not read them
    return config


def _columns(config: ConfigDict) -> Columns:
    data = config.data
    return Columns(data.text_column, data.text_pair_column or None, data.label_column)


def check_settings(config: ConfigDict) -> None:
    """Settings that are wrong whatever the data and the workdir hold."""
    if config.task not in KINDS:
        raise JftError(f"task '{config.task}' is not one of {KINDS}.")
    if config.l2.reference not in REFERENCES:
        raise JftError(f"l2.reference '{config.l2.reference}' is not one of {REFERENCES}.")
    if config.data.layout not in LAYOUTS:
        raise JftError(f"data.layout '{config.data.layout}' is not one of {LAYOUTS}.")
    for key in (
        "epochs",
        "batch_size",
        "accum_steps",
        "log_every",
        "data.seq_len",
        "data.buckets",
        "data.max_segments",
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
    if config.l2.weight < 0 or config.joint_mlm.weight < 0:
        raise JftError(
            f"l2.weight and joint_mlm.weight must be 0 or more, got {config.l2.weight}, {config.joint_mlm.weight}."
        )
    if not config.data.train:
        raise JftError("no training data: set data.train (a CSV, TSV or JSONL file, or tfds:NAME:SPLIT).")


def task_tokenizer(config: ConfigDict, run: dict | None, workdir: Path, init):
    """The run's tokenizer (step 4 of the module docstring)."""
    given = load_tokenizer(config.data.vocab, lowercase=config.data.lowercase) if config.data.vocab else None
    if run is not None:
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
        rundir.check_same_vocabulary(tokenizer, given, f"data.vocab {config.data.vocab}")
    return tokenizer


def read_task(config: ConfigDict) -> tuple[Task, str, dict[str, list]]:
    """Step 3: the task (its labels from the training data; TFDS: its class names), the score that
    picks the best model, and the records of the train, eval and test splits (empty when not set)."""
    columns = _columns(config)
    tfds_dir = config.data.tfds_data_dir or None
    records = {
        split: read_records(config.data[split], columns, config.task, tfds_data_dir=tfds_dir)
        if config.data[split]
        else []
        for split in ("train", "eval", "test")
    }
    labels = label_vocabulary(
        records["train"], config.task, columns.label, source=config.data.train, tfds_data_dir=tfds_dir
    )
    task = Task(config.task, labels, columns, config.data.seq_len)
    best_metric = config.best_metric or DEFAULT_METRIC[task.kind]
    if best_metric not in task.metrics() or best_metric == "mse":
        choices = [name for name in task.metrics() if name != "mse"]
        raise JftError(f"best_metric '{best_metric}' is not a score of this task; choose one of {choices}.")
    return task, best_metric, records


def encode_splits(task: Task, tokenizer, model_cfg, records: dict[str, list]) -> dict[str, Encoded | None]:
    """The records of each split tokenized (None for a split without records), once the sequence
    length is known to fit the model's position table."""
    if task.seq_len > model_cfg.max_position_embeddings:
        raise JftError(
            f"data.seq_len {task.seq_len} is longer than the position table "
            f"({model_cfg.max_position_embeddings}); use data.seq_len <= {model_cfg.max_position_embeddings}."
        )
    return {
        split: encode(split_records, tokenizer, task.kind, task.columns, task.labels, task.seq_len)
        if split_records
        else None
        for split, split_records in records.items()
    }


def train_and_evaluate(config: ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Fine-tunes per config in workdir (resuming the run it holds); returns the last metrics.

    Raises RunStopped after saving when SIGTERM or SIGINT stops the run.
    """
    check_settings(config)
    runner = Runner.start(config.parallel)
    workdir = Path(workdir).absolute()
    runner.check_batch(config.batch_size, config.accum_steps)
    with rundir.hold(workdir):
        run, init = rundir.open_run(workdir, "finetuning", config.init_from)
        task, best_metric, records = read_task(config)
        data = {"train": source_identity(config.data.train)}
        data["eval"] = source_identity(config.data.eval) if config.data.eval else None
        tokenizer = task_tokenizer(config, run, workdir, init)
        model_cfg, differences = rundir.run_model(config.model, run, init, tokenizer.get_vocab_size())
        if run is not None:
            differences += rundir.config_differences(run["config"], config.to_dict(), MAY_CHANGE_ON_RESUME)
            differences += [
                f"data.{split}: not the data the run was trained with (by content)"
                for split in ("train", "eval")
                if data[split] != run["data"][split]
            ]
            if task.labels != run["task"]["labels"]:
                differences.append(f"labels: run {run['task']['labels']}, now {task.labels}")
            rundir.refuse_resume(workdir, "finetuning", differences)
        encoded = encode_splits(task, tokenizer, model_cfg, records)

        # Everything is checked: from here on, the run writes.
        if run is None and jax.process_index() == 0:
            origin = {"from": init.describe()} if init is not None else None
            run = rundir.new_run("finetuning", config.to_dict(), model_cfg, data, task=task.to_json(), init=origin)
            rundir.write_run(workdir, run, tokenizer)
        return _train(config, workdir, runner, model_cfg, task, tokenizer, encoded, init, best_metric)


def initial_params(params: dict, config: ConfigDict, init, task: Task, quiet: bool = False) -> tuple[dict, dict | None]:
    """The parameters a new run starts from (params, fresh, with init_from's merged in), and θ_ref
    for L2-SP (None: θ_ref = 0); what was loaded is printed unless `quiet`."""
    if init is None:
        return params, None
    loaded = dict(init.params)
    same_task = init.task is not None and (init.task["kind"], init.task["labels"]) == (task.kind, task.labels)
    if "classifier" in loaded and not same_task:
        del loaded["classifier"]  # another task's head: this task's is created new
    params, report = merge(params, loaded)
    if jax.process_index() == 0 and not quiet:
        print(f"init from {init.describe()}: {report.summary()}", flush=True)
    if config.l2.reference != "init":
        return params, None
    flat = flatten(params)
    return params, unflatten({path: np.asarray(flat[path]) for path in report.loaded})


def joint_masking(config: ConfigDict, tokenizer, model_cfg) -> MaskingConfig | None:
    """The masking of the joint objective's masked-LM loss; None when joint_mlm.weight is 0."""
    joint = config.joint_mlm
    if not joint.weight:
        return None
    special = dataclasses.asdict(special_ids(tokenizer))
    return MaskingConfig.for_vocabulary(
        special, model_cfg.vocab_size, rate=joint.rate, max_predictions=joint.max_predictions
    )


def task_batches(config: ConfigDict, train_data: Encoded, task: Task, runner: Runner, seed: int) -> TaskBatches:
    """The training batches of config's layout, in the order of `seed`."""
    return TaskBatches(
        train_data,
        task.kind,
        config.batch_size,
        seed,
        layout=config.data.layout,
        max_len=task.seq_len,
        buckets=config.data.buckets,
        max_segments=config.data.max_segments,
        row_multiple=runner.batch_multiple() * config.accum_steps,
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


def finetune_setup(config: ConfigDict, model, tx, schedule, task: Task, params, masking) -> FinetuneSetup:
    """The static parts of the fine-tuning step of config."""
    if config.l2.exclude_bias_and_layer_norm:
        mask = weight_decay_mask(params)
    else:
        mask = jax.tree.map(lambda _: True, params)
    return FinetuneSetup(
        model, tx, schedule, task.kind, config.l2.weight, mask, config.joint_mlm.weight, masking, config.accum_steps
    )


def _train(config, workdir: Path, runner: Runner, model_cfg, task: Task, tokenizer, data: dict, init, best_metric):
    """Steps 7-9 of the module docstring."""
    train_data, eval_data = data["train"], data["eval"]
    masking = joint_masking(config, tokenizer, model_cfg)
    model = build_model(model_cfg, task, mlm=masking is not None)
    batches = task_batches(config, train_data, task, runner, config.seed)
    total_steps = planned_steps(config, len(batches))
    checkpoints = Checkpoints(workdir / rundir.CHECKPOINTS, every_steps=max(len(batches), 1), keep=1)
    best = Checkpoints(workdir / rundir.BEST, every_steps=1, keep=1, asynchronous=False)
    config = with_warmup(config, total_steps)
    tx, schedule = make_optimizer(config.optim, total_steps)
    params = init_params(model, jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
    host_state = {
        "train": jax.tree.map(np.asarray, create_finetune_state(params, tx)),
        "rng": np.asarray(jax.random.PRNGKey(config.seed)),
    }
    restored = rundir.restore_run(checkpoints, host_state, workdir)
    if restored is not None and (restored[2] == total_steps or restored[1].get("early_stopped")):
        for manager in (checkpoints, best):
            manager.close()
        return rundir.finished(workdir, restored[2])
    reference = None
    if restored is not None:
        host_state = restored[0]
        if (workdir / REFERENCE_FILE).is_file():
            reference = unflatten(safetensors.numpy.load_file(workdir / REFERENCE_FILE))
    else:
        params, reference = initial_params(params, config, init, task)
        host_state["train"] = jax.tree.map(np.asarray, create_finetune_state(params, tx))
        if reference is not None and jax.process_index() == 0:
            temporary = workdir / f".{REFERENCE_FILE}.tmp"
            safetensors.numpy.save_file(flatten(reference), temporary)
            temporary.replace(workdir / REFERENCE_FILE)
    setup = finetune_setup(config, model, tx, schedule, task, params, masking)
    best_value = -np.inf
    saved_best = best.restore_newest_good(set_aside=workdir / rundir.DAMAGED)
    if saved_best is not None and saved_best[1].get("value") is not None:
        best_value = saved_best[1]["value"]  # the best model's own score: a replayed evaluation must beat it
    train_step = runner.compile(functools.partial(finetune_step, setup=setup))
    predict = runner.compile_rows(functools.partial(predict_step, setup=setup))
    state = runner.put_replicated(host_state["train"]).replace(reference=runner.put_replicated(reference))
    rng = runner.put_replicated(host_state["rng"])
    start = int(host_state["train"].step)
    if jax.process_index() == 0:
        where = f"resuming at step {start} of {total_steps}" if start else f"starting at step 0 of {total_steps}"
        print(
            f"fine-tuning for {task.kind} ({len(task.labels) or 'a score'} labels) on {len(train_data):,} examples, "
            f"{len(batches)} steps an epoch; {where}",
            flush=True,
        )
        if config.data.layout == "packed":
            print(
                f"packed {len(train_data)} examples into {len(batches.packed_rows)} rows of {task.seq_len} tokens; "
                f"{batches.rows} rows a step",
                flush=True,
            )

    eval_every = config.eval_every or len(batches)
    eval_batch_size = config.eval_batch_size or config.batch_size
    patience = config.early_stopping.patience
    without_gain = restored[1].get("evals_without_gain", 0) if restored is not None else 0
    log = TrainingLog(workdir, total_steps, start, "fine-tuning", "examples", config.progress, config.guard)
    device_batches = prefetch(
        ((n, runner.put_global_batch(batch)) for n, batch in map(step_inputs, batches.stream(start))), ahead=2
    )
    stopped = None
    try:
        with StopRequest() as stop:
            for step in range(start + 1, total_steps + 1):
                examples, batch = next(device_batches)
                state, step_metrics = train_step(state, batch, rng)
                log.step(step, examples)
                stopping = stop.agreed(step % config.log_every == 0)
                if step % config.log_every == 0 or step == total_steps or stopping:
                    log.train(step, {k: float(v) for k, v in runner.get(step_metrics).items()})  # host sync
                early = False
                if eval_data is not None and (step % eval_every == 0 or step == total_steps):
                    scores = evaluate_data(runner, predict, state.params, eval_data, task, eval_batch_size)
                    log.write(step, "eval", scores)
                    without_gain += 1
                    if scores[best_metric] > best_value:
                        best_value, without_gain = scores[best_metric], 0
                        meta = {"metric": best_metric, "value": float(best_value), "step": step}
                        best.save(step, {"params": _task_params(runner, state)}, meta, force=True)
                    early = bool(patience) and without_gain >= patience and step < total_steps
                # No evaluation data: the last weights count as best (unless a replay made them already).
                if eval_data is None and step == total_steps and best.latest_step() != step:
                    meta = {"metric": None, "value": None, "step": step}
                    best.save(step, {"params": _task_params(runner, state)}, meta, force=True)
                if step == total_steps or stopping or early or step % len(batches) == 0:
                    saved = {"train": runner.replica(state.replace(reference=None)), "rng": host_state["rng"]}
                    meta = {"step": step, "evals_without_gain": without_gain, "early_stopped": early}
                    checkpoints.save(step, saved, meta, force=True)
                if early:
                    log.note(
                        f"stopped early at step {step}: {best_metric} has not improved in {patience} evaluations "
                        f"(best {best_value:.4f} at step {best.latest_step()})",
                        always=True,
                    )
                    break
                if stopping:
                    stopped = stop.stopped(step)
                    break
        if stopped is None and data["test"] is not None:
            best.wait()
            params = best.restore()[0]["params"]
            if "cls" in state.params:  # the joint objective's head: not kept, not used to predict
                params["cls"] = runner.get(state.params)["cls"]
            scores = evaluate_data(runner, predict, runner.put_replicated(params), data["test"], task, eval_batch_size)
            log.write(log.last["step"], "test", scores)
    finally:
        device_batches.close()  # stops the prefetching thread
        for manager in (checkpoints, best):
            manager.wait()
            manager.close()
        log.close()
    if stopped:
        raise stopped
    return log.last


def _task_params(runner: Runner, state) -> dict:
    """The parameters a fine-tuned model keeps: without the joint objective's masked-LM head."""
    return {name: tree for name, tree in runner.replica(state.params).items() if name != "cls"}

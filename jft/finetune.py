"""Fine-tuning: `train_and_evaluate(config, workdir)`, the `jft finetune` command, on task loss +
λ·Σ‖θ − θ_ref‖² (+ μ·MLM loss on the task's text, the optional joint objective).

Data -> model -> state -> loop -> outputs, in the order of jft.train.session (steps 1-4 only read):
1. check the settings; start jax.distributed when the config asks for several processes (each
   reads all the task data, makes the same global batches and puts its share on its devices);
2. hold the workdir and read its run.json (a run there is resumed), open init_from;
3. read the task data (the label set from the training data), the tokenizer (the run's; else
   init_from's or data.vocab's), the model (the session's rules); a resumed run must have the
   same settings, data by content, labels and θ_ref, and may change its length (epochs,
   max_steps); then write run.json, and θ_ref for L2-SP (reference.safetensors);
4. restore the newest good checkpoint and best/'s score (a finished run says so and returns), or
   initialise from init_from's weights (its NSP head dropped, its MLM head kept only for the joint
   objective, its task head only for the same task and labels);
5. train epochs × batches, evaluating every eval_every steps and at the end (a better score
   replaces best/), saving at each epoch's end, at the end and on SIGTERM/SIGINT; then the test
   split with the best model.
"""

import functools
import sys
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from jft.data.corpus import source_identity
from jft.data.loader import prefetch
from jft.defaults import finetune as default_config
from jft.errors import JftError
from jft.pretrain import context_warning
from jft.tasks.batches import fill_rows, step_inputs
from jft.tasks.evaluate import evaluate_data
from jft.tasks.finetuning import (
    check_settings,
    check_text_joint_data,
    describe_penalty,
    encode_splits,
    finetune_setup,
    image_joint_classes,
    image_joint_objective,
    initial_params,
    joint_objective,
    planned_steps,
    read_task,
    resolve_reference,
    task_batches,
    task_modality,
    task_tokenizer,
    with_warmup,
)
from jft.tasks.images import JointImageBatches, joint_images, read_image_task
from jft.tasks.metrics import one_class, one_class_advice
from jft.train import rundir
from jft.train.checkpoint import Checkpoints, saved_steps
from jft.train.log import TrainingLog, last_metrics, read_metrics
from jft.train.loop import train_loop
from jft.train.optim import learning_rate_schedule, make_optimizer
from jft.train.parallel import Runner
from jft.train.session import RunSession
from jft.train.steps import create_finetune_state, finetune_step, predict_step

__all__ = ["default_config", "train_and_evaluate"]

# Settings a resumed run may change: where things are (data is compared by content instead),
# logging, devices, and its length (epochs, max_steps: not below the step reached). The model
# is compared field by field (RunSession.model).
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
    "keep_checkpoints",
    "progress",
    "parallel",
    "guard",
    "sweep",
    "epochs",
    "max_steps",
)


def train_and_evaluate(
    config: ConfigDict, workdir: str | Path, runner: Runner | None = None, stage: str = "finetuning"
) -> dict[str, float]:
    """Fine-tunes per config in workdir (resuming the run it holds); returns the last metrics.
    runner: the devices' runner when the caller has one (a sweep). stage: "pretraining" for an
    image model's supervised pretraining (jft.pretrain). Raises RunStopped after saving when
    SIGTERM or SIGINT stops the run."""
    check_settings(config)
    runner = runner or Runner.start(config.parallel)
    runner.check_batch(config.batch_size, config.accum_steps)
    family = config.model.get("family", "")
    with RunSession.open(workdir, stage, config.init_from, MAY_CHANGE_ON_RESUME, family) as session:
        workdir, run = session.workdir, session.run
        config = resolve_reference(config, run["config"]["l2"]["reference"] if run else None)
        images = task_modality(config, session) == "image"
        if images:  # no tokenizer; the images read at the model's side
            tokenizer = None
            family, model = session.model(config.model, None)
            task, best_metric, encoded = read_image_task(config, model.image_size)
            data = {split: encoded[split] and encoded[split].identity() for split in ("train", "eval")}
            recorded = (session.run.get("joint_classes") or []) if session.resuming else None
            joint_classes = image_joint_classes(config, session.init, recorded)
            pretraining_images = joint_images(config, joint_classes, model.image_size)
            if pretraining_images is not None:
                data["joint"] = pretraining_images.identity()
        else:
            check_text_joint_data(config)
            joint_classes, pretraining_images = [], None
            task, best_metric, records = read_task(config, run["task"] if run else session.init and session.init.task)
            data = {"train": source_identity(config.data.train)}
            data["eval"] = source_identity(config.data.eval) if config.data.eval else None
            tokenizer = task_tokenizer(config, workdir if session.resuming else None, session.init)
            family, model = session.model(config.model, tokenizer)
        session.compare(config.to_dict())
        if session.resuming:
            session.differ(
                *(
                    f"data.{split}: not the data the run was trained with (by content)"
                    for split in ("train", "eval", "joint")
                    if data.get(split) != run["data"].get(split)
                )
            )
            if task.labels != run["task"]["labels"]:
                session.differ(f"labels: run {run['task']['labels']}, now {task.labels}")
            if session.uses_reference() and saved_steps(workdir / rundir.CHECKPOINTS):
                session.check_reference()
        session.verified()
        weak = context_warning(session.init.path) if session.init and session.init.kind == "pretraining" else None
        if weak and jax.process_index() == 0:  # said at the start, once, before the time is spent
            print(f"warning: init_from {session.init.path}: {weak}", file=sys.stderr, flush=True)
        if images:
            joint = image_joint_objective(config)
        else:
            encoded = encode_splits(task, tokenizer, family, model, records)
            joint = joint_objective(config, family, tokenizer, model)
        batches = task_batches(config, encoded["train"], task, config.seed)
        if pretraining_images is not None:
            batches = JointImageBatches(batches, pretraining_images.batches(config.batch_size, config.seed + 1, True))
        module = family.module(model, task.head(mlm=joint[0] in ("mlm", "next_word"), joint_labels=len(joint_classes)))
        total_steps = planned_steps(config, len(batches))
        longer = _length_change(config, session, len(batches))

        # Everything is checked: from here on, the run writes.
        extra = {"joint_classes": joint_classes} if joint_classes else {}
        session.start(config.to_dict(), family, model, data, tokenizer, task=task.to_json(), **extra)
        if longer:
            session.record({**run["config"], "epochs": config.epochs, "max_steps": config.max_steps})
            print(longer, flush=True)
        config = with_warmup(config, total_steps)
        tx, schedule = make_optimizer(config.optim, total_steps)
        with runner.making_state():
            params = family.init_params(module, jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
        setup = finetune_setup(config, family, module, tx, schedule, task, params, joint, model)

        # The state: restored, or new (with init_from's weights, and θ_ref written for L2-SP).
        with runner.making_state():
            host_state = {
                "train": jax.tree.map(np.asarray, create_finetune_state(params, tx)),
                "rng": np.asarray(jax.random.PRNGKey(config.seed)),
            }
        checkpoints = Checkpoints(
            workdir / rundir.CHECKPOINTS, every_steps=max(len(batches), 1), keep=config.keep_checkpoints
        )
        best = Checkpoints(workdir / rundir.BEST, every_steps=1, keep=1, asynchronous=False)
        restored = session.restore(checkpoints, host_state)
        finished = restored is not None and (restored[2] == total_steps or restored[1].get("early_stopped"))
        # a run stopped after its training, before its test evaluation (or given data.test since): done now
        untested = finished and encoded["test"] is not None and not _tested(workdir, restored[2])
        if finished and not untested:
            for manager in (checkpoints, best):
                manager.close()
            return session.finished(restored[2])
        reference = None
        if restored is not None:
            host_state = restored[0]
            reference = session.saved_reference()
        else:
            with runner.making_state():
                params, reference = initial_params(params, config, session.init, task)
                host_state["train"] = jax.tree.map(np.asarray, create_finetune_state(params, tx))
            if reference is not None:
                session.save_reference(reference)
        best_value = -np.inf
        saved_best = best.restore_newest_good(set_aside=workdir / rundir.DAMAGED)
        if saved_best is not None and saved_best[1].get("value") is not None:
            best_value = saved_best[1]["value"]  # the best model's own score: a replayed evaluation must beat it
        start = int(host_state["train"].step)
        activity = "pretraining" if stage == "pretraining" else "fine-tuning"  # what the log lines say
        if jax.process_index() == 0 and untested:
            print(f"{workdir}: this run finished at step {start}; evaluating the best model on data.test", flush=True)
        elif jax.process_index() == 0:
            where = f"resuming at step {start} of {total_steps}" if start else f"starting at step 0 of {total_steps}"
            train = encoded["train"]
            if task.kind == "question_answering":
                what = f"(answer spans) on {len(train.ids):,} questions in {len(train):,} windows"
            else:
                outputs = "candidates" if task.kind == "multiple_choice" else "labels"
                what = f"({len(task.labels) or 'a score'} {outputs}) on {len(train):,} examples"
            steps = f"{len(batches)} step{'s' if len(batches) != 1 else ''} an epoch"
            print(f"{activity} for {task.kind} {what}, {steps}; {where}", flush=True)
            print(describe_penalty(config, reference is not None), flush=True)
            if config.data.layout == "packed":
                print(
                    f"packed {len(encoded['train'])} examples into {len(batches.packed_rows)} rows of "
                    f"{task.seq_len} tokens; {batches.rows} rows a step",
                    flush=True,
                )

        # The loop.
        state = runner.put_state(host_state["train"].replace(reference=reference))
        rng = runner.put_replicated(host_state["rng"])
        predict = runner.compile_rows(functools.partial(predict_step, setup=setup))
        eval_batch_size = config.eval_batch_size or config.batch_size
        patience = config.early_stopping.patience
        progress = {"without_gain": restored[1].get("evals_without_gain", 0) if restored is not None else 0}
        progress["early"] = False
        log = TrainingLog(
            workdir, total_steps, start, activity, "examples", config.progress, config.guard, weights=rundir.BEST
        )

        def evaluate(step, state) -> bool:
            nonlocal best_value
            if encoded["eval"] is None:  # the last weights count as best (unless a replay made them already)
                if step == total_steps and best.latest_step() != step:
                    best.save(
                        step,
                        {"params": _task_params(runner, state, family)},
                        {"metric": None, "value": None, "step": step},
                        force=True,
                    )
                return False
            scores = evaluate_data(runner, predict, state.params, encoded["eval"], task, eval_batch_size)
            progress["without_gain"] += 1
            if scores[best_metric] > best_value:
                best_value, progress["without_gain"] = scores[best_metric], 0
                meta = {"metric": best_metric, "value": float(best_value), "step": step}
                best.save(step, {"params": _task_params(runner, state, family)}, meta, force=True)
            log.write(step, "eval", scores, best=f"best {best_metric} {best_value:.4f} at step {best.latest_step()}")
            if one_class(scores) and (not progress.get("one_class") or step == total_steps):
                progress["one_class"] = True
                log.note(f"warning: step {step}: {one_class_advice(config.l2.reference)}")
            if patience and progress["without_gain"] >= patience and step < total_steps:
                progress["early"] = True
                log.note(
                    f"stopped early at step {step}: {best_metric} has not improved in {patience} evaluations "
                    f"(best {best_value:.4f} at step {best.latest_step()})",
                )
                return True
            return False

        def save(step, state, final):
            saved = {"train": runner.replica(state.replace(reference=None)), "rng": host_state["rng"]}
            meta = {"step": step, "evals_without_gain": progress["without_gain"], "early_stopped": progress["early"]}
            checkpoints.save(step, saved, meta, force=True)

        multiple = runner.batch_multiple() * config.accum_steps
        try:
            if not untested:
                stream = (step_inputs(batch) for batch in batches.stream(start))
                device_batches = prefetch(
                    ((n, runner.put_global_batch(fill_rows(b, multiple))) for n, b in stream), ahead=2
                )
                state = train_loop(
                    state,
                    device_batches,
                    step=runner.compile(functools.partial(finetune_step, setup=setup)),
                    rng=rng,
                    runner=runner,
                    start=start,
                    total_steps=total_steps,
                    log_every=config.log_every,
                    log=log,
                    evaluate=evaluate,
                    eval_every=config.eval_every or len(batches),
                    save=save,
                    save_every=len(batches),
                )
            if encoded["test"] is not None:
                best.wait()
                params = best.restore()[0]["params"]
                if "cls" in state.params:  # the joint objective's head: not kept, not used to predict
                    params["cls"] = runner.get(state.params)["cls"]
                test = runner.put_replicated(params)
                log.write(
                    start if untested else log.last["step"],
                    "test",
                    evaluate_data(runner, predict, test, encoded["test"], task, eval_batch_size),
                )
        finally:
            for manager in (checkpoints, best):
                manager.wait()
                manager.close()
            log.close()
        return last_metrics(workdir) if untested else log.last


def _tested(workdir: Path, step: int) -> bool:
    """Whether the run's metrics.jsonl holds a test evaluation at `step` (its last)."""
    return any(row["split"] == "test" and row["step"] == step for row in read_metrics(workdir))


def _length_change(config: ConfigDict, session: RunSession, steps_an_epoch: int) -> str:
    """A resumed run's new length (epochs, max_steps): refused below the step it has reached; else
    the line that says what the learning-rate schedule does from there ('' when unchanged)."""
    if not session.resuming:
        return ""
    before = ConfigDict(session.run["config"])
    if (before.epochs, before.max_steps) == (config.epochs, config.max_steps):
        return ""
    was, now = planned_steps(before, steps_an_epoch), planned_steps(config, steps_an_epoch)
    reached = max(saved_steps(session.workdir / rundir.CHECKPOINTS), default=0)
    if now < reached:
        raise JftError(
            f"{session.workdir} holds a fine-tuning run that has reached step {reached}; epochs {config.epochs} and "
            f"max_steps {config.max_steps} make {now} steps (it was {was}). A run can be made longer, not shorter "
            "than where it is; --config.init_from starts a new run from its weights."
        )
    old, new = (
        float(learning_rate_schedule(with_warmup(c, n).optim, n)(reached)) for c, n in ((before, was), (config, now))
    )
    changed = ", ".join(
        f"{key} {before[key]} -> {config[key]}" for key in ("epochs", "max_steps") if before[key] != config[key]
    )
    return (
        f"{changed}: {was} -> {now} steps. From step {reached} on, the learning rate follows the schedule of a "
        f"{now}-step run ({config.optim.decay} decay to 0 at its end): {new:.3g} at step {reached}, where the "
        f"{was}-step schedule had {old:.3g}; the optimizer's moments go on as they are."
    )


def _task_params(runner: Runner, state, family) -> dict:
    """The parameters a fine-tuned model keeps: without the joint objective's masked-LM head."""
    return family.task_params(runner.replica(state.params))

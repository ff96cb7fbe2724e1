"""Many fine-tuning runs trained as one population: one compiled step, `jax.vmap`ped over the
member axis, each member with its own parameters, optimizer state, hyperparameters (the learning
rate, λ, μ), dropout and data order, and, with folds, its own training examples; the batch's rows
still split over the devices as in a fine-tuning run. Member k ends where `jft finetune` with
member k's settings ends. The memory a population needs is checked before it trains (XLA's
count against the device's), and refused with the largest population that fits.
"""

import dataclasses
import functools
import time
from collections.abc import Iterator
from typing import Any

import flax
import jax
import numpy as np
from ml_collections import ConfigDict

from jft.data.loader import prefetch
from jft.errors import JftError
from jft.models import Family
from jft.perf.memory import device_memory, peak_bytes
from jft.tasks.batches import fill_rows, step_inputs
from jft.tasks.evaluate import predict_all, task_scores
from jft.tasks.finetuning import (
    finetune_setup,
    image_joint_objective,
    initial_params,
    joint_objective,
    planned_steps,
    task_batches,
    with_warmup,
)
from jft.tasks.images import JointImageBatches
from jft.tasks.records import IGNORE, PER_TOKEN, Encoded, Task
from jft.train.loop import train_loop
from jft.train.optim import make_optimizer
from jft.train.parallel import Runner
from jft.train.steps import FinetuneState, create_finetune_state, finetune_step, predict_step

GIB = 1024**3


@dataclasses.dataclass
class Member:
    """One training of the sweep: a grid point (its values by key), a fold, and its full config."""

    index: int
    setting: dict[str, Any]
    fold: int | None
    config: ConfigDict


@dataclasses.dataclass
class SweepData:
    """What every member shares: the task, its data encoded, tokenizer, model and init_from."""

    task: Task
    metric: str
    tokenizer: Any
    family: Family
    model: Any  # the family's config
    data: dict  # split -> Encoded | None
    init: Any
    folds: np.ndarray | None  # each training example's fold
    joint: Any = None  # an image model's pretraining images (jft.tasks.images.ImageData) for μ·L_pre
    joint_classes: list = dataclasses.field(default_factory=list)  # their classes: the joint head's
    by_fold: dict = dataclasses.field(default_factory=dict, repr=False)  # training(fold), made once

    def training(self, fold: int | None) -> Encoded:
        """The examples a member of `fold` trains on: all of the training data, or the other folds'."""
        if fold not in self.by_fold:
            train = self.data["train"]
            self.by_fold[fold] = train if fold is None else subset(train, np.flatnonzero(self.folds != fold))
        return self.by_fold[fold]


def subset(data, indices: np.ndarray):
    """The examples of data (Encoded texts and their kinds, or images) at indices, in that order."""
    if hasattr(data, "subset"):
        return data.subset(indices)
    return type(data)(*([getattr(data, f.name)[i] for i in indices] for f in dataclasses.fields(data)))


@flax.struct.dataclass
class Population:
    """The training state of a population: each member's FinetuneState stacked on a leading
    axis, each member's hyperparameters (lr, l2, mlm) [members], and the θ_ref they share."""

    members: FinetuneState
    hyper: dict
    reference: Any = None


@dataclasses.dataclass(frozen=True)
class PopulationSetup:
    """The static parts of a population's step: the members' shared fine-tuning setup, and what
    builds each member's optimizer around its own learning rate."""

    finetune: Any  # jft.steps.FinetuneSetup
    optim: ConfigDict
    total_steps: int


def population_step(population: Population, batch: dict, rng, *, setup: PopulationSetup, axis_name=None):
    """One fine-tuning step of every member (jft.steps.finetune_step, vmapped): batch arrays are
    [rows, members, ...], rng [members, 2]; metrics come back [members]."""

    def member(state, member_batch, member_rng, hyper):
        tx, schedule = make_optimizer(setup.optim, setup.total_steps, lr=hyper["lr"])
        mlm = hyper["mlm"] if setup.finetune.joint else 0.0
        own = dataclasses.replace(setup.finetune, tx=tx, schedule=schedule, l2=hyper["l2"], mlm_weight=mlm)
        state = state.replace(reference=population.reference)
        new, metrics = finetune_step(state, member_batch, member_rng, setup=own, axis_name=axis_name)
        return new.replace(reference=None), metrics

    members, metrics = jax.vmap(member, in_axes=(0, 1, 0, 0))(population.members, batch, rng, population.hyper)
    return population.replace(members=members), metrics


def population_predict(params, batch: dict, rng, *, setup, axis_name=None):
    """Every member's logits of the same rows: [rows, members, ...]."""
    return jax.vmap(lambda p: predict_step(p, batch, rng, setup=setup, axis_name=axis_name), out_axes=1)(params)


def population_batch(parts: list[dict], kind: str, width: int = 0) -> dict:
    """The members' batches of one step as one: [rows, members, ...], each member's padded with
    empty rows and masked columns to the longest (or to `width`): the same loss, as they weigh 0
    and are not attended to. Image batches have rows only."""
    rows = max(part["weights"].shape[0] for part in parts)
    width = max([width] + [part["input_ids"].shape[-1] for part in parts if "input_ids" in part])
    tokens = {"input_ids", "token_type_ids", "attention_mask", "segment_ids", "position_ids"}
    if kind == "token_classification":
        tokens |= {"labels", "weights"}
    out = {}
    for name in parts[0]:
        padded = []
        for part in parts:
            array = part[name]
            pad = [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
            if name in tokens:  # the last axis: [rows, width], or multiple choice's [rows, candidates, width]
                pad[-1] = (0, width - array.shape[-1])
            fill = IGNORE if name == "labels" and kind == "token_classification" else 0
            padded.append(np.pad(array, pad, constant_values=fill))
        out[name] = np.stack(padded, axis=1)
    return out


class PopulationLog:
    """The loop's reporter for a population: a line every log step, the members' losses' range."""

    def __init__(self, total_steps: int, log):
        self.total_steps, self.log = total_steps, log

    def step(self, step: int, work: int) -> None:
        pass

    def train(self, step: int, metrics: dict) -> None:
        losses = metrics["loss"]
        self.log(f"step {step}/{self.total_steps}: loss {losses.min():.4f} to {losses.max():.4f} over the members")


@dataclasses.dataclass
class PopulationRun:
    """A population ready to train: its step (compiled, memory checked), state and keys on the
    devices, and its batches [rows, members, ...] step after step."""

    setup: PopulationSetup
    step: Any
    state: Population
    rngs: Any
    batches: Iterator[tuple[int, dict]]  # (examples, batch)
    total_steps: int
    peak_bytes: int  # XLA's count of the step's memory a device, at the widest batch (0: not counted)


def start_population(members: list[Member], shared: SweepData, runner: Runner, log=print) -> PopulationRun:
    """Members (one group: the same static settings and steps) made into one population: each
    member's parameters as its own fine-tuning run would start, its data (its training folds) in
    the order of its seed."""
    config, task = members[0].config, shared.task
    images = shared.family.modality == "image"
    joint = (
        image_joint_objective(config)
        if images
        else joint_objective(config, shared.family, shared.tokenizer, shared.model)
    )
    joint_labels = len(shared.joint_classes) if joint[0] == "classify" else 0
    model = shared.family.module(
        shared.model, task.head(mlm=joint[0] in ("mlm", "next_word"), joint_labels=joint_labels)
    )
    batches = [member_batches(m, shared, joint[0] == "classify") for m in members]
    total_steps = planned_steps(config, len(batches[0]))
    config = with_warmup(config, total_steps)
    tx, schedule = make_optimizer(config.optim, total_steps)
    states, reference = [], None
    for m in members:
        with runner.making_state():
            params = shared.family.init_params(model, jax.random.fold_in(jax.random.PRNGKey(m.config.seed), 0))
            params, reference = initial_params(params, m.config, shared.init, task, quiet=True)
            states.append(jax.tree.map(np.asarray, create_finetune_state(params, tx)))
    hyper = {
        name: np.array([m.config[key] for m in members], np.float32)
        for name, key in (("lr", "optim.lr"), ("l2", "l2.weight"), ("mlm", "joint_mlm.weight"))
    }
    population = Population(jax.tree.map(lambda *xs: np.stack(xs), *states), hyper, reference)
    setup = PopulationSetup(
        finetune_setup(config, shared.family, model, tx, schedule, task, params, joint, shared.model),
        config.optim,
        total_steps,
    )
    step = runner.compile(functools.partial(population_step, setup=setup))
    rngs = np.stack([np.asarray(jax.random.PRNGKey(m.config.seed)) for m in members])
    population, rngs = runner.put_state(population), runner.put_replicated(rngs)
    streams = [b.stream(0) for b in batches]
    first = [step_inputs(next(s)) for s in streams]
    widest = 0 if images else max(b.widths[-1] if b.layout == "bucketed" else task.seq_len for b in batches)
    multiple = runner.batch_multiple() * config.accum_steps

    def one_batch(parts, width=0):
        return sum(n for n, _ in parts), fill_rows(population_batch([b for _, b in parts], task.kind, width), multiple)

    step, peak = _checked_program(step, population, one_batch(first, widest)[1], rngs, len(members), runner, setup, log)

    def stream():
        yield one_batch(first)
        while True:
            yield one_batch([step_inputs(next(s)) for s in streams])

    return PopulationRun(setup, step, population, rngs, stream(), total_steps, peak)


def member_batches(member: Member, shared: SweepData, joint_images: bool):
    """A member's training batches, as its own fine-tuning run's: its folds in the order of its
    seed, with a batch of the pretraining images beside each for an image model's μ·L_pre."""
    batches = task_batches(member.config, shared.training(member.fold), shared.task, member.config.seed)
    if joint_images:
        pretraining = shared.joint.batches(member.config.batch_size, member.config.seed + 1, True)
        batches = JointImageBatches(batches, pretraining)
    return batches


def train_population(members: list[Member], shared: SweepData, runner: Runner, log=print) -> tuple[list[dict], Any]:
    """Trains members (one group: the same static settings and steps) together; returns each
    member's scores and the members' final parameters (stacked, on the host)."""
    config, task = members[0].config, shared.task
    run = start_population(members, shared, runner, log)
    start = time.perf_counter()
    population = train_loop(
        run.state,
        prefetch(((n, runner.put_global_batch(batch)) for n, batch in run.batches), ahead=2),
        step=run.step,
        rng=run.rngs,
        runner=runner,
        start=0,
        total_steps=run.total_steps,
        log_every=config.log_every,
        log=PopulationLog(run.total_steps, log),
        kept="the populations finished before this one are kept (members.jsonl)",
    )
    seconds = time.perf_counter() - start
    predict = runner.compile_rows(functools.partial(population_predict, setup=run.setup.finetune))
    eval_batch = config.eval_batch_size or config.batch_size
    held_out = [None if m.fold is None else np.flatnonzero(shared.folds == m.fold) for m in members]
    scored = {}  # split -> [(logits, labels)] a member
    for split in {"train" if index is not None else "eval" for index in held_out}:
        scored[split] = predict_all(
            runner, predict, population.members.params, shared.data[split], task, eval_batch, len(members)
        )
    results = []
    for k, (m, index) in enumerate(zip(members, held_out)):
        logits, labels = scored["train" if index is not None else "eval"][k]
        data = shared.data["train" if index is not None else "eval"]
        if index is not None:
            logits, labels, data = [logits[i] for i in index], [labels[i] for i in index], subset(data, index)
            if task.kind not in PER_TOKEN:
                logits, labels = np.stack(logits), np.stack(labels)
        results.append(
            {
                "member": m.index,
                "setting": m.setting,
                "fold": m.fold,
                "scores": task_scores(task, logits, labels, data),
                "steps": run.total_steps,
                "population": len(members),
                "train_seconds": seconds,
            }
        )
    return results, runner.get(population.members.params)


def _checked_program(step, population, batch, rngs, members: int, runner: Runner, setup, log):
    """The population's step compiled for its widest batch, and XLA's count of its memory a
    device; refused with the largest population that fits when that is more than a device holds."""
    if runner.backend == "pmap":  # pmap's compiled programs give no memory analysis: not checked
        return step, 0
    device_batch = runner.put_global_batch(batch)
    compiled = step.lower(population, device_batch, rngs).compile()
    peak = _peak(compiled)
    limit = device_memory(next(d for d in runner.devices if d.process_index == jax.process_index()))
    log(f"a population of {members}: {peak / GIB:.2f} GiB a device of {limit / GIB:.1f}")
    if peak > limit:
        raise JftError(_too_big(members, peak, limit, setup, population, batch, runner))
    shape = jax.tree.map(lambda x: x.shape, batch)

    def run(population, device_batch, rngs):
        if jax.tree.map(lambda x: x.shape, device_batch) == shape:
            return compiled(population, device_batch, rngs)
        return step(population, device_batch, rngs)

    return run, peak


def _peak(compiled) -> int:
    return peak_bytes(compiled.memory_analysis())


def _too_big(members: int, peak: int, limit: int, setup, population, batch, runner) -> str:
    """What a population that does not fit says: its need, and the largest that fits (from a
    compile of one member: memory grows about linearly with the members)."""
    host = runner.get(population)
    one = host.replace(
        members=jax.tree.map(lambda x: x[:1], host.members), hyper={k: v[:1] for k, v in host.hyper.items()}
    )
    one_batch = jax.tree.map(lambda x: x[:, :1], batch)
    step = runner.compile(functools.partial(population_step, setup=setup))
    rngs = runner.put_replicated(np.zeros((1, 2), np.uint32))
    single = _peak(step.lower(runner.put_state(one), runner.put_global_batch(one_batch), rngs).compile())
    per_member = max((peak - single) / max(members - 1, 1), 1)
    largest = int((limit - single) // per_member) + 1 if single <= limit else 0
    need = f"a population of {members} members needs {peak / GIB:.2f} GiB a device, more than its {limit / GIB:.2f} GiB"
    if largest < 1:
        return f"{need}, and one member alone needs {single / GIB:.2f} GiB: use a smaller batch_size or model."
    return f"{need}; about {largest} fit: set sweep.population={largest} (groups larger than that run in parts)."

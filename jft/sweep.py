"""Hyperparameter search and k-fold cross-validation, many fine-tuning runs trained at once:
`run_sweep(config, workdir)`, the `jft sweep` command.

config is a fine-tuning config whose `sweep` group holds the grid (`{"optim.lr": [...], ...}`),
the folds and the metric. Every combination of the grid's values (× each of k folds) is a member.
Members that differ only in values that can be arrays (ARRAY_KEYS: the learning rate, λ, μ and
the seed) form one population: one compiled step, `jax.vmap`ped over the member axis, trains them
together, each with its own parameters, optimizer state, hyperparameters, dropout and data order
(and, with folds, its own training examples); the batch's rows still split over the devices as
in a fine-tuning run. Members that differ in anything else (l2.reference, epochs, data.seq_len,
...) form separate groups, trained one after another, at most sweep.population members at once.
Each member is evaluated once, at the end of its training: on its held-out fold, or on data.eval.

The workdir holds sweep.json (the settings), members.jsonl (each member's scores, written as its
population finishes: a stopped sweep resumes with the populations not yet written), sweep.jsonl
(the table: each grid point's mean and spread over folds and seeds), sweep.png, and best_run/, a
normal fine-tuning run directory of the best grid point trained on the whole training set, for
`jft eval`, `predict` and `export`.
"""

import dataclasses
import functools
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
from ml_collections import ConfigDict

from jft import rundir
from jft.checkpoint import StopRequest
from jft.config import apply_overrides, leaf_keys
from jft.data.corpus import source_identity
from jft.data.loader import prefetch
from jft.data.tasks import IGNORE, Encoded, Task, step_inputs
from jft.errors import JftError
from jft.finetune import (
    check_settings,
    encode_splits,
    finetune_setup,
    initial_params,
    joint_masking,
    planned_steps,
    read_task,
    task_batches,
    task_tokenizer,
    train_and_evaluate,
    with_warmup,
)
from jft.inference import build_model, predict_all, task_scores
from jft.models import init_params
from jft.optim import make_optimizer
from jft.parallel import Runner
from jft.steps import FinetuneState, create_finetune_state, finetune_step, predict_step

# Settings a member of a population may have of its own: arrays of one value a member.
ARRAY_KEYS = ("optim.lr", "l2.weight", "joint_mlm.weight", "seed")
# Keys that are not settings of a model, so not for a grid.
NOT_SWEPT = ("sweep", "parallel", "progress", "log_every", "guard", "data.train", "data.eval", "data.test")
# Settings a resumed sweep may change.
MAY_CHANGE_ON_RESUME = ("sweep.population", "parallel", "progress", "log_every", "eval_batch_size", "guard")
BEST_RUN = "best_run"
GIB = 1024**3


def sweep_config() -> ConfigDict:
    """The `sweep` keys of a fine-tuning config (jft.finetune.default_config); `jft finetune` ignores them."""
    return ConfigDict(
        dict(
            # {"optim.lr": [1e-5, 3e-5], "l2.weight": [0.0, 1e-2], "seed": [0, 1]}: every combination
            # is trained; seeds are repeats, averaged in the table like folds. A plain dict (the
            # group does not convert dicts to ConfigDicts, which take no dotted keys).
            grid={},
            folds=0,  # k >= 2: k-fold cross-validation on data.train (else: evaluated on data.eval)
            metric="",  # empty: best_metric's (accuracy, pearson or entity_f1 by task); higher is better
            population=0,  # at most this many members trained at once (0: a whole group)
        ),
        convert_dict=False,
    )


@dataclasses.dataclass
class Member:
    """One training of the sweep: a grid point (its values by key), a fold, and its full config."""

    index: int
    setting: dict[str, Any]
    fold: int | None
    config: ConfigDict


def plan(config: ConfigDict) -> list[Member]:
    """Every member of the sweep config describes, each config checked: errors name the grid key."""
    grid, folds = dict(config.sweep.grid), config.sweep.folds
    if not grid:
        raise JftError(
            "sweep.grid is empty: give the values to search, e.g. "
            "--config.sweep.grid=\"{'optim.lr': [1e-5, 3e-5, 1e-4], 'l2.weight': [0.0, 1e-2]}\"."
        )
    if folds == 1 or folds < 0:
        raise JftError(f"sweep.folds must be 0 (evaluate on data.eval) or at least 2, got {folds}.")
    if not folds and not config.data.eval:
        raise JftError("a sweep scores each member on data.eval: set data.eval, or sweep.folds=k for k-fold.")
    if config.sweep.population < 0:
        raise JftError(f"sweep.population must be 0 (a whole group at once) or more, got {config.sweep.population}.")
    valid = leaf_keys(config)
    for key, values in grid.items():
        if key.startswith(tuple(f"{k}." for k in NOT_SWEPT)) or key in NOT_SWEPT:
            raise JftError(f"sweep.grid: '{key}' is not a setting of a model's training; sweep others.")
        if key not in valid:  # apply_overrides names the nearest key
            apply_overrides(config.copy_and_resolve_references(), [f"{key}=0"])
        if not isinstance(values, (list, tuple)) or not values:
            raise JftError(f"sweep.grid['{key}'] must be a non-empty list of values, got {values!r}.")
    members = []
    for combination in itertools.product(*grid.values()):
        setting = dict(zip(grid, combination))
        member_config = config.copy_and_resolve_references()
        for key, value in setting.items():
            try:
                apply_overrides(member_config, [f"{key}={value}"])
            except JftError as error:
                raise JftError(f"sweep.grid['{key}'] value {value!r}: {error}") from None
        try:
            check_settings(member_config)
        except JftError as error:
            raise JftError(f"sweep.grid point {setting}: {error}") from None
        for fold in range(folds) if folds else [None]:
            members.append(Member(len(members), setting, fold, member_config))
    return members


def fold_ids(examples: int, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each training example: a shuffle dealt round, so each example is
    held out exactly once and the folds differ in size by at most one."""
    order = np.random.default_rng([seed, 1]).permutation(examples)
    ids = np.empty(examples, np.int64)
    ids[order] = np.arange(examples) % folds
    return ids


def subset(data: Encoded, indices: np.ndarray) -> Encoded:
    """The examples of data at indices, in that order."""
    return Encoded(*([getattr(data, f.name)[i] for i in indices] for f in dataclasses.fields(Encoded)))


def _group_key(member: Member, steps: int) -> str:
    """What the members of one population share: every setting but ARRAY_KEYS (the joint
    objective's μ only as on or off, which adds a head), and the number of steps."""
    config = member.config.copy_and_resolve_references()
    for key in ARRAY_KEYS:
        group, _, name = key.rpartition(".")
        node = config[group] if group else config
        node[name] = type(node[name])(0)
    config.joint_mlm.weight = float(member.config.joint_mlm.weight > 0)
    return json.dumps({"config": config.to_dict(), "steps": steps}, sort_keys=True, default=str)


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
        mlm = hyper["mlm"] if setup.finetune.masking is not None else 0.0
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
    and are not attended to."""
    rows = max(part["input_ids"].shape[0] for part in parts)
    width = max([width] + [part["input_ids"].shape[1] for part in parts])
    tokens = {"input_ids", "token_type_ids", "attention_mask", "segment_ids", "position_ids"}
    if kind == "token_classification":
        tokens |= {"labels", "weights"}
    out = {}
    for name in parts[0]:
        padded = []
        for part in parts:
            array = part[name]
            pad = [(0, rows - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
            if name in tokens:
                pad[1] = (0, width - array.shape[1])
            fill = IGNORE if name == "labels" and kind == "token_classification" else 0
            padded.append(np.pad(array, pad, constant_values=fill))
        out[name] = np.stack(padded, axis=1)
    return out


def device_memory(device) -> int:
    """Bytes a device can hold: its allocator's limit; on a CPU, the host's memory shared by its devices."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // max(len(jax.local_devices()), 1)


@dataclasses.dataclass
class SweepData:
    """What every member shares: the task, its data encoded, tokenizer, model and init_from."""

    task: Task
    metric: str
    tokenizer: Any
    model_cfg: Any
    data: dict  # split -> Encoded | None
    init: Any
    folds: np.ndarray | None  # each training example's fold
    by_fold: dict = dataclasses.field(default_factory=dict, repr=False)  # training(fold), made once

    def training(self, fold: int | None) -> Encoded:
        """The examples a member of `fold` trains on: all of the training data, or the other folds'."""
        if fold not in self.by_fold:
            train = self.data["train"]
            self.by_fold[fold] = train if fold is None else subset(train, np.flatnonzero(self.folds != fold))
        return self.by_fold[fold]


@dataclasses.dataclass
class PopulationRun:
    """A population ready to train: its step (compiled, memory checked), state and keys on the
    devices, and its batches [rows, members, ...] step after step."""

    setup: PopulationSetup
    step: Any
    state: Population
    rngs: Any
    batches: Iterator[dict]
    total_steps: int
    peak_bytes: int  # XLA's count of the step's memory a device, at the widest batch (0: not counted)


def start_population(members: list[Member], shared: SweepData, runner: Runner, log=print) -> PopulationRun:
    """Members (one group: the same static settings and steps) made into one population: each
    member's parameters as its own fine-tuning run would start, its data (its training folds) in
    the order of its seed."""
    config, task = members[0].config, shared.task
    masking = joint_masking(config, shared.tokenizer, shared.model_cfg)
    model = build_model(shared.model_cfg, task, mlm=masking is not None)
    batches = [task_batches(m.config, shared.training(m.fold), task, runner, m.config.seed) for m in members]
    total_steps = planned_steps(config, len(batches[0]))
    config = with_warmup(config, total_steps)
    tx, schedule = make_optimizer(config.optim, total_steps)
    states, reference = [], None
    for m in members:
        params = init_params(model, jax.random.fold_in(jax.random.PRNGKey(m.config.seed), 0))
        params, reference = initial_params(params, m.config, shared.init, task, quiet=True)
        states.append(jax.tree.map(np.asarray, create_finetune_state(params, tx)))
    hyper = {
        name: np.array([m.config[key] for m in members], np.float32)
        for name, key in (("lr", "optim.lr"), ("l2", "l2.weight"), ("mlm", "joint_mlm.weight"))
    }
    population = Population(jax.tree.map(lambda *xs: np.stack(xs), *states), hyper, reference)
    setup = PopulationSetup(
        finetune_setup(config, model, tx, schedule, task, params, masking), config.optim, total_steps
    )
    step = runner.compile(functools.partial(population_step, setup=setup))
    rngs = np.stack([np.asarray(jax.random.PRNGKey(m.config.seed)) for m in members])
    population, rngs = runner.put_replicated(population), runner.put_replicated(rngs)
    streams = [b.stream(0) for b in batches]
    first = [step_inputs(next(s))[1] for s in streams]
    widest = max(b.widths[-1] if b.layout == "bucketed" else task.seq_len for b in batches)
    step, peak = _checked_program(
        step, population, population_batch(first, task.kind, widest), rngs, len(members), runner, setup, log
    )

    def stream():
        yield population_batch(first, task.kind)
        while True:
            yield population_batch([step_inputs(next(s))[1] for s in streams], task.kind)

    return PopulationRun(setup, step, population, rngs, stream(), total_steps, peak)


def train_population(members: list[Member], shared: SweepData, runner: Runner, log=print) -> tuple[list[dict], Any]:
    """Trains members (one group: the same static settings and steps) together; returns each
    member's scores and the members' final parameters (stacked, on the host)."""
    config, task = members[0].config, shared.task
    run = start_population(members, shared, runner, log)
    population, total_steps = run.state, run.total_steps
    start = time.perf_counter()
    device_batches = prefetch((runner.put_global_batch(batch) for batch in run.batches), ahead=2)
    try:
        with StopRequest() as stop:
            for number in range(1, total_steps + 1):
                population, metrics = run.step(population, next(device_batches), run.rngs)
                if number % config.log_every == 0 or number == total_steps:
                    losses = runner.get(metrics)["loss"]
                    log(f"step {number}/{total_steps}: loss {losses.min():.4f} to {losses.max():.4f} over the members")
                if stop.agreed(number % config.log_every == 0):
                    raise stop.stopped(number, "the populations finished before this one are kept (members.jsonl)")
    finally:
        device_batches.close()  # stops the prefetching thread
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
        if index is not None:
            logits, labels = [logits[i] for i in index], [labels[i] for i in index]
            if task.kind != "token_classification":
                logits, labels = np.stack(logits), np.stack(labels)
        results.append(
            {
                "member": m.index,
                "setting": m.setting,
                "fold": m.fold,
                "scores": task_scores(task, logits, labels),
                "steps": total_steps,
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
    limit = device_memory(runner.devices[0])
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
    from jft.bench import peak_bytes

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
    single = _peak(step.lower(runner.put_replicated(one), runner.put_global_batch(one_batch), rngs).compile())
    per_member = max((peak - single) / max(members - 1, 1), 1)
    largest = int((limit - single) // per_member) + 1 if single <= limit else 0
    need = f"a population of {members} members needs {peak / GIB:.2f} GiB a device, more than its {limit / GIB:.2f} GiB"
    if largest < 1:
        return f"{need}, and one member alone needs {single / GIB:.2f} GiB: use a smaller batch_size or model."
    return f"{need}; about {largest} fit: set sweep.population={largest} (groups larger than that run in parts)."


def sweep_data(config: ConfigDict) -> SweepData:
    """The task, its data (with each training example's fold), tokenizer, model and init_from
    that every member of config's sweep shares."""
    task, metric, records = read_task(config)
    metric = config.sweep.metric or metric
    if metric not in task.metrics() or metric == "mse":
        choices = [name for name in task.metrics() if name != "mse"]
        raise JftError(f"sweep.metric '{metric}' is not a score of this task; choose one of {choices}.")
    init = rundir.open_init(config.init_from) if config.init_from else None
    tokenizer = task_tokenizer(config, None, Path(), init)
    model_cfg, _ = rundir.run_model(config.model, None, init, tokenizer.get_vocab_size())
    data = encode_splits(task, tokenizer, model_cfg, records)
    folds = fold_ids(len(data["train"]), config.sweep.folds, config.seed) if config.sweep.folds else None
    return SweepData(task, metric, tokenizer, model_cfg, data, init, folds)


def run_sweep(config: ConfigDict, workdir: str | Path) -> dict:
    """Runs (or resumes) the sweep of config in workdir; returns the best grid point's row of the
    table with the final metrics of its run directory (best_run/)."""
    members = plan(config)
    runner = Runner.start(config.parallel)
    workdir = Path(workdir).absolute()
    for member in members:
        runner.check_batch(member.config.batch_size, member.config.accum_steps)
    with rundir.hold(workdir):
        shared = sweep_data(config)
        identity = {split: source_identity(config.data[split]) for split in ("train", "eval") if config.data[split]}
        _hold_settings(workdir, config, identity)
        metric = shared.metric
        done = _read_members(workdir)
        chunks = _populations(members, shared, runner, config.sweep.population)
        for number, chunk in enumerate(chunks, 1):
            if all(m.index in done for m in chunk):
                continue
            print(f"sweep: population {number} of {len(chunks)}, {len(chunk)} members", flush=True)
            log = functools.partial(print, f"sweep: population {number}:", flush=True)
            results, _ = train_population(chunk, shared, runner, log)
            done.update((result["member"], result) for result in results)
            if jax.process_index() == 0:
                with (workdir / "members.jsonl").open("a") as f:
                    f.writelines(json.dumps(result) + "\n" for result in results)
        table = results_table([done[m.index] for m in members], metric)
        if jax.process_index() == 0:
            (workdir / "sweep.jsonl").write_text("".join(json.dumps(row) + "\n" for row in table))
            print(format_table(table, metric), flush=True)
            plot(table, metric, workdir / "sweep.png")
    best = table[0]
    best_config = config.copy_and_resolve_references()
    seeds = config.sweep.grid.get("seed")
    apply_overrides(best_config, [f"{key}={value}" for key, value in best["setting"].items()])
    if seeds:
        best_config.seed = seeds[0]
    best_config.sweep = sweep_config()
    where = workdir / BEST_RUN
    print(f"sweep: best {metric} {best['mean']:.4f} at {best['setting']}; training it on all of data.train in {where}")
    return {**best, "run": train_and_evaluate(best_config, workdir / BEST_RUN)}


def _hold_settings(workdir: Path, config: ConfigDict, identity: dict) -> None:
    """Writes sweep.json for a new sweep; a resumed one must have the same settings and data."""
    path = workdir / "sweep.json"
    current = {"config": config.to_dict(), "data": identity}
    if path.is_file():
        saved = json.loads(path.read_text())
        differences = rundir.config_differences(saved["config"], current["config"], MAY_CHANGE_ON_RESUME)
        differences += [
            f"data.{split}: not the data the sweep was started with (by content)"
            for split in identity
            if saved["data"].get(split) != identity[split]
        ]
        if differences:
            raise JftError(
                f"{workdir} holds a sweep with other settings ({'; '.join(differences)}). Resume it with the "
                "settings it was started with (its sweep.json), or give the new sweep another --workdir."
            )
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(current, indent=1, default=str))
        temporary.replace(path)


def _read_members(workdir: Path) -> dict[int, dict]:
    """The members finished before a stop, by index (a line cut short by the stop is left out)."""
    path = workdir / "members.jsonl"
    done = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[result["member"]] = result
    return done


def _populations(members: list[Member], shared: SweepData, runner: Runner, most: int) -> list[list[Member]]:
    """The members in groups of the same static settings and steps, each cut into parts of at
    most `most` members (0: no limit), in grid order."""
    groups: dict[str, list[Member]] = {}
    for m in members:
        batches = task_batches(m.config, shared.training(m.fold), shared.task, runner, m.config.seed)
        groups.setdefault(_group_key(m, planned_steps(m.config, len(batches))), []).append(m)
    size = most or len(members)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def results_table(results: list[dict], metric: str) -> list[dict]:
    """Each grid point's metric over its folds and seeds: mean, standard deviation (n-1), n and the
    values, best first (ties: grid order)."""
    points: dict[str, dict] = {}
    for result in results:
        setting = {k: v for k, v in result["setting"].items() if k != "seed"}
        key = json.dumps(setting, sort_keys=True)
        points.setdefault(key, {"setting": setting, "values": [], "members": []})
        points[key]["values"].append(result["scores"][metric])
        points[key]["members"].append(result["member"])
    rows = []
    for point in points.values():
        values = np.array(point["values"], float)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append({**point, "metric": metric, "mean": float(values.mean()), "std": std, "n": len(values)})
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["mean"], i))
    return [rows[i] for i in order]


def format_table(table: list[dict], metric: str) -> str:
    """The table as aligned text, best first."""
    keys = list(table[0]["setting"])
    header = [*keys, f"{metric} mean", "std", "n"]
    lines = [
        [*(str(row["setting"][k]) for k in keys), f"{row['mean']:.4f}", f"{row['std']:.4f}", str(row["n"])]
        for row in table
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *lines])


def plot(table: list[dict], metric: str, path: Path) -> None:
    """sweep.png: the metric (mean ± std over folds and seeds) against each swept key's values,
    one panel a key; the best point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(table[0]["setting"]) or ["seed"]
    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for axis, key in zip(axes[0], keys):
        values = [row["setting"].get(key, "") for row in table]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ticks = sorted(set(values), key=lambda v: (str(type(v)), v))
        x = values if numeric else [ticks.index(v) for v in values]
        axis.errorbar(x, [r["mean"] for r in table], yerr=[r["std"] for r in table], fmt="o", alpha=0.7)
        axis.plot([x[0]], [table[0]["mean"]], "*", markersize=14, color="tab:red", label="best")
        if numeric and all(v > 0 for v in values) and max(values) / min(values) >= 10:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(range(len(ticks)), [str(t) for t in ticks])
        axis.set_xlabel(key)
        axis.set_ylabel(metric)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

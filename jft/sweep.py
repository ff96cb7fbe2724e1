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

import functools
import itertools
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from jft import plots
from jft.config import apply_overrides, leaf_keys, value_at
from jft.data.corpus import source_identity
from jft.defaults import SWEEP as SWEEP_KEYS
from jft.defaults import build
from jft.errors import JftError, choices
from jft.files import appended_records, cut_torn_line, read_json_object, write_text
from jft.finetune import train_and_evaluate
from jft.models import get as get_family
from jft.population import Member, SweepData, train_population
from jft.tasks.finetuning import (
    check_settings,
    check_text_joint_data,
    encode_splits,
    image_joint_classes,
    planned_steps,
    read_task,
    resolve_reference,
    task_batches,
    task_tokenizer,
)
from jft.tasks.images import joint_images, read_image_task
from jft.tasks.metrics import one_class, one_class_advice
from jft.tasks.records import Windows
from jft.train.lock import hold
from jft.train.parallel import Runner
from jft.train.rundir import InitSource, open_init
from jft.train.session import check_init_family, config_differences, new_model

# Settings a member of a population may have of its own: arrays of one value a member.
ARRAY_KEYS = ("optim.lr", "l2.weight", "joint_mlm.weight", "seed")
# Keys that are not settings of a model, so not for a grid.
NOT_SWEPT = (
    "sweep",
    "parallel",
    "progress",
    "log_every",
    "keep_checkpoints",
    "guard",
    "data.train",
    "data.eval",
    "data.test",
)
# Settings a resumed sweep may change.
MAY_CHANGE_ON_RESUME = (
    "sweep.population",
    "parallel",
    "progress",
    "log_every",
    "eval_batch_size",
    "keep_checkpoints",
    "guard",
)
BEST_RUN = "best_run"
MEMBERS = "members.jsonl"  # each member's scores, a line a member, appended as populations finish


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
        if key == "task":
            raise JftError(
                "sweep.grid: 'task' cannot be swept: a sweep compares the scores of one task; run one sweep a task."
            )
        if key not in valid:  # apply_overrides names the nearest key
            apply_overrides(config.copy_and_resolve_references(), [f"{key}=0"])
        if not isinstance(values, (list, tuple)) or not values:
            raise JftError(f"sweep.grid['{key}'] must be a non-empty list of values, got {values!r}.")
        grid[key] = values = [_parsed(config, key, value) for value in values]
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if repeated:  # two identical runs would count as two measurements of the point
            raise JftError(
                f"sweep.grid['{key}'] repeats {', '.join(repeated)}: give each value once (to repeat a point, "
                "sweep seed, e.g. 'seed': [0, 1, 2])."
            )
    members = []
    for combination in itertools.product(*grid.values()):
        setting = dict(zip(grid, combination))
        member_config = config.copy_and_resolve_references()
        apply_overrides(member_config, [f"{key}={value}" for key, value in setting.items()])
        try:
            check_settings(member_config)
        except JftError as error:
            raise JftError(f"sweep.grid point {setting}: {error}") from None
        member_config = resolve_reference(member_config)
        for fold in range(folds) if folds else [None]:
            members.append(Member(len(members), setting, fold, member_config))
    return members


def _parsed(config: ConfigDict, key: str, value):
    """A grid value as the config takes it (the text '16' for an integer key is 16): so it is
    recorded, shown and compared; an error names the grid key."""
    trial = config.copy_and_resolve_references()
    try:
        apply_overrides(trial, [f"{key}={value}"])
    except JftError as error:
        raise JftError(f"sweep.grid['{key}'] value {value!r}: {error}") from None
    return value_at(trial, key)


def fold_ids(examples: int, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each training example: a shuffle dealt round, so each example is
    held out exactly once and the folds differ in size by at most one."""
    order = np.random.default_rng([seed, 1]).permutation(examples)
    ids = np.empty(examples, np.int64)
    ids[order] = np.arange(examples) % folds
    return ids


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


# data settings each member's batches read for themselves (task_batches), not sweep_data
BATCHING_KEYS = ("layout", "buckets", "max_segments")


def _data_key(config: ConfigDict) -> str:
    """What sweep_data reads of a member's config (init_from, the model, the data's settings but
    its batching, question answering's spans, the joint objective's data): members equal in it
    share their SweepData."""
    data = {name: value for name, value in config.data.to_dict().items() if name not in BATCHING_KEYS}
    parts = {"init_from": config.init_from, "model": config.model.to_dict(), "data": data, "qa": config.qa.to_dict()}
    return json.dumps({**parts, "joint": config.joint_mlm.data}, sort_keys=True, default=str)


def group_data(members: list[Member], config: ConfigDict) -> dict[str, SweepData]:
    """Each group's shared data (sweep_data), by _data_key: members whose grid point sets the
    data's settings, the model or init_from (data.seq_len, model.hidden_dropout_prob, init_from,
    ...) read, encode and load their own; all of them before any training, so that a grid point
    that cannot be read stops the sweep before it starts. Folds are dealt by config's seed."""
    shared: dict[str, SweepData] = {}
    inits: dict[str, InitSource] = {}  # each init_from opened once
    for member in members:
        key = _data_key(member.config)
        if key not in shared:
            try:
                shared[key] = sweep_data(member.config, config.seed, inits)
            except JftError as error:
                if key == _data_key(config):  # the base config's own data: no grid point to name
                    raise
                raise JftError(f"sweep.grid point {member.setting}: {error}") from None
    return shared


def sweep_data(config: ConfigDict, fold_seed: int | None = None, inits: dict | None = None) -> SweepData:
    """The task, its data (with each training example's fold, dealt by fold_seed, else config's
    seed), tokenizer, model and init_from that the members of config's group share; an image
    model's data are its images at its side. inits: init_from's opened so far, by path (reused)."""
    inits = {} if inits is None else inits
    if config.init_from and config.init_from not in inits:
        inits[config.init_from] = open_init(config.init_from)
    init = inits[config.init_from] if config.init_from else None
    if init is not None:
        check_init_family(init, config.model.get("family", ""))
    joint, joint_classes = None, []
    if (init.family if init else get_family(config.model.family or "bert")).modality == "image":
        tokenizer = None
        family, model = new_model(config.model, None, init)
        task, metric, data = read_image_task(config, model.image_size)
        most = config.copy_and_resolve_references()  # μ·L_pre's images, when any member has μ > 0
        most.joint_mlm.weight = max([most.joint_mlm.weight, *dict(config.sweep.grid).get("joint_mlm.weight", [])])
        joint_classes = image_joint_classes(most, init)
        joint = joint_images(config, joint_classes, model.image_size)
    else:
        check_text_joint_data(config)
        task, metric, records = read_task(config, init and init.task)
        tokenizer = task_tokenizer(config, None, init)
        family, model = new_model(config.model, tokenizer, init)
        data = encode_splits(task, tokenizer, family, model, records)
    metric = config.sweep.metric or metric
    if metric not in task.metrics() or metric == "mse":
        scores = [name for name in task.metrics() if name != "mse"]
        raise JftError(f"sweep.metric '{metric}' is not a score of this task; choose one of {choices(scores)}.")
    # a question's windows stay in one fold (question answering), else each example is its own
    grouped = np.array(data["train"].questions) if isinstance(data["train"], Windows) else None
    examples = len(data["train"].ids) if grouped is not None else len(data["train"])
    if config.sweep.folds > examples:
        raise JftError(
            f"sweep.folds={config.sweep.folds} holds out each training example once, in one of {config.sweep.folds} "
            f"folds, and data.train has {examples} examples; use at most that many folds, or more data."
        )
    fold_seed = config.seed if fold_seed is None else fold_seed
    folds = fold_ids(examples, config.sweep.folds, fold_seed) if config.sweep.folds else None
    if folds is not None and grouped is not None:
        folds = folds[grouped]
    return SweepData(task, metric, tokenizer, family, model, data, init, folds, joint, joint_classes)


def data_identity(config: ConfigDict, shared: SweepData, split: str) -> dict:
    """What a split is, by content: its file's (text), or its images' (jft.tasks.images)."""
    data = shared.data[split]
    return data.identity() if hasattr(data, "identity") else source_identity(config.data[split])


def run_sweep(config: ConfigDict, workdir: str | Path) -> dict:
    """Runs (or resumes) the sweep of config in workdir; returns the best grid point's row of the
    table with the final metrics of its run directory (best_run/)."""
    workdir = Path(workdir).absolute()
    config = _with_reference(config, workdir)
    members = plan(config)
    runner = Runner.start(config.parallel)
    for member in members:
        runner.check_batch(member.config.batch_size, member.config.accum_steps)
    with hold(workdir):
        groups = group_data(members, config)
        shared = groups[_data_key(members[0].config)]  # data.train and data.eval: every group's
        identity = {split: data_identity(config, shared, split) for split in ("train", "eval") if config.data[split]}
        if shared.joint is not None:
            identity["joint"] = shared.joint.identity()
        opened = {id(group.init): group.init for group in groups.values() if group.init is not None}
        inits = sorted({init.weights_sha256() for init in opened.values()})
        weights = "+".join(inits) or None  # init_from by its weights (each init_from's, where the grid sets it)
        _hold_settings(workdir, config, identity, weights)
        metric = shared.metric
        done = _read_members(workdir)
        chunks = _populations(members, groups, config.sweep.population)
        for number, chunk in enumerate(chunks, 1):
            if all(m.index in done for m in chunk):
                continue
            print(f"sweep: population {number} of {len(chunks)}, {len(chunk)} members", flush=True)
            log = functools.partial(print, f"sweep: population {number}:", flush=True)
            results, _ = train_population(chunk, groups[_data_key(chunk[0].config)], runner, log)
            done.update((result["member"], result) for result in results)
            if jax.process_index() == 0:
                cut_torn_line(workdir / MEMBERS)
                with (workdir / MEMBERS).open("a") as f:
                    f.writelines(json.dumps(result) + "\n" for result in results)
        table = results_table([done[m.index] for m in members], metric)
        if jax.process_index() == 0:
            write_text(workdir / "sweep.jsonl", "".join(json.dumps(row) + "\n" for row in table))
            print(format_table(table, metric, {"l2.reference": config.l2.reference}), flush=True)
            for line in table_notes(table, [done[m.index] for m in members], config.l2.reference):
                print(line, file=sys.stderr if line.startswith("warning") else sys.stdout, flush=True)
            plots.sweep(table, metric, workdir / "sweep.png")
    best = table[0]
    best_config = config.copy_and_resolve_references()
    seeds = config.sweep.grid.get("seed")
    apply_overrides(best_config, [f"{key}={value}" for key, value in best["setting"].items()])
    if seeds:
        best_config.seed = seeds[0]
    best_config.sweep = build(SWEEP_KEYS).sweep
    where = workdir / BEST_RUN
    print(f"sweep: best {metric} {best['mean']:.4f} at {best['setting']}; training it on all of data.train in {where}")
    return {**best, "run": train_and_evaluate(best_config, where, runner)}


def _with_reference(config: ConfigDict, workdir: Path) -> ConfigDict:
    """config with l2.reference=auto resolved as the sweep in workdir recorded it, or as a run of
    config would (resolve_reference); where the grid sets init_from, auto is left for each member
    (plan): L2-SP for a member that starts from weights, as its own run."""
    recorded = _recorded_reference(workdir)
    if recorded or "init_from" not in config.sweep.grid:
        return resolve_reference(config, recorded)
    return config


def _hold_settings(workdir: Path, config: ConfigDict, identity: dict, weights: str | None) -> None:
    """Writes sweep.json for a new sweep; a resumed one must have the same settings and data, and
    init_from the same model by its weights (`weights`: their SHA-256; a sweep may move with it)."""
    path = workdir / "sweep.json"
    current = {"config": config.to_dict(), "data": identity, "init_weights": weights}
    if path.is_file():
        saved = read_json_object(path, "the sweep's settings")
        by_weights = ("init_from",) if "init_weights" in saved else ()  # a sweep of a jft before: by its path
        differences = config_differences(saved["config"], current["config"], MAY_CHANGE_ON_RESUME + by_weights)
        differences += [
            f"data.{split}: not the data the sweep was started with (by content)"
            for split in identity
            if saved["data"].get(split) != identity[split]
        ]
        if by_weights and saved["init_weights"] != weights:
            now = config.init_from or "none"
            differences.append(f"init_from: not the model the sweep started from (by its weights), now {now}")
        if differences:
            raise JftError(
                f"{workdir} holds a sweep with other settings ({'; '.join(differences)}). Resume it with the "
                "settings it was started with (its sweep.json), or give the new sweep another --workdir."
            )
    elif jax.process_index() == 0:
        write_text(path, json.dumps(current, indent=1, default=str))


def _recorded_reference(workdir: Path) -> str | None:
    """The l2.reference a sweep in workdir was started with (its sweep.json), or None."""
    path = workdir / "sweep.json"
    if not path.is_file():
        return None
    return read_json_object(path, "the sweep's settings").get("config", {}).get("l2", {}).get("reference")


def _read_members(workdir: Path) -> dict[int, dict]:
    """The members finished before a stop, by index (a line cut short by the stop is left out)."""
    results = appended_records(workdir / MEMBERS, ("member",), warn=jax.process_index() == 0)
    return {result["member"]: result for result in results}


def _populations(members: list[Member], data: dict[str, SweepData], most: int) -> list[list[Member]]:
    """The members in groups of the same static settings and steps, each cut into parts of at
    most `most` members (0: no limit), in grid order; data: each group's (group_data)."""
    groups: dict[str, list[Member]] = {}
    for m in members:
        shared = data[_data_key(m.config)]
        batches = task_batches(m.config, shared.training(m.fold), shared.task, m.config.seed)
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


def table_notes(table: list[dict], results: list[dict], l2_reference: str) -> list[str]:
    """What a reader of the table should know: grid points whose every member predicts one class
    (a warning, its advice for the sweep's l2.reference), and best grid points that tie exactly or
    within the best's standard error, with the rule that chose among them."""
    scores = {result["member"]: result["scores"] for result in results}
    notes = []
    collapsed = [row for row in table if all(one_class(scores[member]) for member in row["members"])]
    if collapsed:
        settings = "; ".join(str(row["setting"]) for row in collapsed)
        advice = one_class_advice(l2_reference)
        notes.append(f"warning: sweep: {len(collapsed)} of {len(table)} grid points: {advice} ({settings})")
    best, metric = table[0], table[0]["metric"]
    error = best["std"] / math.sqrt(best["n"])
    tied = [row for row in table[1:] if row["mean"] == best["mean"]]
    close = [row for row in table[1:] if best["mean"] - error <= row["mean"] < best["mean"]]
    if tied:
        notes.append(
            f"sweep: {len(tied) + 1} grid points tie at the best {metric} {best['mean']:.4f}; the first in grid "
            f"order is taken: {best['setting']}"
        )
    if close:
        notes.append(
            f"sweep: {len(close)} more grid points are within one standard error ({error:.4f}) of the best "
            f"{metric}: {'; '.join(str(row['setting']) for row in close)}; more folds or seeds would tell them apart"
        )
    return notes


def format_table(table: list[dict], metric: str, fixed: dict | None = None) -> str:
    """The table as aligned text, best first; fixed: settings every row shares, shown as columns
    too where the grid does not sweep them (l2.reference beside l2.weight)."""
    fixed = {key: value for key, value in (fixed or {}).items() if key not in table[0]["setting"]}
    keys = list(table[0]["setting"])
    header = [*keys, *fixed, f"{metric} mean", "std", "n"]
    lines = [
        [*(str(row["setting"][k]) for k in keys), *map(str, fixed.values())]
        + [f"{row['mean']:.4f}", f"{row['std']:.4f}", str(row["n"])]
        for row in table
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *lines])

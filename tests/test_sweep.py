"""`jft sweep`: a population's members against standalone fine-tuning runs, folds, devices, the
table and best run, resume, and bad input."""

import csv
import json
import os
import signal

import jax
import numpy as np
import pytest

from conftest import TINY_MODEL, set_keys, write_topic_task, write_vocab
from jft import cli, population, sweep
from jft.config import apply_overrides
from jft.errors import JftError, RunStopped
from jft.finetune import default_config, train_and_evaluate
from jft.params import flatten
from jft.tasks.predictor import FinetunedModel
from jft.train.parallel import Runner


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-task")
    return {
        "train": write_topic_task(root / "train.csv", 48, seed=0),
        "eval": write_topic_task(root / "dev.csv", 24, seed=1),
        "vocab": write_vocab(root / "vocab.txt"),
    }


def _config(files, grid, **changes):
    """A tiny fine-tuning from scratch (hidden dropout on, so members' dropout streams count)."""
    config = default_config()
    config.data.train, config.data.eval, config.data.vocab = map(str, (files["train"], files["eval"], files["vocab"]))
    config.data.seq_len, config.batch_size, config.epochs, config.log_every, config.progress = 32, 8, 2, 100, False
    for key, value in {**TINY_MODEL, "hidden_dropout_prob": 0.1}.items():
        config.model[key] = value
    config.optim.lr = 1e-3
    config.sweep.grid = grid
    set_keys(config, changes)
    return config


def _standalone(config, workdir, setting, **data):
    """`jft finetune` with one member's settings (and other data files): its last weights and scores."""
    config = config.copy_and_resolve_references()
    apply_overrides(config, [f"{key}={value}" for key, value in setting.items()])
    for split, path in data.items():
        config.data[split] = str(path)
    evaluation = config.data.eval
    config.data.eval = ""  # no evaluation during training: best/ holds the last weights
    config.parallel.backend = "jit"  # one device, as the population's
    train_and_evaluate(config, workdir)
    model = FinetunedModel(workdir)
    return model.params, model.evaluate(evaluation)


def _largest_difference(a, b) -> float:
    flat_a, flat_b = flatten(a), flatten(b)
    assert flat_a.keys() == flat_b.keys()
    return max(float(np.max(np.abs(np.asarray(flat_a[k]) - np.asarray(flat_b[k])))) for k in flat_a)


def _member(params, k):
    return jax.tree.map(lambda x: x[k], params)


def test_members_end_where_standalone_runs_with_their_settings_end(task_files, tmp_path):
    grid = {"optim.lr": [1e-3, 3e-3], "l2.weight": [0.0, 0.05], "seed": [0, 1]}
    config = _config(task_files, grid, **{"l2.reference": "zero"})
    members = sweep.plan(config)
    assert len(members) == 8
    results, params = population.train_population(members, sweep.sweep_data(config), Runner("jit"))
    for k in (0, 7):  # lr 1e-3, λ 0, seed 0; and lr 3e-3, λ 0.05, seed 1
        own_params, own_scores = _standalone(config, tmp_path / f"member{k}", members[k].setting)
        assert _largest_difference(_member(params, k), own_params) < 1e-5
        assert results[k]["scores"] == pytest.approx(own_scores, abs=1e-6)
    assert _largest_difference(_member(params, 0), _member(params, 7)) > 1e-3  # the members did differ


def test_folds_partition_the_training_set_and_a_fold_member_is_a_run_on_its_part(task_files, tmp_path):
    ids = sweep.fold_ids(50, 4, seed=3)
    assert sorted(np.bincount(ids)) == [12, 12, 13, 13]  # every example in one fold, sizes within one
    assert not np.array_equal(ids, sweep.fold_ids(50, 4, seed=4))

    config = _config(task_files, {"optim.lr": [1e-3, 3e-3]}, **{"sweep.folds": 3})
    members = sweep.plan(config)
    assert [(m.setting["optim.lr"], m.fold) for m in members] == [(1e-3, f) for f in range(3)] + [
        (3e-3, f) for f in range(3)
    ]
    shared = sweep.sweep_data(config)
    results, params = population.train_population(members, shared, Runner("jit"))
    # member 4 (lr 3e-3, fold 1) is a run trained on the other folds and scored on fold 1
    with open(task_files["train"]) as f:
        rows = list(csv.DictReader(f))
    for name, keep in (("part.csv", shared.folds != 1), ("held_out.csv", shared.folds == 1)):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.DictWriter(f, ["text", "label"])
            writer.writeheader()
            writer.writerows(row for row, kept in zip(rows, keep) if kept)
    own_params, own_scores = _standalone(
        config, tmp_path / "fold1", members[4].setting, train=tmp_path / "part.csv", eval=tmp_path / "held_out.csv"
    )
    assert _largest_difference(_member(params, 4), own_params) < 1e-5
    assert results[4]["scores"] == pytest.approx(own_scores, abs=1e-6)

    table = sweep.results_table(results, "accuracy")
    for row in table:
        values = [r["scores"]["accuracy"] for r in results if r["setting"] == row["setting"]]
        assert row["n"] == 3 and row["mean"] == pytest.approx(np.mean(values))
        assert row["std"] == pytest.approx(np.std(values, ddof=1))
    assert table[0]["mean"] >= table[1]["mean"]


def test_the_table_shows_the_reference_beside_lambda_and_auto_resolves_per_member():
    rows = [{"setting": {"l2.weight": 0.1}, "mean": 0.9, "std": 0.01, "n": 3}]
    header, line = sweep.format_table(rows, "accuracy", {"l2.reference": "init"}).splitlines()
    assert header.split() == ["l2.weight", "l2.reference", "accuracy", "mean", "std", "n"]
    assert line.split() == ["0.1", "init", "0.9000", "0.0100", "3"]
    swept = [{"setting": {"l2.reference": "zero"}, "mean": 0.9, "std": 0.0, "n": 3}]
    assert sweep.format_table(swept, "accuracy", {"l2.reference": "init"}).split()[:3] == [
        "l2.reference",
        "accuracy",
        "mean",
    ]
    config = default_config()
    config.init_from, config.data.train, config.data.eval = "runs/pretrained", "train.csv", "dev.csv"
    config.sweep.grid = {"l2.reference": ["auto", "zero"], "l2.weight": [0.1]}
    assert [m.config.l2.reference for m in sweep.plan(config)] == ["init", "zero"]


@pytest.mark.parametrize("shard_state", ["none", "all"])
def test_a_population_over_eight_devices_is_the_population_on_one(task_files, shard_state):
    """With shard_state=all the members' parameters, moments and θ_ref are split over the devices."""
    config = _config(task_files, {"optim.lr": [1e-3, 3e-3], "seed": [0, 1]}, **{"model.hidden_dropout_prob": 0.0})
    config.batch_size, config.epochs, config.data.layout = 16, 1, "padded"
    members, shared = sweep.plan(config), sweep.sweep_data(config)
    one, one_params = population.train_population(members, shared, Runner("jit"))
    eight, eight_params = population.train_population(members, shared, Runner("shard_map", shard_state=shard_state))
    assert len(jax.devices()) == 8
    assert _largest_difference(one_params, eight_params) < 5e-6
    assert [r["scores"] for r in one] == pytest.approx([r["scores"] for r in eight], abs=1e-6)


def test_grid_points_that_set_the_data_or_the_model_train_on_their_own(task_files, tmp_path):
    """data.seq_len and a model field in the grid (the base config: 32 tokens, dropout 0.1): each
    grid point's members read, encode and build their own, and end where their own runs end."""
    grid = {"data.seq_len": [8, 32], "model.hidden_dropout_prob": [0.0, 0.1]}
    config = _config(task_files, grid, epochs=1, **{"l2.reference": "zero"})
    members = sweep.plan(config)
    groups = sweep.group_data(members, config)
    assert len(groups) == 4
    for k in (0, 2):  # 8 tokens without dropout, 32 without
        data = groups[sweep._data_key(members[k].config)]
        results, params = population.train_population([members[k]], data, Runner("jit"))
        own_params, own_scores = _standalone(config, tmp_path / f"member{k}", members[k].setting)
        assert _largest_difference(_member(params, 0), own_params) < 1e-5
        assert results[0]["scores"] == pytest.approx(own_scores, abs=1e-6)
    config.sweep.grid = {**grid, "data.layout": ["padded", "packed"]}  # batching: no data group of its own
    assert len(sweep.group_data(sweep.plan(config), config)) == 4
    # the whole sweep over two groups, each population with its own data
    config.sweep.grid = {"data.seq_len": [8, 32]}
    sweep.run_sweep(config, tmp_path / "sweep")
    lines = (tmp_path / "sweep" / "members.jsonl").read_text().splitlines()
    assert len(lines) == 2 and {json.loads(line)["population"] for line in lines} == {1}


def test_l2_reference_auto_is_each_members_own_where_the_grid_sets_init_from(task_files, tmp_path):
    """l2.reference=auto: a member whose grid point sets init_from pulls toward those weights (L2-SP),
    as its own run would; one from scratch toward 0."""
    config = _config(task_files, {"init_from": ["", "minilm"]}, **{"l2.reference": "auto"})
    members = sweep.plan(sweep._with_reference(config, tmp_path / "sweep"))
    assert [m.config.l2.reference for m in members] == ["zero", "init"]


def test_jft_sweep_tables_plots_keeps_the_best_as_a_run_and_resumes(task_files, tmp_path, capsys):
    workdir = tmp_path / "sweep"
    args = [
        "sweep",
        "--config",
        "finetune/tiny",
        "--workdir",
        str(workdir),
        f"--config.data.train={task_files['train']}",
        f"--config.data.vocab={task_files['vocab']}",
        *(f"--config.model.{key}={value}" for key, value in TINY_MODEL.items()),
        "--config.data.seq_len=32",
        "--config.batch_size=8",
        "--config.epochs=1",
        "--config.data.layout=padded",
        "--config.progress=false",
        "--config.sweep.folds=2",
        "--config.sweep.grid={'optim.lr': [1e-3, 1e-2], 'l2.reference': ['zero', 'init']}",
        "--config.sweep.grid.seed=[0, 1]",  # a key added to the grid on its own
        "--config.sweep.population=4",
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    members = [json.loads(line) for line in (workdir / "members.jsonl").read_text().splitlines()]
    assert len(members) == 2 * 2 * 2 * 2 and sorted(m["member"] for m in members) == list(range(16))
    assert {m["population"] for m in members} == {4}  # two groups (θ_ref kinds), each in two parts
    table = [json.loads(line) for line in (workdir / "sweep.jsonl").read_text().splitlines()]
    assert len(table) == 4 and all(row["n"] == 4 for row in table)  # 2 folds × 2 seeds a point
    for row in table:
        values = [m["scores"]["accuracy"] for m in members if m["member"] in row["members"]]
        assert row["mean"] == pytest.approx(np.mean(values))
    assert (workdir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy mean" in out and "best accuracy" in out
    best = json.loads((workdir / "best_run" / "run.json").read_text())["config"]
    assert best["optim"]["lr"] == table[0]["setting"]["optim.lr"]
    assert best["l2"]["reference"] == table[0]["setting"]["l2.reference"] and best["sweep"]["grid"] == {}
    assert cli.main(["eval", "--workdir", str(workdir / "best_run"), "--data", str(task_files["eval"])]) == 0

    # a second start finds every member done and the best run finished: nothing is trained again
    assert cli.main(args) == 0
    assert "population 1 of" not in capsys.readouterr().out
    assert len((workdir / "members.jsonl").read_text().splitlines()) == 16
    # and a resume with another grid is refused
    assert cli.main([*args[:-1], "--config.sweep.folds=3"]) != 0
    assert "sweep.folds: run 2, now 3" in capsys.readouterr().err


def test_grid_values_are_recorded_as_the_config_takes_them(task_files):
    members = sweep.plan(_config(task_files, {"batch_size": ["16"], "optim.lr": ["1e-4", 3e-4]}))
    assert [m.setting for m in members] == [{"batch_size": 16, "optim.lr": 1e-4}, {"batch_size": 16, "optim.lr": 3e-4}]
    assert [m.config.batch_size for m in members] == [16, 16]


@pytest.mark.parametrize(
    "grid, expected",
    [
        ({"optim.lrate": [1e-3]}, "unknown config key 'optim.lrate'. Did you mean 'optim.lr'?"),
        ({}, "sweep.grid is empty"),
        ({"optim.lr": ["fast"]}, "sweep.grid['optim.lr'] value 'fast': 'optim.lr' takes a number"),
        ({"optim.lr": 1e-3}, "sweep.grid['optim.lr'] must be a non-empty list of values"),
        ({"optim.lr": [-1.0]}, "optim.lr must be a positive number"),
        ({"parallel.backend": ["jit"]}, "'parallel.backend' is not a setting of a model's training"),
        ({"task": ["classification", "regression"]}, "'task' cannot be swept"),
        ({"optim.lr": [None, 1e-3]}, "sweep.grid['optim.lr'] value None: 'optim.lr' takes a number"),
        ({"optim.lr": [1e-3, 3e-3, 1e-3]}, "sweep.grid['optim.lr'] repeats 0.001: give each value once"),
        ({"batch_size": ["8", 8]}, "sweep.grid['batch_size'] repeats 8: give each value once"),
        ({"init_from": ["no-such-run"]}, "sweep.grid point {'init_from': 'no-such-run'}: "),
    ],
)
def test_bad_grids_are_one_line_before_any_training(task_files, tmp_path, grid, expected):
    with pytest.raises(JftError) as error:
        sweep.run_sweep(_config(task_files, grid), tmp_path / "sweep")
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "sweep" / "sweep.json").exists()


def test_a_population_that_does_not_fit_is_refused_with_the_largest_that_does(task_files, tmp_path, monkeypatch):
    config = _config(task_files, {"optim.lr": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3, 8e-3]}, epochs=1)
    config.parallel.backend, config.data.layout = "jit", "padded"
    peaks, real_peak = [], population._peak
    monkeypatch.setattr(population, "_peak", lambda compiled: peaks.append(real_peak(compiled)) or peaks[-1])
    limit = {"bytes": 1}
    monkeypatch.setattr(population, "device_memory", lambda device: limit["bytes"])
    with pytest.raises(JftError, match=r"a population of 8 members needs .*and one member alone needs"):
        sweep.run_sweep(config, tmp_path / "sweep")
    full, single = peaks  # XLA's counts for 8 members and for 1
    # a limit between the need of 5 members and of 6, by the linear estimate from 1 and 8
    limit["bytes"] = int(single + 4.5 * (full - single) / 7)
    with pytest.raises(JftError, match=r"a population of 8 members needs .*; about 5 fit: set sweep.population=5"):
        sweep.run_sweep(config, tmp_path / "sweep")
    assert not (tmp_path / "sweep" / "members.jsonl").exists()
    config.sweep.population, limit["bytes"] = 5, 1 << 40
    assert sweep.run_sweep(config, tmp_path / "sweep")["n"] == 1
    assert {json.loads(line)["population"] for line in (tmp_path / "sweep" / "members.jsonl").open()} == {5, 3}


def test_a_stopped_sweep_keeps_its_finished_populations_and_resumes_with_the_rest(task_files, tmp_path, monkeypatch):
    config = _config(task_files, {"optim.lr": [1e-3, 2e-3, 3e-3]}, epochs=1, log_every=2)
    config.parallel.backend, config.data.layout, config.sweep.population = "jit", "padded", 2
    workdir, real_train = tmp_path / "sweep", sweep.train_population
    calls = []

    def train(members, shared, runner, log=print):
        calls.append([m.index for m in members])

        def log_then_stop(line):  # SIGTERM at the second population's first step line
            if line.startswith("step"):
                os.kill(os.getpid(), signal.SIGTERM)

        return real_train(members, shared, runner, log_then_stop if len(calls) == 2 else log)

    monkeypatch.setattr(sweep, "train_population", train)
    with pytest.raises(RunStopped) as stopped:
        sweep.run_sweep(config, workdir)
    assert stopped.value.exit_code == 143 and "at step 2; the populations finished before" in str(stopped.value)
    first = (workdir / "members.jsonl").read_text().splitlines()
    assert [json.loads(line)["member"] for line in first] == [0, 1]
    assert sweep.run_sweep(config, workdir)["n"] == 1
    assert calls == [[0, 1], [2], [2]]  # the second start trains only the population not yet written
    assert (workdir / "members.jsonl").read_text().splitlines()[:2] == first


def test_question_answering_folds_keep_a_questions_windows_together_and_a_member_is_its_run(tmp_path):
    """k-fold on SQuAD-format data whose contexts need several windows: every window of a question
    is in its question's fold, and a fold member ends where `jft finetune` on the other folds'
    questions ends, with the same exact match and F1 on its held-out questions."""
    from jft.data.synthetic import write_qa_task

    squad = json.loads(write_qa_task(tmp_path / "qa.json", 12, seed=5).read_text())
    files = {"train": tmp_path / "qa.json", "eval": tmp_path / "qa.json", "vocab": write_vocab(tmp_path / "vocab.txt")}
    config = _config(files, {"optim.lr": [1e-3]}, **{"sweep.folds": 2, "task": "question_answering"})
    set_keys(config, {"data.text_column": "question", "data.text_pair_column": "context"})
    set_keys(config, {"data.label_column": "answers", "data.doc_stride": 8, "best_metric": "f1"})
    shared = sweep.sweep_data(config)
    windows = shared.data["train"]
    assert len(windows) > 20  # several windows a question
    for question in range(12):
        assert len({int(shared.folds[i]) for i, q in enumerate(windows.questions) if q == question}) == 1
    members = sweep.plan(config)
    results, params = population.train_population(members, shared, Runner("jit"))
    assert set(results[1]["scores"]) == {"exact_match", "f1"}
    question_fold = {q: int(shared.folds[i]) for i, q in enumerate(windows.questions)}
    paragraphs = squad["data"][0]["paragraphs"]
    for name, fold_kept in (("part.json", lambda f: f != 1), ("held_out.json", lambda f: f == 1)):
        kept = [p for q, p in enumerate(paragraphs) if fold_kept(question_fold[q])]
        (tmp_path / name).write_text(json.dumps({"data": [{"title": "t", "paragraphs": kept}]}))
    own_params, own_scores = _standalone(
        config, tmp_path / "fold1", members[1].setting, train=tmp_path / "part.json", eval=tmp_path / "held_out.json"
    )
    # float rounding of the vmapped step, which Adam's near-zero gradients grow (1.2e-5 seen); another
    # member's data or masks would differ by about the learning rate, 1e-3
    assert _largest_difference(_member(params, 1), own_params) < 2e-5
    assert results[1]["scores"] == pytest.approx(own_scores, abs=1e-6)


def test_a_multiple_choice_member_ends_where_its_own_run_ends(tmp_path):
    """A population's members hold [rows, candidates, width] batches: a member (on data.eval) is its
    own `jft finetune` run, to the same weights and accuracy."""
    from jft.data.synthetic import write_choice_task

    files = {
        "train": write_choice_task(tmp_path / "train.csv", 24, seed=0),
        "eval": write_choice_task(tmp_path / "dev.csv", 16, seed=1),
        "vocab": write_vocab(tmp_path / "vocab.txt"),
    }
    # Adam's ε 1e-3: a new scorer scores every candidate alike, and Adam's first steps (about ±lr·sign(g))
    # would turn float rounding in the many gradients near 0 into differences of order lr
    config = _config(files, {"optim.lr": [1e-3, 3e-3]}, task="multiple_choice", **{"optim.eps": 1e-3})
    set_keys(config, {"data.text_column": "sent1", "data.text_pair_column": "sent2"})
    set_keys(config, {"data.choice_columns": "ending0,ending1,ending2,ending3"})
    members = sweep.plan(config)
    results, params = population.train_population(members, sweep.sweep_data(config), Runner("jit"))
    own_params, own_scores = _standalone(config, tmp_path / "member1", members[1].setting)
    assert _largest_difference(_member(params, 1), own_params) < 1e-5
    assert results[1]["scores"] == pytest.approx(own_scores, abs=1e-6) and set(own_scores) == {"accuracy"}

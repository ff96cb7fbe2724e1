"""The rules of a start and a resume (jft.train.session), as a user meets them from the command line:
settings compared as run.json holds them, runs made longer in place, θ_ref kept or refused, batches
that do not depend on the devices, and run directories written by an earlier jft."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy

from conftest import REPO, SMALL_PRETRAIN, TINY_MODEL, tensorboard_scalars, write_corpus, write_topic_task, write_vocab
from jft import cli
from jft.errors import JftError
from jft.models import Head
from jft.tasks.batches import TaskBatches
from jft.tasks.records import Encoded
from jft.train.checkpoint import Checkpoints, saved_steps
from jft.train.session import config_differences

pytestmark = pytest.mark.xdist_group("session")  # one worker: the runs are shared

LEGACY = REPO / "tests" / "fixtures" / "runs_694ba27"
PRETRAIN = ["pretrain", "--config", "pretrain/tiny"]
FINETUNE = ["finetune", "--config", "finetune/tiny"]
ONE_DEVICE = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _flags(settings: dict) -> list[str]:
    return [f"--config.{key}={value}" for key, value in settings.items()]


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def _params(directory: Path, step: int, key: str = "train"):
    checkpoints = Checkpoints(directory, read_only=True)
    state, _ = checkpoints.restore(step=step)
    checkpoints.close()
    return state[key]["params"] if key else state["params"]


# Settings compared as run.json holds them.


def test_a_value_does_not_differ_from_itself_after_a_round_trip_through_json():
    saved = json.loads(json.dumps({"grid": {"optim.lr": [1e-4, 3e-4]}, "limit": None, "n": 3}))
    current = {"grid": {"optim.lr": (1e-4, 3e-4)}, "limit": math.nan, "n": 3}
    assert config_differences(saved, current, ()) == []
    assert config_differences(saved, {**current, "n": 4}, ()) == ["n: run 3, now 4"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("session")
    write_topic_task(root / "train.csv", 40, seed=0)
    write_topic_task(root / "dev.csv", 16, seed=1)
    write_vocab(root / "vocab.txt")
    return root


def _finetune(task: Path, workdir: Path, **settings) -> list[str]:
    base = {
        "data.train": task / "train.csv",
        "data.eval": task / "dev.csv",
        "data.vocab": task / "vocab.txt",
        "data.seq_len": 32,
        "batch_size": 8,
        "epochs": 1,
        "progress": False,
        "parallel.backend": "jit",
        **{f"model.{k}": v for k, v in TINY_MODEL.items()},
    }
    return [*FINETUNE, "--workdir", str(workdir), *_flags({**base, **settings})]


def test_a_sweep_with_a_tuple_grid_resumes(task, tmp_path, capsys):
    """A grid given as tuples is saved as lists in sweep.json; the same command again is the same
    sweep, found finished, not one 'with other settings'."""
    command = _finetune(task, tmp_path / "sweep", **{"sweep.grid": "{'optim.lr': (1e-3, 2e-3)}"})
    command[0] = "sweep"
    assert cli.main(command) == 0
    capsys.readouterr()
    assert cli.main(command) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "finished at step" in out and "sweep: population" not in out  # nothing trained again


def test_a_sweep_resumes_with_its_model_moved_and_refuses_another(task, tmp_path, capsys):
    source, other = tmp_path / "source", tmp_path / "other"
    assert cli.main(_finetune(task, source)) == 0
    assert cli.main(_finetune(task, other, seed=1)) == 0

    def sweep(init_from: Path) -> list[str]:
        command = _finetune(task, tmp_path / "sweep", init_from=init_from, **{"sweep.grid": "{'optim.lr': [1e-3]}"})
        return ["sweep", *command[1:]]

    assert cli.main(sweep(source)) == 0
    shutil.move(source, tmp_path / "moved")
    capsys.readouterr()
    assert cli.main(sweep(tmp_path / "moved")) == 0  # the same weights elsewhere: finished, nothing trained
    assert "population 1 of" not in capsys.readouterr().out
    assert cli.main(sweep(other)) == 2
    err = capsys.readouterr().err
    assert f"init_from: not the model the sweep started from (by its weights), now {other}" in err, err


# A run made longer in place.


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("longer")
    write_corpus(root / "corpus.txt", documents=40)
    settings = {**SMALL_PRETRAIN, "data.corpus": root / "corpus.txt", "total_steps": 4, "log_every": 2}
    settings.update({"eval_every": 4, "checkpoint_every": 2, "async_checkpoints": False})
    assert cli.main([*PRETRAIN, "--workdir", str(root / "run"), *_flags(settings)]) == 0
    return root, settings


def test_raising_total_steps_resumes_the_run_and_says_what_the_schedule_does(pretrained, tmp_path, capsys):
    root, settings = pretrained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    capsys.readouterr()
    assert cli.main([*PRETRAIN, "--workdir", str(run), *_flags({**settings, "total_steps": 6})]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("total_steps 4 -> 6"))
    assert "from step 4 on, the learning rate follows the schedule of a 6-step run" in line, line
    assert "resuming at step 4 of 6" in out
    assert saved_steps(run / "checkpoints")[-1] == 6
    assert json.loads((run / "run.json").read_text())["config"]["total_steps"] == 6
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and 5 not in steps[:4]  # the first run's metrics, then the new steps'
    # the same command again: finished at 6, nothing changes
    before = _snapshot(run)
    assert cli.main([*PRETRAIN, "--workdir", str(run), *_flags({**settings, "total_steps": 6})]) == 0
    assert "this run finished at step 6" in capsys.readouterr().out and _snapshot(run) == before


def test_more_epochs_resume_a_fine_tuning_run_and_fewer_than_it_has_done_are_refused(task, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_finetune(task, run, epochs=1)) == 0
    capsys.readouterr()
    assert cli.main(_finetune(task, run, epochs=2)) == 0
    out = capsys.readouterr().out
    assert re.search(r"epochs 1 -> 2: 5 -> 10 steps\. From step 5 on", out), out
    assert "resuming at step 5 of 10" in out and saved_steps(run / "checkpoints") == [5, 10]
    before = _snapshot(run)
    assert cli.main(_finetune(task, run, epochs=2, max_steps=6)) == 2
    err = capsys.readouterr().err
    assert "has reached step 10; epochs 2 and max_steps 6 make 6 steps (it was 10)" in err, err
    assert _snapshot(run) == before


def test_integer_labels_take_the_ids_of_their_numbers_and_a_run_ordered_as_text_resumes_in_its_order(
    task, tmp_path, capsys
):
    """Labels 0..11 in a CSV: class id n is label n (an export's logit n, as HF's datasets count), not
    the text order 0, 1, 10, 11, 2, ...; a run written by a jft that ordered them as text keeps its
    order on resume (its checkpoints' head) instead of being refused, and as init_from (its head kept)."""
    rows = ["text,label"] + [f"this is example {i} of the set,{i % 12}" for i in range(48)]
    (tmp_path / "twelve.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    settings = {"data.train": tmp_path / "twelve.csv", "data.eval": ""}
    assert cli.main(_finetune(task, run, **settings)) == 0
    numbers = [str(n) for n in range(12)]
    assert json.loads((run / "run.json").read_text())["task"]["labels"] == numbers
    assert cli.main(["export", "--workdir", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"] == {n: n for n in numbers}

    as_text = sorted(numbers)  # what an earlier jft recorded
    record = json.loads((run / "run.json").read_text())
    record["task"]["labels"] = as_text
    (run / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli.main(_finetune(task, run, epochs=2, **settings)) == 0
    assert "resuming at step" in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["task"]["labels"] == as_text
    assert cli.main(_finetune(task, tmp_path / "next", init_from=run, **settings)) == 0  # its head, in its order
    assert "not used: init_from's head" not in capsys.readouterr().out
    assert json.loads((tmp_path / "next" / "run.json").read_text())["task"]["labels"] == as_text


def test_a_run_stopped_before_it_saved_anything_starts_anew_with_other_settings(task, tmp_path, capsys):
    """A run stopped (Ctrl-C) before its first checkpoint holds run.json, its tokenizer and the lines it
    logged, and nothing to resume: the command with another learning rate starts it anew rather than
    refusing it for its settings (which no saved step keeps)."""
    run = tmp_path / "run"
    assert cli.main(_finetune(task, run, epochs=2, **{"optim.lr": 1e-3})) == 0  # steps past the new run's too
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "best")  # what a stop before the first epoch's end leaves
    capsys.readouterr()
    assert cli.main(_finetune(task, run, **{"optim.lr": 3e-4})) == 0
    out = capsys.readouterr().out
    assert "its run holds no saved step or best model; starting it anew" in out, out
    assert json.loads((run / "run.json").read_text())["config"]["optim"]["lr"] == 3e-4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records]
    assert steps == sorted(steps) and saved_steps(run / "checkpoints") == [5]  # the old lines dropped
    # and TensorBoard shows only the new attempt's curve (the old events hidden, not mixed in)
    shown = tensorboard_scalars(run / "tensorboard")["train/loss"]
    assert shown == pytest.approx({r["step"]: r["loss"] for r in records if r["split"] == "train"})


def test_a_hugging_face_export_of_a_classifier_keeps_its_head_for_the_same_labels(task, tmp_path, capsys):
    """init_from the export of a jft classifier (config.json's id2label and architecture): the same
    labels keep its trained head (in θ_ref too, for L2-SP), as from the run itself; other labels
    replace it, and the message says so."""
    assert cli.main(_finetune(task, tmp_path / "first")) == 0
    assert cli.main(["export", "--workdir", str(tmp_path / "first"), "--out", str(tmp_path / "hf")]) == 0
    exported = safetensors.numpy.load_file(tmp_path / "hf" / "model.safetensors")
    capsys.readouterr()
    assert cli.main(_finetune(task, tmp_path / "again", init_from=tmp_path / "hf")) == 0
    out = capsys.readouterr().out
    assert "not used: init_from's head" not in out, out
    reference = safetensors.numpy.load_file(tmp_path / "again" / "reference.safetensors")
    np.testing.assert_array_equal(reference["classifier/bias"], exported["classifier.bias"])

    rows = (task / "train.csv").read_text().splitlines()
    (tmp_path / "renamed.csv").write_text("\n".join([rows[0]] + [r + "_b" for r in rows[1:]]) + "\n")
    other = {"init_from": tmp_path / "hf", "data.train": tmp_path / "renamed.csv", "data.eval": ""}
    assert cli.main(_finetune(task, tmp_path / "other", **other)) == 0
    assert "not used: init_from's head (classifier/" in capsys.readouterr().out


def test_a_finished_run_without_its_test_evaluation_does_it_on_the_same_command(task, tmp_path, capsys):
    """A stop after the training loop, before the test evaluation (or data.test given to a finished
    run): the command again evaluates the best model on data.test, without training; then again,
    nothing to do."""
    run = tmp_path / "run"
    assert cli.main(_finetune(task, run)) == 0
    checkpoints = _snapshot(run / "checkpoints")
    capsys.readouterr()
    assert cli.main(_finetune(task, run, **{"data.test": task / "dev.csv"})) == 0
    out = capsys.readouterr().out
    assert "this run finished at step 5; evaluating the best model on data.test" in out, out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "test" and records[-1]["step"] == 5
    last_eval = next(r for r in reversed(records) if r["split"] == "eval")
    assert records[-1]["accuracy"] == last_eval["accuracy"]  # the same data and the same (best) weights
    assert _snapshot(run / "checkpoints") == checkpoints
    before = _snapshot(run)
    assert cli.main(_finetune(task, run, **{"data.test": task / "dev.csv"})) == 0
    assert "this run finished at step 5; nothing to do" in capsys.readouterr().out
    assert _snapshot(run) == before


def test_a_damaged_newest_fine_tuning_checkpoint_falls_back_to_the_epoch_before(task, tmp_path, capsys):
    """keep_checkpoints (2: one an epoch's end) leaves a fine-tuning run the epoch before to resume
    from, which ends where the run that was never damaged ended."""
    finished = tmp_path / "finished"
    assert cli.main(_finetune(task, finished, epochs=2)) == 0
    assert saved_steps(finished / "checkpoints") == [5, 10]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    largest = max((p for p in (run / "checkpoints" / "10").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0x5A for b in data[len(data) // 2 : len(data) // 2 + 8])
    largest.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(_finetune(task, run, epochs=2)) == 0
    captured = capsys.readouterr()
    assert f"set aside as {run}/damaged/checkpoints-10; trying an earlier one" in captured.err
    assert "resuming at step 5 of 10" in captured.out
    for a, b in zip(
        jax.tree.leaves(_params(finished / "checkpoints", 10)),
        jax.tree.leaves(_params(run / "checkpoints", 10)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert cli.main(_finetune(task, tmp_path / "one", keep_checkpoints=1)) == 0
    assert saved_steps(tmp_path / "one" / "checkpoints") == [5]


# θ_ref of an L2-SP run.


def test_an_l2sp_run_without_its_reference_is_refused_and_a_changed_one_too(task, tmp_path, capsys):
    source = tmp_path / "source"
    assert cli.main(_finetune(task, source)) == 0
    run = tmp_path / "run"
    l2sp = {"init_from": source, "l2.reference": "init", "l2.weight": 0.1}
    assert cli.main(_finetune(task, run, **l2sp)) == 0
    reference = (run / "reference.safetensors").read_bytes()
    (run / "reference.safetensors").unlink()
    before = _snapshot(run)
    assert cli.main(_finetune(task, run, **l2sp, epochs=2)) == 2
    err = capsys.readouterr().err
    assert "reference.safetensors is missing: it holds θ_ref" in err and "pull toward 0" in err, err
    assert _snapshot(run) == before
    # the file back, but not the one the run saved: refused too
    changed = bytearray(reference)
    changed[-4:] = bytes(b ^ 0xFF for b in changed[-4:])
    (run / "reference.safetensors").write_bytes(bytes(changed))
    assert cli.main(_finetune(task, run, **l2sp, epochs=2)) == 2
    assert "is not the θ_ref this run saved" in capsys.readouterr().err
    (run / "reference.safetensors").write_bytes(reference)
    assert cli.main(_finetune(task, run, **l2sp, epochs=2)) == 0


def test_a_resume_with_another_init_from_is_refused_and_one_moved_with_the_same_weights_is_not(task, tmp_path, capsys):
    """init_from is compared by its weights, not its path: another model is refused before anything
    is written (it would resume, or say "nothing to do", keeping the first model's θ_ref), the same
    model moved elsewhere resumes."""
    first, other = tmp_path / "first", tmp_path / "other"
    assert cli.main(_finetune(task, first)) == 0
    assert cli.main(_finetune(task, other, seed=1)) == 0
    run = tmp_path / "run"
    assert cli.main(_finetune(task, run, init_from=first, **{"l2.reference": "init"})) == 0
    capsys.readouterr()
    before = _snapshot(run)
    for again in ({}, {"epochs": 2}):
        assert cli.main(_finetune(task, run, init_from=other, **{"l2.reference": "init"}, **again)) == 2
        err = capsys.readouterr().err
        assert f"init_from: the run started from finetuning run {first} (step 5), now finetuning run {other}" in err
        assert _snapshot(run) == before
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    assert cli.main(_finetune(task, run, init_from=moved / "best", **{"l2.reference": "init"}, epochs=2)) == 0
    assert "resuming at step 5 of 10" in capsys.readouterr().out
    # a run from scratch resumed with an init_from
    assert cli.main(_finetune(task, other, init_from=moved, epochs=2)) == 2
    assert f"init_from: the run started from scratch, now {moved}" in capsys.readouterr().err


# Batches that do not depend on the devices.


def test_packed_batches_and_steps_do_not_depend_on_the_devices(task, tmp_path, capsys):
    """A packed run on 8 devices takes the same batches as on one: the same steps an epoch, and
    (no dropout) the same weights; so a run stopped on one resumes on the other."""
    packed = {"data.layout": "packed", "data.max_segments": 4, "epochs": 2}
    assert cli.main(_finetune(task, tmp_path / "eight", **packed, **{"parallel.backend": "shard_map"})) == 0
    eight = capsys.readouterr().out
    assert cli.main(_finetune(task, tmp_path / "one", **packed)) == 0
    one = capsys.readouterr().out
    rows = [re.search(r"(\d+) rows a step", out).group(1) for out in (eight, one)]
    steps = [re.search(r"starting at step 0 of (\d+)", out).group(1) for out in (eight, one)]
    assert rows[0] == rows[1] and steps[0] == steps[1], (eight, one)
    last = int(steps[0])
    for a, b in zip(
        jax.tree.leaves(_params(tmp_path / "eight" / "checkpoints", last)),
        jax.tree.leaves(_params(tmp_path / "one" / "checkpoints", last)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=2e-5)
    data = Encoded(
        [np.arange(n) for n in (5, 9, 3, 12, 7, 4)], [np.zeros(n, np.int32) for n in (5, 9, 3, 12, 7, 4)], [0] * 6
    )
    batches = TaskBatches(data, "classification", 4, layout="packed", max_len=16)
    assert batches.rows == 2  # 6 examples in 3 rows: 2 rows hold 4 examples on average, on any devices


# Run directories written by jft at 694ba27 (tests/fixtures/make_runs_694ba27.sh).


@pytest.fixture
def legacy(tmp_path):
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_an_earlier_versions_pretraining_run_resumes_longer_and_exports(legacy, tmp_path, capsys):
    settings = json.loads((legacy / "pretrain" / "run.json").read_text())["config"]
    model = {f"model.{k}": v for k, v in settings["model"].items() if v is not None and k != "preset"}
    flags = _flags({**model, "data.corpus": "corpus.txt", "data.vocab_size": 120, "data.seq_len": 32})
    flags += _flags({"masking.max_predictions": 5, "batch_size": 8, "total_steps": 4, "log_every": 2, "eval_every": 2})
    flags += _flags({"eval_batches": 1, "checkpoint_every": 2, "keep_checkpoints": 2, "async_checkpoints": False})
    command = [sys.executable, "-m", "jft.cli", *PRETRAIN, "--workdir", "pretrain", *flags, "--config.progress=false"]
    done = subprocess.run(command, cwd=legacy, env=ONE_DEVICE, capture_output=True, text=True)
    assert done.returncode == 0 and "this run finished at step 4" in done.stdout, done.stdout + done.stderr
    longer = subprocess.run(
        [*command, "--config.total_steps=6"], cwd=legacy, env=ONE_DEVICE, capture_output=True, text=True
    )
    assert longer.returncode == 0 and "resuming at step 4 of 6" in longer.stdout, longer.stdout + longer.stderr
    assert saved_steps(legacy / "pretrain" / "checkpoints")[-1] == 6
    assert cli.main(["export", "--workdir", str(legacy / "pretrain"), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]


def test_an_earlier_versions_l2sp_fine_tuning_run_evaluates_predicts_exports_and_resumes(legacy, tmp_path, capsys):
    run = legacy / "finetune"
    assert cli.main(["eval", "--workdir", str(run), "--data", str(legacy / "dev.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 8 and set(report["metrics"]) == {"accuracy", "mcc", "macro_f1"}
    output = tmp_path / "predictions.jsonl"
    assert (
        cli.main(["predict", "--workdir", str(run), "--input", str(legacy / "dev.csv"), "--output", str(output)]) == 0
    )
    assert len(output.read_text().splitlines()) == 8
    assert cli.main(["export", "--workdir", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"]["0"] == "city"
    assert cli.main(["config", str(run)]) == 0 and '"family": "bert"' in capsys.readouterr().out
    # one more epoch, in place, from its checkpoint and its θ_ref
    flags = _flags({"init_from": "pretrain", "data.train": "train.csv", "data.eval": "dev.csv", "data.seq_len": 32})
    flags += _flags({"batch_size": 8, "l2.weight": 0.01, "progress": False})  # l2.reference: the run's own, init
    flags += _flags({"parallel.backend": "jit", "epochs": 3})
    command = [sys.executable, "-m", "jft.cli", *FINETUNE, "--workdir", "finetune", *flags]
    done = subprocess.run(command, cwd=legacy, env=ONE_DEVICE, capture_output=True, text=True)
    assert done.returncode == 0 and "resuming at step 4 of 6" in done.stdout, done.stdout + done.stderr
    assert saved_steps(run / "checkpoints") == [4, 6]  # its own checkpoint and the new one (keep_checkpoints: 2)


def test_rows_for_an_objective_the_family_does_not_train_with_are_refused(pretrained, tmp_path, monkeypatch, capsys):
    """A family names its pretraining objectives; rows prepared for another one (here: sentence
    pairs, for a family said to train masked-LM alone) are refused before anything is written."""
    import dataclasses

    from jft.models import registry

    monkeypatch.setitem(registry.FAMILIES, "bert", dataclasses.replace(registry.FAMILIES["bert"], objectives=("mlm",)))
    root, settings = pretrained
    assert cli.main([*PRETRAIN, "--workdir", str(tmp_path / "run"), *_flags(settings)]) == 2
    assert "a bert model pretrains with mlm, not mlm+nsp (rows in mode 'pairs')" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(JftError, match="head 'regressor' is not one of"):
        Head("regressor")

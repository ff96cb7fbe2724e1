"""The command line as practitioners use it: settings they can find, honest progress, complete evaluation."""

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from sklearn.metrics import classification_report, confusion_matrix

from conftest import REPO, SMALL_PRETRAIN, TINY_MODEL, write_corpus, write_topic_task
from jft import cli, defaults
from jft.config import leaf_keys, load_config
from jft.errors import JftError
from jft.models.bert import BertConfig, BertForSequenceClassification, init_params
from jft.tasks.predictor import FinetunedModel
from jft.train.checkpoint import saved_steps
from jft.train.masking import MaskingConfig
from jft.train.optim import weight_decay_mask
from jft.train.steps import FinetuneSetup, create_finetune_state, finetune_step
from jft.xla_cache import enable_compilation_cache

pytestmark = pytest.mark.xdist_group("command_line")  # one worker: the runs are shared

ONE_DEVICE = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
JFT = [sys.executable, "-m", "jft.cli"]


def _flags(settings: dict) -> list[str]:
    return [f"--config.{key}={value}" for key, value in settings.items()]


# Finding settings.


@pytest.mark.parametrize("stage", list(defaults.STAGES))
def test_every_key_of_every_stage_has_a_meaning(stage):
    config = defaults.defaults_of(stage)
    assert defaults.stage_of(config) == stage
    table = defaults.meanings(stage)
    assert [key for key in leaf_keys(config) if not table.get(key)] == []


def test_configs_are_found_by_name_from_any_directory(tmp_path):
    listed = subprocess.run([*JFT, "config"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "pretrain/tiny " in listed and "finetune/glue " in listed
    shown = subprocess.run(
        [*JFT, "config", "finetune/glue:mrpc", "--config.optim.lr=3e-05"], cwd=tmp_path, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "optim.lr = 3e-05  (default 2e-05)  # peak learning rate" in lines
    assert (
        "data.text_pair_column = 'sentence2'  (default '')  # the second text of sentence-pair tasks "
        "(question answering: the context)" in lines
    )
    assert all(" # " in line for line in lines), [line for line in lines if " # " not in line]
    assert (
        load_config("tiny", stage="pretrain").total_steps == load_config(REPO / "configs/pretrain/tiny.py").total_steps
    )
    assert load_config("jft:finetune/glue:stsb").task == "regression"
    with pytest.raises(JftError, match="config file not found: tinyy; give a path, or one of the configs that ship"):
        load_config("tinyy", stage="pretrain")


@pytest.mark.parametrize(
    "key,answer",
    [
        ("learning_rate", "jft calls it 'optim.lr' (--config.optim.lr=...)"),
        ("num_train_epochs", "jft calls it 'epochs' (--config.epochs=...)"),
        ("output_dir", "jft takes it as the command-line option --workdir"),
        ("per_device_eval_batch_size", "jft calls it 'eval_batch_size'"),
        ("gradient_accumulation_steps", "jft calls it 'accum_steps'"),
        ("data.max_lenght", "jft calls it 'data.seq_len'"),  # misspelt too
        ("learning_rte", "jft calls it 'optim.lr'"),
    ],
)
def test_other_trainers_names_are_answered(key, answer, capsys):
    assert cli.main(["finetune", "--config", "tiny", "--workdir", "x", f"--config.{key}=1"]) == 2
    assert answer in capsys.readouterr().err


def test_pretraining_max_steps_is_total_steps(capsys):
    assert cli.main(["pretrain", "--config", "tiny", "--workdir", "x", "--config.max_steps=5"]) == 2
    assert "jft calls it 'total_steps'" in capsys.readouterr().err


def test_help_shows_defaults_and_where_the_keys_are():
    text = cli.build_parser()._subparsers._group_actions[0].choices["prepare"].format_help()
    assert "(default: 128)" in text and "(default: pairs)" in text
    text = cli.build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    assert "jft config CONFIG" in " ".join(text.split())


# Fine-tuning as practitioners run it.


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    write_corpus(root / "corpus.txt", documents=60)
    write_topic_task(root / "train.csv", 32, seed=0)
    write_topic_task(root / "dev.csv", 24, seed=1)
    assert (
        cli.main(
            ["pretrain", "--config", "tiny", "--workdir", str(root / "pre")]
            + _flags(
                {**SMALL_PRETRAIN, "data.corpus": root / "corpus.txt", "total_steps": 4, "parallel.backend": "jit"}
            )
        )
        == 0
    )
    return root


def _finetune(files: Path, workdir: Path, **settings) -> list[str]:
    values = {
        "init_from": files / "pre",
        "data.train": files / "train.csv",
        "data.eval": files / "dev.csv",
        "data.seq_len": 32,
        "progress": False,
        "parallel.backend": "jit",
        "optim.lr": 3e-3,
        **settings,
    }
    return ["finetune", "--config", "tiny", "--workdir", str(workdir), *_flags(values)]


def test_early_stopping_stops_after_patience_evaluations_without_gain(task_files, tmp_path, capsys):
    settings = {"epochs": 30, "eval_every": 1, "early_stopping.patience": 3, "optim.lr": 1e-1}
    assert cli.main(_finetune(task_files, tmp_path / "run", **settings)) == 0
    out = capsys.readouterr()
    evaluations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [(row["step"], row["accuracy"]) for row in evaluations if row["split"] == "eval"]
    best_step = max(scores, key=lambda s: (s[1], -s[0]))[0]  # the first of the highest
    assert scores[-1][0] == best_step + 3 < 30 * 2  # three evaluations after the best, long before the end
    assert f"stopped early at step {best_step + 3}: accuracy has not improved in 3 evaluations" in out.err
    assert cli.main(_finetune(task_files, tmp_path / "run", **settings)) == 0
    assert "this run finished" in capsys.readouterr().out


def test_max_steps_test_split_and_summary(task_files, tmp_path, capsys):
    settings = {"epochs": 10, "max_steps": 3, "data.test": task_files / "dev.csv", "log_every": 1}
    assert cli.main(_finetune(task_files, tmp_path / "run", **settings)) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("finished at step 3: ")
    for name in ("train_task_loss", "train_l2_penalty", "eval_accuracy", "test_accuracy", "test_macro_f1"):
        assert f"'{name}'" in last
    best = FinetunedModel(tmp_path / "run")
    assert best.evaluate(str(task_files / "dev.csv"))["accuracy"] == pytest.approx(
        json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["accuracy"]
    )


def test_eval_reports_per_class_metrics_like_scikit_learn_and_a_confusion_matrix(task_files, tmp_path, capsys):
    assert cli.main(_finetune(task_files, tmp_path / "run", epochs=2)) == 0
    # Evaluation data with other column names, mapped on the command line.
    (tmp_path / "dev.csv").write_text((task_files / "dev.csv").read_text().replace("text,label", "sentence,gold", 1))
    command = [
        "eval",
        "--workdir",
        str(tmp_path / "run"),
        "--data",
        str(tmp_path / "dev.csv"),
        "--out",
        str(tmp_path / "r"),
        "--json",
    ]
    capsys.readouterr()
    assert (
        cli.main(
            [*command, "--config.data.text_column=sentence", "--config.data.label_column=gold", "--config.batch_size=5"]
        )
        == 0
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "evaluated the best model (step " in captured.err and "on 24 records of" in captured.err
    predicted = [p["label"] for p in FinetunedModel(tmp_path / "run").predict(str(task_files / "dev.csv"))]
    gold = [line.rsplit(",", 1)[1] for line in (task_files / "dev.csv").read_text().splitlines()[1:]]
    names = report["labels"]
    expected = classification_report(gold, predicted, labels=names, output_dict=True, zero_division=0)
    for name in names:
        for metric in ("precision", "recall", "f1-score"):
            assert report["per_class"][name][metric.removesuffix("-score")] == pytest.approx(expected[name][metric])
    assert report["macro"]["f1"] == pytest.approx(expected["macro avg"]["f1-score"])
    assert report["confusion_matrix"] == confusion_matrix(gold, predicted, labels=names).tolist()
    assert report["records"] == 24 and (tmp_path / "r" / "confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "r" / "report.json").read_text()) == report


def test_predictions_carry_an_id_or_the_row_and_the_text(task_files, tmp_path, capsys):
    assert cli.main(_finetune(task_files, tmp_path / "run", epochs=2, batch_size=16)) == 0
    rows = (task_files / "dev.csv").read_text().splitlines()
    (tmp_path / "new.csv").write_text(
        "key,text\n" + "".join(f"k{i},{r.rsplit(',', 1)[0]}\n" for i, r in enumerate(rows[1:]))
    )
    base = ["predict", "--workdir", str(tmp_path / "run"), "--input", str(tmp_path / "new.csv"), "--output"]
    assert cli.main([*base, str(tmp_path / "a.jsonl"), "--config.with_text=true"]) == 0
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert first["row"] == 0 and first["text"] == rows[1].rsplit(",", 1)[0] and first["label"] in first["probabilities"]
    best = saved_steps(tmp_path / "run" / "best")
    step = next(s for s in saved_steps(tmp_path / "run" / "checkpoints") if s not in best)  # not the best model's
    capsys.readouterr()
    assert cli.main([*base, str(tmp_path / "b.jsonl"), "--config.data.id_column=key", f"--config.step={step}"]) == 0
    assert f"the checkpoint of step {step} in" in capsys.readouterr().out
    by_step = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [p["id"] for p in by_step][:2] == ["k0", "k1"]
    by_best = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [p["probabilities"] for p in by_step] != [p["probabilities"] for p in by_best]  # another model's


def test_a_binary_f1_names_its_positive_label(tmp_path):
    from jft.tasks.metrics import classification_report as report

    out = report(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["negative", "positive"])
    assert out["per_class"]["positive"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


# Gradient accumulation.


def test_accumulated_micro_batches_give_the_large_batch_update():
    config = BertConfig(vocab_size=120, **TINY_MODEL)
    model = BertForSequenceClassification(config, num_labels=3, mlm=True)
    params = init_params(model, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    rows, seq = 16, 12
    ids = rng.integers(5, 120, (rows, seq)).astype(np.int32)
    mask = (np.arange(seq)[None] < rng.integers(4, seq + 1, rows)[:, None]).astype(np.int32)
    batch = {
        "input_ids": ids * mask,
        "token_type_ids": np.zeros_like(ids),
        "attention_mask": mask,
        "labels": rng.integers(0, 3, rows).astype(np.int32),
        "weights": rng.uniform(0.5, 1.5, rows).astype(np.float32),
    }
    masking = MaskingConfig(4, 120, (0, 2, 3), max_predictions=4)
    updates = []
    for accum in (1, 4):
        tx = optax.sgd(1.0)
        setup = FinetuneSetup(
            model,
            tx,
            optax.constant_schedule(1.0),
            "classification",
            0.01,
            weight_decay_mask(params),
            0.5,
            masking,
            accum,
        )
        step = jax.jit(functools.partial(finetune_step, setup=setup, axis_name=None))
        state, metrics = step(create_finetune_state(params, tx), batch, jax.random.PRNGKey(3))
        updates.append((state.params, metrics))
    for a, b in zip(jax.tree.leaves(updates[0][0]), jax.tree.leaves(updates[1][0]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for name in ("task_loss", "mlm_loss", "l2_penalty", "accuracy"):
        assert float(updates[0][1][name]) == pytest.approx(float(updates[1][1][name]), abs=1e-6)


def test_accumulation_runs_through_the_command(task_files, tmp_path, capsys):
    """4 micro-batches of 4 rows train as one batch of 16 (dropout's masks by each row's place)."""
    settings = {"epochs": 1, "batch_size": 16, "eval_every": 0, "log_every": 1}
    losses = {}
    for accum_steps in (4, 1):
        workdir = tmp_path / f"accum{accum_steps}"
        assert cli.main(_finetune(task_files, workdir, **settings, accum_steps=accum_steps)) == 0
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        losses[accum_steps] = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses[4]) > 1 and losses[4] == pytest.approx(losses[1], rel=1e-5)
    capsys.readouterr()
    assert cli.main(_finetune(task_files, tmp_path / "odd", batch_size=6, accum_steps=4)) == 2
    assert "the global batch of 6 rows does not divide over" in capsys.readouterr().err


# Progress.


def test_progress_off_a_terminal_is_plain_lines(task_files, tmp_path):
    settings = {**SMALL_PRETRAIN, "progress": True, "data.prepared": task_files / "pre" / "data", "total_steps": 6}
    settings["log_every"] = 2
    done = subprocess.run(
        [*JFT, "pretrain", "--config", "tiny", "--workdir", str(tmp_path / "run"), *_flags(settings)],
        env=ONE_DEVICE,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\r" not in done.stdout
    lines = done.stderr.splitlines()
    assert lines[0].startswith("pretraining: compiled and ran the first step in ")
    assert lines[1].startswith("pretraining step 2/6: loss ") and "seq/s" in lines[2] and "left" in lines[2]


def test_a_second_run_loads_its_programs_from_the_compilation_cache(task_files, tmp_path):
    """JFT_XLA_CACHE (default ~/.cache/jft/xla) holds the compiled steps: a second run with the same
    settings loads them instead of compiling, and trains the same."""
    settings = {**SMALL_PRETRAIN, "data.prepared": task_files / "pre" / "data", "total_steps": 4, "log_every": 2}
    env = {k: v for k, v in ONE_DEVICE.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env |= {"JFT_XLA_CACHE": str(tmp_path / "cache"), "JAX_LOG_COMPILES": "1"}

    def run(name, **more):
        command = [*JFT, "pretrain", "--config", "tiny", "--workdir", str(tmp_path / name), *_flags(settings)]
        done = subprocess.run(command, env={**env, **more}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        records = map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
        return done.stderr, [r["loss"] for r in records if r["split"] == "train"]

    first, first_losses = run("first")  # jax logs each cache hit when it logs compiles
    assert "cache hit" not in first and list((tmp_path / "cache").glob("jit_pretrain_step-*-cache"))
    second, second_losses = run("second")
    assert "Persistent compilation cache hit for 'jit_pretrain_step'" in second
    assert second_losses == first_losses


def test_the_compilation_cache_set_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JFT_XLA_CACHE", "off")
    own = jax.config.jax_compilation_cache_dir  # the tests' shared cache (conftest), which would win
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        assert enable_compilation_cache() is None and jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", own)
    assert not (tmp_path / "home").exists()


def test_bench_on_a_cpu_skips_cudnn_and_splash_with_a_reason(capsys):
    assert cli.main(["bench", "--config", "bench:tiny", "--config.workloads=finetune"]) == 0
    captured = capsys.readouterr()
    assert "bench: skipped finetune: attention_impl 'cudnn' is a GPU kernel and this is cpu" in captured.err
    assert "| finetune | skipped: attention_impl 'cudnn' is a GPU kernel" in captured.out
    splash = ["bench", "--config", "bench:tiny", "--config.workloads=finetune", "--config.model.attention_impl=splash"]
    assert cli.main(splash) == 0
    assert "skipped finetune: attention_impl 'splash' is a TPU kernel and this is cpu" in capsys.readouterr().err


def test_a_signal_stops_the_whole_quickstart(tmp_path):
    command = [*JFT, "quickstart", "--workdir", str(tmp_path / "qs"), "--config.pretrain.steps=100000"]
    process = subprocess.Popen(command, env=ONE_DEVICE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any(line.startswith("pretraining: compiled and ran the first step") for line in lines):
        lines.append(process.stderr.readline())  # the training loop has begun: a signal is now a stop
        assert lines[-1] or process.poll() is None, "".join(lines)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "jft quickstart: stopped by SIGTERM at step" in err and "2/2 fine-tuning" not in out


def test_ctrl_c_outside_a_training_loop_is_one_line_and_exit_130():
    command = [*JFT, "bench", "--config", "bench:tiny", "--topology", "v5e:2x2", "--largest-batch"]
    process = subprocess.Popen(command, env=ONE_DEVICE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any(line.startswith("bench: ") for line in lines):
        lines.append(process.stderr.readline())  # the search's first compile is done: the next is under way
        assert lines[-1] or process.poll() is None, "".join(lines)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.endswith("jft: stopped by SIGINT\n") and "Traceback" not in err, err

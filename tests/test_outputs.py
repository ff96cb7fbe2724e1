"""Outputs a command owns, and the side files of a run: every command that writes refuses a path
that is an input, inside a run directory or holding someone else's files (unless --overwrite),
replaces its own earlier output whole, and every input and every other file is byte-identical
afterwards; damaged side files (metrics.jsonl, run.json, tokenizer.json) are one clear line or
read as a crash leaves them.

Each case of the table runs a `jft` command in-process against shared inputs (a tiny Hugging Face
BERT, a fine-tuned run, its export, a corpus and labeled data) and checks the whole stderr line
({tmp}: the case's directory, {files}: the shared inputs) and a digest of both trees.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import jax
import pytest
from tensorboardX import SummaryWriter

from conftest import REPO, TINY_MODEL, corpus_vocab, tensorboard_scalars, write_corpus, write_topic_task
from conftest import FaultCase as Case
from jft import cli, outputs
from jft.errors import RunStopped
from jft.models import hf
from jft.models.bert import BertConfig, BertForPreTraining, init_params
from jft.train.lock import hold

pytestmark = pytest.mark.xdist_group("outputs")  # one worker: the cases share their inputs

FINETUNE = str(REPO / "configs" / "finetune" / "tiny.py")


def _finetune_command(workdir: Path, files: Path, **settings) -> list[str]:
    values = {"init_from": files / "hf", "data.train": files / "train.csv", "data.seq_len": 32, "epochs": 1}
    values |= {"parallel.backend": "jit", "progress": False, **settings}
    return ["finetune", "--config", FINETUNE, "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Inputs the cases share and must leave alone."""
    root = tmp_path_factory.mktemp("inputs")
    write_corpus(root / "corpus.txt", documents=20)
    corpus_vocab(root / "corpus.txt", root / "vocab")
    shutil.copytree(root / "vocab", root / "hf")
    config = BertConfig(vocab_size=200, **TINY_MODEL)
    hf.save(root / "hf", config, init_params(BertForPreTraining(config), jax.random.PRNGKey(0)))
    write_topic_task(root / "train.csv", 24, seed=0)
    assert cli.main(_finetune_command(root / "run", root)) == 0
    assert cli.main(["export", "--workdir", str(root / "run"), "--out", str(root / "export")]) == 0
    assert cli.main(["predict", "--workdir", str(root / "run"), "--input", str(root / "train.csv"), "--output",
                     str(root / "predictions.jsonl")]) == 0  # fmt: skip
    (root / "other-run").mkdir()
    (root / "other-run" / "run.json").write_text("{}")
    (root / "notes.txt").write_text("my notes\n")
    return root


def _predict(files: Path, output) -> list[str]:
    return ["predict", "--workdir", str(files / "run"), "--input", str(files / "train.csv"), "--output", str(output)]


def _export(files: Path, out, *extra) -> list[str]:
    return ["export", "--workdir", str(files / "run"), "--out", str(out), *extra]


def _eval(files: Path, out) -> list[str]:
    return ["eval", "--workdir", str(files / "run"), "--data", str(files / "train.csv"), "--out", str(out)]


def _vocab(files: Path, out) -> list[str]:
    return ["vocab", str(files / "corpus.txt"), "--out", str(out), "--vocab-size", "120"]


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _mkfile(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _someone_elses_model(tmp: Path, files: Path) -> Path:
    """A Hugging Face model directory jft did not write (a download), with its README."""
    directory = tmp / "downloaded"
    shutil.copytree(files / "hf", directory)
    (directory / "README.md").write_text("# a model card\n")
    return directory


GRID = '{"optim.lr": [1e-3, 3e-3]}'
EXPORT_OTHER = "--out {tmp}/downloaded already holds other files (README.md, config.json, model.safetensors, ...)"
REPLACE = "give a new or empty directory, or add --overwrite to replace it whole."
CASES = [
    # predict --output
    Case(
        "predict to a .csv",
        lambda t, f: _predict(f, t / "predictions.csv"),
        "jft predict: error: --output {tmp}/predictions.csv: jft predict writes JSON Lines (a JSON object a line), "
        "not CSV; name it .json or .jsonl.",
    ),
    Case(
        "predict over its input",
        lambda t, f: _predict(f, f / "train.csv"),
        "jft predict: error: --output {files}/train.csv is an input of this command ({files}/train.csv); write to "
        "another path, e.g. {files}/predictions.jsonl.",
    ),
    Case(
        "predict over the run's run.json",
        lambda t, f: _predict(f, f / "run" / "run.json"),
        "jft predict: error: --output {files}/run/run.json is inside an input of this command ({files}/run); write "
        "to another path, e.g. {files}/predictions.jsonl.",
    ),
    Case(
        "predict into another run",
        lambda t, f: _predict(f, f / "other-run" / "p.jsonl"),
        "jft predict: error: --output {files}/other-run/p.jsonl is inside the run directory {files}/other-run, whose "
        "files its training writes; write outside it, e.g. {files}/predictions.jsonl.",
    ),
    Case(
        "predict to a directory",
        lambda t, f: _predict(f, (t / "out").mkdir() or t / "out"),
        "jft predict: error: --output {tmp}/out is a directory; give a file path, e.g. {tmp}/out/predictions.jsonl.",
    ),
    Case(
        "predict over a file of the user's",
        lambda t, f: _predict(f, f / "notes.txt"),
        "jft predict: error: --output {files}/notes.txt is a file this command did not write from these inputs, or "
        "one changed since it did; give a new path, or "
        "add --overwrite to replace it whole.",
    ),
    Case(
        "predict over the directory of its input",
        lambda t, f: _predict(f, f),
        "jft predict: error: --output {files} holds an input of this command ({files}/run); write to another path.",
    ),
    # export --out
    Case(
        "export over a downloaded model",
        lambda t, f: _export(f, _someone_elses_model(t, f)),
        f"jft export: error: {EXPORT_OTHER}; {REPLACE}",
    ),
    Case(
        "export as msgpack over a downloaded model",
        lambda t, f: _export(f, _someone_elses_model(t, f), "--format", "msgpack"),
        f"jft export: error: {EXPORT_OTHER}; {REPLACE}",
    ),
    Case(
        "export over another run's export",
        lambda t, f: ["export", "--workdir", _copy(f / "run", t / "run2"), "--out", _copy(f / "export", t / "e")],
        "jft export: error: --out {tmp}/e already holds a Hugging Face model of {files}/run; " + REPLACE,
    ),
    Case(
        "export into the run itself",
        lambda t, f: _export(f, f / "run"),
        "jft export: error: --out {files}/run is an input of this command ({files}/run); write to another path, "
        "e.g. {files}/run-new.",
    ),
    Case(
        "export inside the run",
        lambda t, f: _export(f, f / "run" / "hf"),
        "jft export: error: --out {files}/run/hf is inside an input of this command ({files}/run); write to another "
        "path, e.g. {files}/hf-new.",
    ),
    Case(
        "export over the run's parent",
        lambda t, f: _export(f, f),
        "jft export: error: --out {files} holds an input of this command ({files}/run); write to another path.",
    ),
    Case(
        "export into another run",
        lambda t, f: _export(f, f / "other-run"),
        "jft export: error: --out {files}/other-run is inside the run directory {files}/other-run, whose files its "
        "training writes; write outside it, e.g. {files}/other-run-new.",
    ),
    Case(
        "export to a file",
        lambda t, f: _export(f, f / "notes.txt"),
        "jft export: error: --out {files}/notes.txt is a file; give a directory.",
    ),
    Case(
        "export over a vocabulary jft wrote",
        lambda t, f: _export(f, t / "v") if cli.main(_vocab(f, t / "v")) == 0 else [],
        "jft export: error: --out {tmp}/v already holds a vocabulary of {files}/corpus.txt; " + REPLACE,
    ),
    # convert SRC DST
    Case(
        "convert a model onto itself",
        lambda t, f: ["convert", str(f / "hf"), str(f / "hf")],
        "jft convert: error: dst {files}/hf is an input of this command ({files}/hf); write to another path, "
        "e.g. {files}/hf-new.",
    ),
    Case(
        "convert a model onto itself as msgpack",
        lambda t, f: ["convert", str(f / "hf"), str(f / "hf"), "--format", "msgpack"],
        "jft convert: error: dst {files}/hf is an input of this command ({files}/hf); write to another path, "
        "e.g. {files}/hf-new.",
    ),
    Case(
        "convert a weights file into its own directory",
        lambda t, f: ["convert", str(f / "hf" / "model.safetensors"), str(f / "hf"), "--format", "msgpack"],
        "jft convert: error: dst {files}/hf holds an input of this command ({files}/hf/model.safetensors); write to "
        "another path.",
    ),
    Case(
        "convert over a downloaded model",
        lambda t, f: ["convert", str(f / "hf"), str(_someone_elses_model(t, f))],
        "jft convert: error: dst {tmp}/downloaded already holds other files (README.md, config.json, "
        "model.safetensors, ...); " + REPLACE,
    ),
    Case(
        "convert a run into its own directory",
        lambda t, f: ["convert", str(f / "run"), str(f / "run" / "hf")],
        "jft convert: error: dst {files}/run/hf is inside an input of this command ({files}/run); write to another "
        "path, e.g. {files}/hf-new.",
    ),
    # init --out
    Case(
        "init over a downloaded model",
        lambda t, f: ["init", "--config", "init", "--out", str(_someone_elses_model(t, f))],
        f"jft init: error: {EXPORT_OTHER}; {REPLACE}",
    ),
    Case(
        "init over an export of a run",
        lambda t, f: ["init", "--config", "init", "--out", str(f / "export")],
        "jft init: error: --out {files}/export already holds a Hugging Face model of {files}/run; " + REPLACE,
    ),
    Case(
        "init into a run",
        lambda t, f: ["init", "--config", "init", "--out", str(f / "run" / "init")],
        "jft init: error: --out {files}/run/init is inside the run directory {files}/run, whose files its training "
        "writes; write outside it, e.g. {files}/init-new.",
    ),
    # eval --out
    Case(
        "eval report inside the run",
        lambda t, f: _eval(f, f / "run" / "report"),
        "jft eval: error: --out {files}/run/report is inside an input of this command ({files}/run); write to another "
        "path, e.g. {files}/report-new.",
    ),
    Case(
        "eval report over its data",
        lambda t, f: _eval(f, f / "train.csv"),
        "jft eval: error: --out {files}/train.csv is an input of this command ({files}/train.csv); write to another "
        "path, e.g. {files}/train.csv-new.",
    ),
    Case(
        "eval report over a directory of the user's",
        lambda t, f: _eval(f, _mkfile(t / "mine" / "thesis.tex").parent),
        "jft eval: error: --out {tmp}/mine already holds other files (thesis.tex); " + REPLACE,
    ),
    # vocab --out
    Case(
        "vocab into the corpus's directory",
        lambda t, f: _vocab(f, f),
        "jft vocab: error: --out {files} holds an input of this command ({files}/corpus.txt); write to another path.",
    ),
    Case(
        "vocab over a directory of the user's",
        lambda t, f: _vocab(f, _mkfile(t / "mine" / "thesis.tex").parent),
        "jft vocab: error: --out {tmp}/mine already holds other files (thesis.tex); " + REPLACE,
    ),
    Case(
        "vocab into a run",
        lambda t, f: _vocab(f, f / "other-run" / "vocab"),
        "jft vocab: error: --out {files}/other-run/vocab is inside the run directory {files}/other-run, whose files "
        "its training writes; write outside it, e.g. {files}/vocab-new.",
    ),
    # prepare --out
    Case(
        "prepare into a run",
        lambda t, f: ["prepare", str(f / "corpus.txt"), "--vocab", str(f / "vocab"), "--out", str(f / "run" / "rows")],
        "jft prepare: error: --out {files}/run/rows is inside the run directory {files}/run, whose files its training "
        "writes; write outside it, e.g. {files}/rows.",
    ),
    Case(
        "prepare into the corpus's directory",
        lambda t, f: ["prepare", str(f / "corpus.txt"), "--vocab", str(f / "vocab"), "--out", str(f)],
        "jft prepare: error: --out {files} holds an input of this command ({files}/corpus.txt); write to another path.",
    ),
    Case(
        "prepare over its vocabulary",
        lambda t, f: ["prepare", f / "corpus.txt", "--vocab", f / "vocab", "--out", f / "vocab", "--overwrite"],
        "jft prepare: error: --out {files}/vocab is an input of this command ({files}/vocab); write to another path, "
        "e.g. {files}/rows.",
    ),
    Case(
        "vocab over the folder of its corpus, given as a glob",
        lambda t, f: [
            "vocab",
            str(_mkfile(t / "books" / "a.txt", "the ship sails.\n").parent / "*.txt"),
            "--out",
            str(t / "books"),
            "--overwrite",
        ],  # fmt: skip
        "jft vocab: error: --out {tmp}/books holds an input of this command ({tmp}/books/a.txt); write to another "
        "path.",
    ),
    # a training run's --workdir
    Case(
        "finetune into a folder of the user's",
        lambda t, f: _finetune_command(_folder_of_mine(t), f),
        "jft finetune: error: --workdir {tmp}/mine holds files that are not a jft run's (data, notes.txt); a run "
        "starts in a new or empty directory, or resumes its own there, so that nothing of yours is written over. "
        "Give another --workdir, e.g. {tmp}/mine/run.",
    ),
    Case(
        "finetune into an export",
        lambda t, f: _finetune_command(f / "export", f),
        "jft finetune: error: --workdir {files}/export holds files that are not a jft run's (config.json, "
        "model.safetensors, special_tokens_map.json, tokenizer.json, ...); a run starts in a new or empty "
        "directory, or resumes its own there, so that nothing of yours is written over. Give another --workdir, "
        "e.g. {files}/export/run.",
    ),
    Case(
        "finetune into the folder of init_from",
        lambda t, f: _finetune_command(f / "hf", f),
        "jft finetune: error: --workdir {files}/hf is init_from ({files}/hf), the model this run starts from; a run "
        "writes into a workdir of its own: give another --workdir, e.g. {files}/hf-next.",
    ),
    Case(
        "finetune inside another run",
        lambda t, f: _finetune_command(f / "run" / "data", f),
        "jft finetune: error: --workdir {files}/run/data is inside the run directory {files}/run, whose files its "
        "training writes; give a workdir outside it, e.g. {files}/data.",
    ),
    Case(
        "pretrain where a data folder of the user's is",
        lambda t, f: [
            "pretrain",
            "--config",
            "tiny",
            "--workdir",
            str(_folder_of_mine(t)),
            "--config.data.corpus",
            str(f / "corpus.txt"),
        ],  # fmt: skip
        "jft pretrain: error: --workdir {tmp}/mine holds files that are not a jft run's (data, notes.txt); a run "
        "starts in a new or empty directory, or resumes its own there, so that nothing of yours is written over. "
        "Give another --workdir, e.g. {tmp}/mine/run.",
    ),
    # init_from, run.json, tokenizer.json, config names, sweeps
    Case(
        "init_from a model whose tokenizer is another model's",
        lambda t, f: _finetune_command(t / "run", f, init_from=_mixed_model(t, f)),
        "jft finetune: error: init_from {tmp}/mixed: its tokenizer has 200 tokens and its model 120 (vocab_size in "
        "config.json); they come from different models. Export or convert the model into a new directory.",
    ),
    Case(
        "a run whose run.json was deleted",
        lambda t, f: ["export", "--workdir", str(_without_run_json(t, f)), "--out", str(t / "x")],
        "jft export: error: {tmp}/run holds a run whose run.json is missing (deleted or not copied): it says what the "
        "run is, and nothing of the run can be read without it. Copy run.json back from where the directory came "
        "from, or start a new --workdir.",
    ),
    Case(
        "a run whose run.json is damaged",
        lambda t, f: _eval(_damaged(t, f, "run.json", b'{"format": "jft-run/1", "sta'), t / "report"),
        "jft eval: error: the run description {tmp}/files/run/run.json is not valid JSON: Unterminated string starting "
        "at line 1, column 25. It says what the run is, and nothing of the run can be read without it: copy run.json "
        "back from where the directory came from, or start a new --workdir.",
    ),
    Case(
        "a run whose tokenizer.json is damaged",
        lambda t, f: _eval(_damaged(t, f, "tokenizer.json", b'{"version": "1.0", "trunc'), t / "report"),
        "jft eval: error: {tmp}/files/run/tokenizer.json is not a readable tokenizer (EOF while parsing a string at "
        "line 1 column 25); it is damaged or not a tokenizers JSON file: copy it again from where it came from.",
    ),
    Case(
        "a short config name of two stages",
        lambda t, f: ["config", "tiny"],
        "jft config: error: tiny names 2 configs that ship with jft: finetune/tiny, pretrain/tiny; give one of them, "
        "e.g. `jft config finetune/tiny`.",
    ),
    Case(
        "a sweep with more folds than examples",
        lambda t, f: ["sweep"] + _finetune_command(t / "sweep", f, **{"sweep.folds": 30, "sweep.grid": GRID})[1:],
        "jft sweep: error: sweep.folds=30 holds out each training example once, in one of 30 folds, and data.train "
        "has 24 examples; use at most that many folds, or more data.",
    ),
]


def _folder_of_mine(tmp: Path) -> Path:
    """A project folder of the user's: notes and a data folder (not prepared rows)."""
    _mkfile(tmp / "mine" / "notes.txt", "my notes\n")
    _mkfile(tmp / "mine" / "data" / "corpus.txt", "my corpus\n")
    return tmp / "mine"


def _mixed_model(tmp: Path, files: Path) -> Path:
    """A model directory whose weights and config.json are a smaller model's than its tokenizer's."""
    directory = tmp / "mixed"
    config = BertConfig(vocab_size=120, **TINY_MODEL)
    hf.save(directory, config, init_params(BertForPreTraining(config), jax.random.PRNGKey(1)))
    shutil.copy(files / "vocab" / "tokenizer.json", directory)
    return directory


def _without_run_json(tmp: Path, files: Path) -> Path:
    workdir = _copy(files / "run", tmp / "run")
    (workdir / "run.json").unlink()
    return workdir


def _damaged(tmp: Path, files: Path, name: str, content: bytes) -> Path:
    """A copy of the shared inputs (so the other paths stay valid) whose run has a damaged file."""
    copy = _copy(files, tmp / "files")
    (copy / "run" / name).write_bytes(content)
    return copy


def _digests(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in directory.rglob("*")
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_write_that_would_lose_something_is_one_line_before_any_work(case: Case, files, tmp_path, capsys):
    command = [str(part) for part in case.command(tmp_path, files)]
    capsys.readouterr()
    before, before_files = _digests(tmp_path), _digests(files)
    code = cli.main(command)
    err = capsys.readouterr().err
    case.check(err, code, tmp_path, files)
    assert _digests(tmp_path) == before  # nothing written, nothing half-written, nothing left behind
    assert _digests(files) == before_files


def test_own_earlier_output_is_replaced_whole_and_overwrite_replaces_any(files, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli.main(_export(files, out, "--format", "both")) == 0
    assert cli.main(_export(files, out, "--format", "msgpack")) == 0  # its own: no --overwrite needed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [outputs.MARKER, "config.json", "flax_model.msgpack", "special_tokens_map.json", "tokenizer.json"]
        + ["tokenizer_config.json", "vocab.txt"]
    )  # the safetensors of the first export went with it: nothing of an earlier write is mixed in
    downloaded = _someone_elses_model(tmp_path, files)
    assert cli.main(_export(files, downloaded, "--overwrite")) == 0
    assert not (downloaded / "README.md").exists()  # replaced whole
    config, _ = hf.load(downloaded)
    assert config.hidden_size == TINY_MODEL["hidden_size"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    predictions = files / "predictions.jsonl"
    before = predictions.read_bytes()
    assert cli.main(_predict(files, predictions)) == 0  # its own earlier predictions: replaced
    assert predictions.read_bytes() == before
    # predictions of another model, a look-alike written by hand, its own changed since: refused, kept
    mine = tmp_path / "mine.jsonl"
    assert cli.main(_predict(files, mine)) == 0
    shutil.copytree(files / "run", tmp_path / "copy")  # another model, by where it lies
    other = ["predict", "--workdir", str(tmp_path / "copy"), "--input", str(files / "train.csv"), "--output"]
    look_alike = _mkfile(tmp_path / "look-alike.jsonl")
    look_alike.write_bytes(before)
    changed = tmp_path / "changed.jsonl"
    assert cli.main(_predict(files, changed)) == 0
    changed.write_text(changed.read_text() + '{"row": 99, "label": "mine"}\n')
    for command in ([*other, str(mine)], _predict(files, look_alike), _predict(files, changed)):
        kept = Path(command[-1]).read_bytes()
        assert cli.main(command) == 2
        assert "is a file this command did not write from these inputs" in capsys.readouterr().err
        assert Path(command[-1]).read_bytes() == kept
    notes = _mkfile(tmp_path / "notes.txt")
    assert cli.main([*_predict(files, notes), "--overwrite"]) == 0
    assert json.loads(notes.read_text().splitlines()[0])["row"] == 0
    nested = tmp_path / "new" / "folder" / "p.jsonl"
    assert cli.main(_predict(files, nested)) == 0 and nested.is_file()  # its folder is made


def test_an_overwrite_leaves_a_reader_the_old_directory_or_the_new_never_a_mix(files, tmp_path):
    out = _someone_elses_model(tmp_path, files)
    old_names = set(os.listdir(out))
    held = {name: (out / name).open("rb") for name in ("config.json", "model.safetensors")}  # a reader holds them
    old = {name: (files / "hf" / name).read_bytes() for name in held}
    seen, stop = [], threading.Event()

    def look():
        while not stop.is_set():
            seen.append(frozenset(os.listdir(out)))

    reader = threading.Thread(target=look)
    reader.start()
    try:
        assert cli.main(_export(files, out, "--overwrite")) == 0
    finally:
        stop.set()
        reader.join()
    new_names = set(os.listdir(out))
    assert seen
    # The path holds the old directory or the new, never a mix of their files: a listing that began
    # just before the swap may watch the old one empty as it is removed, nothing else.
    assert all(names == new_names or names <= old_names for names in seen), set(seen)
    assert not any(names & (new_names - old_names) and names & (old_names - new_names) for names in seen)
    for name, file in held.items():
        assert file.read() == old[name]  # the old files, whole, for as long as the reader holds them
        file.close()
    assert hf.load(out)[0].vocab_size == 200


def test_a_write_that_fails_leaves_the_old_output_as_it_was(files, tmp_path, monkeypatch, capsys):
    import errno

    import safetensors.numpy

    out = _copy(files / "export", tmp_path / "export")
    before = _digests(out)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise safetensors.SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    assert cli.main(_export(files, out)) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        f"jft export: error: {os.strerror(errno.ENOSPC)}: {tmp_path}/.export.jft-new-{os.getpid()}/model.safetensors\n",
        err,
    ), err
    assert _digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging left


def test_a_torn_or_damaged_metrics_line_is_left_out_and_the_run_goes_on(files, tmp_path, capsys):
    workdir = _copy(files / "run", tmp_path / "run")
    metrics = workdir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + '\n{"step": 9, "spl')
    assert cli.main(_finetune_command(workdir, files, epochs=2)) == 0
    err = capsys.readouterr().err
    assert f"warning: {metrics}: its last line was cut short (a stopped writer); it is removed." in err
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line != "garbage"]
    assert records[-1]["step"] > json.loads(lines[-1])["step"]  # appended on lines of their own
    assert cli.main(_finetune_command(workdir, files, epochs=2)) == 0  # finished: says so, reads the metrics
    captured = capsys.readouterr()
    assert "this run finished" in captured.out
    assert f"warning: {metrics}:2 is not a record of this file (b'garbage'...); it is left out." in captured.err


def test_a_resumed_run_drops_the_metrics_of_the_steps_it_does_again(files, tmp_path):
    workdir = _copy(files / "run", tmp_path / "run")
    metrics = workdir / "metrics.jsonl"
    saved = metrics.read_text()
    last = max(json.loads(line)["step"] for line in saved.splitlines())  # the run's last checkpoint
    # what a run stopped after logging steps it had not saved leaves: they are done again on resume
    metrics.write_text(
        saved + "".join(json.dumps({"step": last + k, "split": "train", "loss": 9.0}) + "\n" for k in (1, 2))
    )
    stopped = SummaryWriter(str(workdir / "tensorboard"))
    for k in (1, 2):
        stopped.add_scalar("train/loss", 9.0, last + k)
    stopped.close()
    assert cli.main(_finetune_command(workdir, files, epochs=2)) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert metrics.read_text().startswith(saved) and {"loss": 9.0} not in [{"loss": r.get("loss")} for r in records]
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)) and max(keys)[0] > last  # each step's record once, the run went on
    # TensorBoard shows the same: the stopped run's steps after `last` hidden, the resumed run's shown
    shown = tensorboard_scalars(workdir / "tensorboard")["train/loss"]
    assert shown == pytest.approx({r["step"]: r["loss"] for r in records if r["split"] == "train"})


def test_a_signal_outside_the_training_loop_lets_go_of_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(RunStopped) as stopped:
        with hold(workdir):
            (workdir / "started").write_text("")
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.exit_code == 143
    assert str(stopped.value) == "stopped by SIGTERM; what it finished is kept; run the same command to resume"
    assert not (workdir / "run.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler before it, back


def test_a_sweep_stopped_between_populations_resumes(files, tmp_path, monkeypatch, capsys):
    import jft.sweep

    real, calls = jft.sweep.train_population, []

    def then_a_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first population is done and written: a signal before the next
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(jft.sweep, "train_population", then_a_signal)
    grid = {"sweep.grid": GRID, "sweep.population": 2, "sweep.folds": 2}
    command = ["sweep"] + _finetune_command(tmp_path / "sweep", files, **grid)[1:]
    assert cli.main(command) == 143
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "jft sweep: stopped by SIGTERM; what it finished is kept; run the same command to resume"
    assert not (tmp_path / "sweep" / "run.lock").exists()
    assert len((tmp_path / "sweep" / "members.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(jft.sweep, "train_population", real)
    assert cli.main(command) == 0
    assert len((tmp_path / "sweep" / "members.jsonl").read_text().splitlines()) == 4


def test_a_runs_own_rows_are_prepared_again_where_they_are(files, tmp_path, capsys):
    """The advice for a damaged shard of a run that prepared its own rows (RUN/data) names
    `jft prepare ... --out RUN/data`: prepare owns prepared directories, inside a run too."""
    from jft.data.prepare import prepare, prepare_command

    run = tmp_path / "run"
    _mkfile(run / "run.json", "{}")
    meta = prepare(str(files / "corpus.txt"), files / "vocab", run / "data", seq_len=32, progress=False)
    rows = lambda: {k: v for k, v in _digests(run / "data").items() if k != "metadata.json"}  # noqa: E731
    before = rows()
    command = prepare_command(run / "data", meta).split()[1:]
    assert cli.main(command) == 0 and rows() == before  # the same rows, whole (metadata.json: a new time)
    assert json.loads((run / "data" / "metadata.json").read_text())["fingerprint"] == meta["fingerprint"]
    elsewhere = [str(run / "other") if part == str(run / "data") else part for part in command]
    assert cli.main(elsewhere) == 2  # anything else inside the run stays refused


def test_small_rules_of_the_console_and_the_side_files(tmp_path, capsys):
    from jft.defaults import finetune
    from jft.files import cut_torn_line
    from jft.tasks.finetuning import describe_penalty
    from jft.tasks.metrics import one_class

    assert one_class({"mcc": 0.0, "accuracy": 0.7}) and not one_class({"mcc": 0.0, "accuracy": 1.0})
    config = finetune()
    config.l2.reference, config.l2.weight = "init", 0.1
    assert describe_penalty(config, False).endswith(
        "pulling toward 0 (l2.reference=init, and no init_from: the weights start new)"
    )
    config.init_from = "runs/pretrained"
    assert "the weights it starts from (L2-SP)" in describe_penalty(config, True)
    _mkfile(tmp_path / "metrics.jsonl", "\n")
    cut_torn_line(tmp_path / "metrics.jsonl")
    assert capsys.readouterr().err == "" and (tmp_path / "metrics.jsonl").read_text() == "\n"

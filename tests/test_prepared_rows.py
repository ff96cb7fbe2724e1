"""Prepared rows are verified as checkpoints are: each shard file's size and SHA-256 recorded by
`jft prepare`, sizes checked when a loader is made, digests when a shard is first opened; a damaged
file is one line naming it and the `jft prepare` command that writes it again, which works. Also:
prepare's workers die with it, a full disk names the file and what is kept, and `jft shards`
refuses what pretraining refuses."""

import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jft.data.prepare
from conftest import REPO, SMALL_PRETRAIN, corpus_vocab, raises_one_line, write_corpus
from jft import cli
from jft.data.loader import Loader, PretrainRows
from jft.data.prepare import prepare, prepare_command
from jft.errors import JftError

PRETRAIN = str(REPO / "configs" / "pretrain" / "tiny.py")
STEPS = {"checkpoint_every": 2, "log_every": 2, "eval_every": 100, "async_checkpoints": False}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A corpus and its vocabulary."""
    root = tmp_path_factory.mktemp("inputs")
    write_corpus(root / "corpus.txt", documents=40)
    corpus_vocab(root / "corpus.txt", root / "vocab")
    return root


def _prepare(inputs: Path, out: Path, *flags: str) -> list[str]:
    return ["prepare", str(inputs / "corpus.txt"), "--vocab", str(inputs / "vocab"), "--out", str(out), *flags]


def _pretrain(workdir: Path, rows: Path, **settings) -> list[str]:
    values = {**SMALL_PRETRAIN, **STEPS, "data.prepared": rows, **settings}
    return ["pretrain", "--config", PRETRAIN, "--workdir", str(workdir)] + [
        f"--config.{key}={value}" for key, value in values.items()
    ]


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}


def _flip_bytes(file: Path, count: int = 3) -> None:
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0x5A for b in data[middle : middle + count])
    file.write_bytes(bytes(data))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n"), err
    return err.splitlines()[-1]


def test_a_damaged_shard_stops_the_run_before_its_rows_are_used_and_the_advised_command_repairs_it(
    inputs, tmp_path, capsys
):
    rows, workdir = tmp_path / "rows", tmp_path / "run"
    assert cli.main(_prepare(inputs, rows, "--seq-len", "32", "--workers", "1")) == 0
    meta = json.loads((rows / "metadata.json").read_text())
    command = (
        f"jft prepare {inputs / 'corpus.txt'} --vocab {rows / 'tokenizer.json'} --out {rows} --seq-len 32 --mode pairs "
        "--seed 0 --eval-fraction 0.01 --short-seq-prob 0.1 --rows-per-shard 65536 --text-field text "
        "--window-documents 10000"
    )
    assert prepare_command(rows, meta) == command
    # A run stopped at step 2 of 4 (its newest checkpoint is step 2), resumed over damaged rows.
    assert cli.main(_pretrain(workdir, rows, total_steps=4)) == 0
    shutil.rmtree(workdir / "checkpoints" / "4")
    capsys.readouterr()
    damaged = rows / "train-000000-000.input_ids.npy"
    _flip_bytes(damaged)
    before = _snapshot(workdir)
    assert cli.main(_pretrain(workdir, rows, total_steps=4)) == 2
    line = _error_line(capsys)
    assert line == (
        f"jft pretrain: error: {damaged} is damaged (its SHA-256 is not the one jft prepare recorded); prepare the "
        f"rows again: {command}"
    )
    assert _snapshot(workdir) == before  # no update, no checkpoint, no event file: nothing changed
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]

    advised = shlex.split(line.split("prepare the rows again: ", 1)[1])
    assert advised[:2] == ["jft", "prepare"] and cli.main(advised[1:]) == 0
    assert json.loads((rows / "metadata.json").read_text())["splits"] == meta["splits"]  # the same rows again
    assert cli.main(_pretrain(workdir, rows, total_steps=4)) == 0
    assert "resuming at step 2 of 4" in capsys.readouterr().out
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]


def test_a_truncated_shard_is_found_when_the_loader_is_made(inputs, tmp_path, capsys):
    rows = tmp_path / "rows"
    prepare(str(inputs / "corpus.txt"), inputs / "vocab", rows, seq_len=32, eval_fraction=0.2, progress=False)
    shard = rows / "eval-000000-000.word_start.npy"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])
    message = (
        f"{shard} is damaged (100 bytes, not the {size:,} jft prepare wrote); prepare the rows again: "
        f"{prepare_command(rows, json.loads((rows / 'metadata.json').read_text()))}"
    )
    Loader(PretrainRows(rows, "train"), 4, 0)  # the train split's files are whole
    with pytest.raises(JftError) as caught:
        Loader(PretrainRows(rows, "eval"), 4, 0, single_pass=True)
    assert str(caught.value) == message
    assert cli.main(["shards", str(rows), "--streams", "1", "--process", "0"]) == 2
    assert _error_line(capsys) == f"jft shards: error: {message}"


def test_rows_without_recorded_digests_still_load(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(REPO / "tests" / "fixtures" / "runs_694ba27" / "pretrain" / "data", old)
    rows = PretrainRows(old)
    assert "files" not in rows.shards[0] and prepare_command(old, rows.metadata) is None
    batch = Loader(rows, 4, 0).batch(0)
    assert batch["input_ids"].shape == (4, 32)


def test_prepare_records_every_setting_and_its_command_writes_the_same_rows(inputs, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    documents = (inputs / "corpus.txt").read_text().split("\n\n")
    records = [json.dumps({"body": d.strip().replace("\n", " ")}) for d in documents if d.strip()]
    corpus.write_text("\n".join(records) + "\n")
    rows = tmp_path / "rows with space"
    settings = dict(seq_len=24, mode="packed", seed=3, eval_fraction=0.2, short_seq_prob=0.3, rows_per_shard=7)
    meta = prepare(
        str(corpus), inputs / "vocab", rows, window_documents=9, text_field="body", progress=False, **settings
    )
    assert {key: meta[key] for key in settings} == settings
    assert meta["window_documents"] == 9 and meta["text_field"] == "body" and meta["tfds_data_dir"] is None
    assert meta["sources"][0]["source"] == str(corpus) and len(meta["splits"]["train"]["shards"]) > 5
    for shard in meta["splits"]["train"]["shards"] + meta["splits"]["eval"]["shards"]:
        assert set(shard["files"]) == set(jft.data.prepare.FIELDS)
        for field, recorded in shard["files"].items():
            data = (rows / f"{shard['prefix']}.{field}.npy").read_bytes()
            assert recorded["bytes"] == len(data)
            assert recorded["sha256"] == hashlib.sha256(data).hexdigest()
    before = _snapshot(rows)
    _flip_bytes(rows / "eval-000000-000.token_type_ids.npy")
    (rows / "train-000001-000.input_ids.npy").unlink()
    advised = shlex.split(prepare_command(rows, meta))
    assert cli.main(advised[1:]) == 0
    after = _snapshot(rows)
    assert [name for name in before if before[name] != after.get(name)] == ["metadata.json"]  # its "seconds"
    again = json.loads(after["metadata.json"])
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in meta.items() if k != "seconds"}


def test_metadata_that_is_not_json_is_one_line_naming_it(inputs, tmp_path):
    rows = tmp_path / "rows"
    prepare(str(inputs / "corpus.txt"), inputs / "vocab", rows, seq_len=32, progress=False)
    (rows / "metadata.json").write_text("{")
    with raises_one_line(f"^{rows}/metadata.json is not valid JSON: .* at line 1, column 2.$"):
        PretrainRows(rows)


def test_shards_refuses_what_pretraining_refuses_and_lists_only_the_rows_files(inputs, tmp_path, capsys):
    rows = tmp_path / "rows"
    prepare(str(inputs / "corpus.txt"), inputs / "vocab", rows, seq_len=32, window_documents=15, progress=False)
    with pytest.raises(JftError) as caught:
        Loader(PretrainRows(rows), 1000, 0, streams=1000)
    assert cli.main(["shards", str(rows), "--streams", "1000", "--process", "3"]) == 2
    assert _error_line(capsys) == f"jft shards: error: {caught.value}"

    listed = set()
    for process in (0, 1):
        assert cli.main(["shards", str(rows), "--streams", "2", "--process", str(process)]) == 0
        names = capsys.readouterr().out.split()
        assert all((rows / name).is_file() for name in names)
        listed |= set(names)
    assert listed == {p.name for p in rows.iterdir()}

    no_eval = tmp_path / "no-eval"  # an eval split without rows lists no eval files
    prepare(str(inputs / "corpus.txt"), inputs / "vocab", no_eval, seq_len=32, eval_fraction=0.0, progress=False)
    assert cli.main(["shards", str(no_eval), "--streams", "1", "--process", "0"]) == 0
    names = capsys.readouterr().out.split()
    assert names[:2] == ["metadata.json", "tokenizer.json"] and not [n for n in names if n.startswith("eval")]
    assert set(names) == {p.name for p in no_eval.iterdir()}

    (rows / "train-000001-000.lengths.npy").unlink()
    assert cli.main(["shards", str(rows), "--streams", "1", "--process", "0"]) == 2
    assert "1 of their files are not there (first: train-000001-000.lengths.npy)" in _error_line(capsys)
    assert cli.main(["shards", str(tmp_path / "nowhere"), "--streams", "1", "--process", "0"]) == 2
    assert _error_line(capsys) == (
        f"jft shards: error: {tmp_path / 'nowhere'} is not a prepared corpus (no metadata.json); run `jft prepare` "
        "first."
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metadata.json").write_text('{"format": "something else"}')
    assert cli.main(["shards", str(tmp_path / "other"), "--streams", "1", "--process", "0"]) == 2
    assert _error_line(capsys) == (
        f"jft shards: error: {tmp_path / 'other'} is not a prepared corpus (its metadata.json is not one `jft "
        "prepare` writes); run `jft prepare` first."
    )


def test_a_full_disk_names_the_file_and_keeps_the_windows_done(inputs, tmp_path, monkeypatch, capsys):
    rows = tmp_path / "rows"
    command = _prepare(inputs, rows, "--seq-len", "32", "--window-documents", "10", "--workers", "1")
    real = jft.data.prepare._HashingFile.write

    def write(self, data):  # the disk fills up at window 2: a write's error names no file
        if "-000002-" in self.file.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(jft.data.prepare._HashingFile, "write", write)
    assert cli.main(command) == 1
    assert _error_line(capsys) == (
        f"jft prepare: error: No space left on device: {rows}.tmp/train-000002-000.input_ids.npy; the windows done "
        f"so far stay in {rows}.tmp, and the same command resumes from them once there is room."
    )
    assert not rows.exists() and len(list((tmp_path / "rows.tmp" / "windows").glob("*.json"))) == 2
    assert not list((tmp_path / "rows.tmp").glob(".*.tmp"))  # no half-written file

    monkeypatch.setattr(jft.data.prepare._HashingFile, "write", real)
    assert cli.main(command) == 0
    assert f"resuming the prepare in {rows}.tmp: 2 windows done" in capsys.readouterr().out
    whole = prepare(str(inputs / "corpus.txt"), inputs / "vocab", tmp_path / "whole", seq_len=32, window_documents=10)
    assert json.loads((rows / "metadata.json").read_text())["fingerprint"] == whole["fingerprint"]


def _children(parent: int) -> dict[int, str]:
    """The processes whose parent is `parent` (from /proc): pid -> command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent on Linux")
def test_the_workers_of_a_killed_prepare_die_with_it(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", documents=4000)
    vocab = corpus_vocab(corpus, tmp_path / "vocab")
    out = tmp_path / "rows"
    command = [sys.executable, "-m", "jft.cli", "prepare", str(corpus), "--vocab", str(vocab), "--out", str(out)]
    command += ["--seq-len", "32", "--window-documents", "20", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = tmp_path / "rows.tmp" / "windows"
    deadline = time.monotonic() + 60
    workers: dict = {}
    while time.monotonic() < deadline and process.poll() is None:
        workers = {pid: line for pid, line in _children(process.pid).items() if "spawn_main" in line}
        if len(workers) == 2 and any(markers.glob("*.json")):  # both started, windows being written
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(workers) == 2 and not out.exists(), "the prepare ended before its workers were seen"
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:  # not to leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors

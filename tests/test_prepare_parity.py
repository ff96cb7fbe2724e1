"""One prepare path: `jft prepare` and a pretraining's own prepare of data.corpus write the same rows
(and fingerprint) for the same vocabulary, seq_len, mode and seed, because they share every default;
and the test environment's packages agree with each other (pip check)."""

import argparse
import inspect
import json
import subprocess
import sys

import numpy as np

from conftest import REPO, SMALL_PRETRAIN, corpus_vocab, write_corpus
from jft import cli
from jft.data.prepare import FIELDS, prepare
from jft.defaults import pretrain as pretrain_defaults

TINY = str(REPO / "configs" / "pretrain" / "tiny.py")


def _arrays(directory) -> dict[str, np.ndarray]:
    return {path.name: np.load(path) for path in sorted(directory.glob("*.npy"))}


def test_jft_prepare_and_a_pretrainings_prepare_write_the_same_rows(tmp_path, capsys):
    text = write_corpus(tmp_path / "corpus.txt", documents=150)
    vocab = corpus_vocab(text, tmp_path / "vocab")
    argv = ["prepare", str(text), "--vocab", str(vocab), "--out", str(tmp_path / "rows"), "--seq-len", "32"]
    assert cli.main(argv + ["--workers", "1"]) == 0
    settings = {**SMALL_PRETRAIN, "total_steps": 1, "parallel.backend": "jit"}
    settings |= {"data.corpus": str(text), "data.vocab": str(vocab)}
    flags = [f"--config.{key}={value}" for key, value in settings.items()]
    capsys.readouterr()
    assert cli.main(["pretrain", "--config", TINY, "--workdir", str(tmp_path / "run"), *flags]) == 0
    out = capsys.readouterr().out

    ours, theirs = tmp_path / "rows", tmp_path / "run" / "data"
    mine, its = (json.loads((d / "metadata.json").read_text()) for d in (ours, theirs))
    assert mine["fingerprint"] == its["fingerprint"]
    assert {k: v for k, v in mine.items() if k != "seconds"} == {k: v for k, v in its.items() if k != "seconds"}
    a, b = _arrays(ours), _arrays(theirs)
    assert a.keys() == b.keys() and {name.split(".")[-2] for name in a} == set(FIELDS)
    assert all(np.array_equal(a[name], b[name]) and a[name].dtype == b[name].dtype for name in a)
    # The run names what it prepared, with the settings `jft prepare` takes.
    rows = f"rows: train {its['splits']['train']['rows']:,}, eval {its['splits']['eval']['rows']:,}"
    assert f"prepared {theirs}: 150 documents, {its['tokens']:,} tokens, {rows} (seq_len 32, mode pairs, " in out
    named = "seed 0, eval_fraction 0.01, short_seq_prob 0.1, window_documents 10000, rows_per_shard 65536"
    assert f"{named}; fingerprint {its['fingerprint'][:12]})" in out


def test_the_defaults_of_both_paths_are_one():
    """The 35,233 rows against 36,048 of issue #31: data.eval_fraction was 0.02, jft prepare's 0.01."""
    parser = argparse.ArgumentParser()
    cli._prepare_arguments(parser)
    given = vars(parser.parse_args(["corpus.txt", "--vocab", "v", "--out", "o"]))
    function = {name: p.default for name, p in inspect.signature(prepare).parameters.items()}
    for key in ("seq_len", "mode", "seed", "eval_fraction", "short_seq_prob", "rows_per_shard", "window_documents"):
        assert given[key] == function[key], key
    config = pretrain_defaults()
    assert config.data.eval_fraction == function["eval_fraction"] == 0.01
    assert (config.data.seq_len, config.data.mode, config.seed) == (function["seq_len"], function["mode"], 0)
    assert config.data.lowercase == (not given["cased"]) == function["lowercase"]


def test_pip_check_passes():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

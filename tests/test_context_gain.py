"""Unigram entropy and context gain: `jft prepare` records the entropy of the tokens masking can
pick (the masked-LM loss of a model that knows token frequencies alone); pretraining reports its
held-out loss below it as context_gain and warns at the end when that is under
guard.min_context_gain; context_warning(workdir) says the same of a run directory."""

import json
import shutil

import numpy as np
import pytest

import jft.data.prepare as prepare_module
from conftest import REPO, SMALL_PRETRAIN, write_corpus, write_topic_task, write_vocab
from jft import cli
from jft.data.prepare import prepare
from jft.pretrain import context_warning
from jft.train.masking import MaskingConfig

TINY = str(REPO / "configs" / "pretrain" / "tiny.py")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A corpus whose sentences follow one pattern ("the ADJ NOUN VERB the NOUN near the NOUN."):
    from context, a model knows which kind of word a gap holds, and the topic of its nouns; and a
    fixed vocabulary (every word whole), so runs repeat exactly."""
    root = tmp_path_factory.mktemp("context")
    text = write_corpus(root / "corpus.txt", documents=200)
    vocab = write_vocab(root / "vocab.txt")
    prepare(str(text), vocab, root / "rows", seq_len=32, eval_fraction=0.1, progress=False)
    return root


def _direct_entropy(rows) -> float:
    """From the train shards with numpy: the tokens of every row up to its length, but those masking never picks."""
    meta = json.loads((rows / "metadata.json").read_text())
    never = MaskingConfig.for_vocabulary(meta["special_ids"], meta["vocab_size"]).special_ids
    tokens = []
    for shard in meta["splits"]["train"]["shards"]:
        ids = np.load(rows / f"{shard['prefix']}.input_ids.npy")
        lengths = np.load(rows / f"{shard['prefix']}.lengths.npy")
        tokens.append(ids[np.arange(ids.shape[1])[None, :] < lengths[:, None]])
    tokens = np.concatenate(tokens).astype(np.int64)
    tokens = tokens[~np.isin(tokens, never)]
    _, counts = np.unique(tokens, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_the_entropy_is_that_of_the_train_tokens_masking_can_pick(inputs):
    meta = json.loads((inputs / "rows" / "metadata.json").read_text())
    assert meta["unigram_entropy"] == pytest.approx(_direct_entropy(inputs / "rows"), rel=1e-12)
    assert 0 < meta["unigram_entropy"] < np.log(meta["vocab_size"])


class Stopped(Exception):
    pass


def test_a_resumed_prepare_of_many_windows_records_the_same_entropy(inputs, tmp_path, monkeypatch):
    settings = dict(seq_len=32, mode="packed", window_documents=30, eval_fraction=0.1, progress=False)
    whole = prepare(str(inputs / "corpus.txt"), inputs / "vocab.txt", tmp_path / "whole", **settings)
    assert whole["unigram_entropy"] == pytest.approx(_direct_entropy(tmp_path / "whole"), rel=1e-12)

    window = prepare_module.prepare_window

    def stop_at_window_3(job, index, documents):
        if index == 3:
            raise Stopped
        return window(job, index, documents)

    monkeypatch.setattr(prepare_module, "prepare_window", stop_at_window_3)
    with pytest.raises(Stopped):
        prepare(str(inputs / "corpus.txt"), inputs / "vocab.txt", tmp_path / "rows", **settings)
    assert len(list((tmp_path / "rows.tmp" / prepare_module.WINDOWS).glob("*.json"))) == 3
    monkeypatch.setattr(prepare_module, "prepare_window", window)
    resumed = prepare(str(inputs / "corpus.txt"), inputs / "vocab.txt", tmp_path / "rows", **settings)
    assert resumed["fingerprint"] == whole["fingerprint"]
    assert resumed["unigram_entropy"] == pytest.approx(whole["unigram_entropy"], rel=1e-12)


def _pretrain(workdir, rows, capsys, **settings) -> tuple[list[dict], str]:
    """A tiny pretraining on rows: its evaluations (metrics.jsonl) and its stderr."""
    settings = {**SMALL_PRETRAIN, "parallel.backend": "jit", "data.prepared": str(rows), **settings}
    flags = [f"--config.{key}={value}" for key, value in settings.items()]
    capsys.readouterr()
    assert cli.main(["pretrain", "--config", TINY, "--workdir", str(workdir), *flags]) == 0
    err = capsys.readouterr().err
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "eval"], err


def test_a_pretraining_that_learns_nothing_is_warned_about(inputs, tmp_path, capsys):
    entropy = json.loads((inputs / "rows" / "metadata.json").read_text())["unigram_entropy"]
    evals, err = _pretrain(tmp_path / "run", inputs / "rows", capsys, total_steps=2, **{"optim.lr": 1e-9})
    last = evals[-1]
    assert last["context_gain"] == pytest.approx(entropy - last["mlm_loss"], abs=1e-9) and last["context_gain"] < 0
    text = (
        f"the held-out MLM loss ({last['mlm_loss']:.2f}) is not below the unigram entropy of the data "
        f"({entropy:.2f}) by guard.min_context_gain (0.1): this pretraining has learned token frequencies, not "
        "context; fine-tuning from it may do worse than from scratch. Train longer, or with a higher optim.lr."
    )
    assert f"warning: {text}\n" in err
    assert context_warning(tmp_path / "run") == text
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["unigram_entropy"] == entropy
    assert context_warning(tmp_path / "run", min_gain=0) is None  # 0: off
    assert context_warning(tmp_path / "nowhere") is None and context_warning(inputs) is None
    # fine-tuning from it says so once, at the start
    write_topic_task(tmp_path / "train.csv", 16, seed=0)
    task = {"init_from": tmp_path / "run", "data.train": tmp_path / "train.csv", "data.seq_len": 32, "epochs": 1}
    task |= {"progress": False, "parallel.backend": "jit"}
    command = ["finetune", "--config", "finetune/tiny", "--workdir", str(tmp_path / "task")]
    assert cli.main(command + [f"--config.{key}={value}" for key, value in task.items()]) == 0
    assert capsys.readouterr().err.count(f"warning: init_from {tmp_path / 'run'}: {text}\n") == 1

    # 0 turns the warning off in the run as well (and context_warning follows the run's setting).
    off = {"optim.lr": 1e-9, "guard.min_context_gain": 0}
    _, silent = _pretrain(tmp_path / "off", inputs / "rows", capsys, total_steps=2, **off)
    assert "held-out MLM loss" not in silent and context_warning(tmp_path / "off") is None
    assert context_warning(tmp_path / "off", min_gain=0.1) == text


def test_rows_of_an_earlier_jft_have_no_context_gain_and_no_warning(inputs, tmp_path, capsys):
    rows = tmp_path / "old"
    shutil.copytree(inputs / "rows", rows)
    meta = json.loads((rows / "metadata.json").read_text())
    del meta["unigram_entropy"]
    (rows / "metadata.json").write_text(json.dumps(meta))
    evals, err = _pretrain(tmp_path / "run", rows, capsys, total_steps=2, **{"optim.lr": 1e-9})
    assert evals and "context_gain" not in evals[-1] and "held-out MLM loss" not in err
    assert "unigram_entropy" not in json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert context_warning(tmp_path / "run") is None


def test_a_pretraining_that_learns_context_gains_and_is_not_warned_about(inputs, tmp_path, capsys):
    settings = {"total_steps": 100, "eval_every": 100, "optim.lr": 5e-3, "optim.warmup_steps": 20}
    evals, err = _pretrain(tmp_path / "run", inputs / "rows", capsys, **settings)
    assert evals[-1]["context_gain"] > 0.5  # about 0.9 nats; the threshold is 0.1
    assert "held-out MLM loss" not in err and context_warning(tmp_path / "run") is None

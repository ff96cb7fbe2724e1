"""Faults and bad input, table-driven: every mistake a user can make is one line on stderr that
says what is wrong, where, and what to do, with the documented exit code, and the inputs and the
workdir are left as they were.

Each case builds its wrong input in a fresh directory, runs the `jft` command in-process, and
checks the whole stderr line against the expected message ({tmp}: the case's directory, {files}:
the shared inputs, {*}: any text).
"""

import errno
import gzip
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy

from conftest import REPO, SMALL_PRETRAIN, TINY_MODEL, corpus_vocab, write_corpus, write_topic_task
from conftest import FaultCase as Case
from jft import cli
from jft.data.prepare import prepare
from jft.models import hf
from jft.models.bert import BertConfig, BertForPreTraining, init_params
from jft.train import rundir
from jft.train.checkpoint import Checkpoints

pytestmark = pytest.mark.xdist_group("faults")  # one worker: the cases share their inputs

PRETRAIN = str(REPO / "configs" / "pretrain" / "tiny.py")
FINETUNE = str(REPO / "configs" / "finetune" / "tiny.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Inputs the cases share and must leave alone: a corpus, its vocabulary and rows, a tiny
    Hugging Face BERT, and a labeled task."""
    root = tmp_path_factory.mktemp("inputs")
    write_corpus(root / "corpus.txt", documents=40)
    corpus_vocab(root / "corpus.txt", root / "vocab")
    prepare(str(root / "corpus.txt"), root / "vocab", root / "rows", seq_len=32, progress=False)
    config = BertConfig(vocab_size=200, **TINY_MODEL)
    shutil.copytree(root / "vocab", root / "hf")
    hf.save(root / "hf", config, init_params(BertForPreTraining(config), jax.random.PRNGKey(0)))
    write_topic_task(root / "train.csv", 24, seed=0)
    return root


def _finetune(tmp: Path, files: Path, **settings) -> list[str]:
    values = {"init_from": files / "hf", "data.train": files / "train.csv", "data.seq_len": 32, "progress": False}
    values.update(settings)
    return ["finetune", "--config", FINETUNE, "--workdir", str(tmp / "run")] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def _model_with_vocab(files: Path, out: Path, vocab: str) -> Path:
    """A copy of the shared Hugging Face BERT with vocab as its vocabulary."""
    shutil.copytree(files / "hf", out)
    (out / "tokenizer.json").unlink(missing_ok=True)
    _write(out / "vocab.txt", vocab)
    return out


def _with_workdir(command: list[str], workdir: Path) -> list[str]:
    """command (jft pretrain or finetune) with another --workdir."""
    at = command.index("--workdir") + 1
    return [*command[:at], str(workdir), *command[at + 1 :]]


def _prepare(files: Path, out: Path, *options: str) -> list[str]:
    """`jft prepare` of the shared corpus with its vocabulary into out."""
    return ["prepare", str(files / "corpus.txt"), "--vocab", str(files / "vocab"), "--out", str(out), *options]


def _pretrain(tmp: Path, files: Path, **settings) -> list[str]:
    values = {**SMALL_PRETRAIN, "data.prepared": files / "rows", **settings}
    return ["pretrain", "--config", PRETRAIN, "--workdir", str(tmp / "run")] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _hf_copy(tmp: Path, files: Path, change: Callable[[Path], None]) -> Path:
    """A copy of the tiny Hugging Face BERT, damaged by change(directory)."""
    directory = tmp / "bert"
    shutil.copytree(files / "hf", directory)
    change(directory)
    return directory


def _edit_config(directory: Path, edit: Callable[[dict], object]) -> None:
    values = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(edit(values)))


def _edit_tensors(directory: Path, edit: Callable[[dict], None]) -> None:
    tensors = safetensors.numpy.load_file(directory / "model.safetensors")
    edit(tensors)
    safetensors.numpy.save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _nan_embedding(tensors: dict) -> None:
    tensors["bert.embeddings.word_embeddings.weight"][3, 5] = np.nan


def _drop_layer_tensor(tensors: dict) -> None:
    del tensors["bert.encoder.layer.1.attention.self.query.weight"]


def _sharded_outside(directory: Path) -> None:
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    names = safetensors.numpy.load_file(directory / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "../../../etc/passwd")}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


CASES = [
    # Settings, checked before anything is read or written.
    Case("epochs 0", lambda t, f: _finetune(t, f, epochs=0), "jft finetune: error: epochs must be at least 1, got 0."),
    Case(
        "epochs -1", lambda t, f: _finetune(t, f, epochs=-1), "jft finetune: error: epochs must be at least 1, got -1."
    ),
    Case(
        "batch size 0",
        lambda t, f: _finetune(t, f, batch_size=0),
        "jft finetune: error: batch_size must be at least 1, got 0.",
    ),
    Case(
        "log_every 0",
        lambda t, f: _finetune(t, f, log_every=0),
        "jft finetune: error: log_every must be at least 1, got 0.",
    ),
    Case(
        "best metric misspelt",
        lambda t, f: _finetune(t, f, best_metric="acc"),
        "jft finetune: error: best_metric 'acc' is not a score of this task; choose one of accuracy, mcc, macro_f1.",
    ),
    Case(
        "negative learning rate",
        lambda t, f: _finetune(t, f, **{"optim.lr": -0.001}),
        "jft finetune: error: optim.lr must be a positive number, got -0.001.",
    ),
    Case(
        "NaN learning rate",
        lambda t, f: _pretrain(t, f, **{"optim.lr": "nan"}),
        "jft pretrain: error: optim.lr must be a positive number, got nan.",
    ),
    Case(
        "several optimizer mistakes at once",
        lambda t, f: _finetune(t, f, **{"optim.b2": 1.0, "optim.eps": 0.0, "optim.name": "adam"}),
        "jft finetune: error: optim.name 'adam' is not one of adamw, lamb, sgd; optim.b2 must be in [0, 1), "
        "got 1.0; "
        "optim.eps must be a positive number, got 0.0.",
    ),
    Case(
        "a TPU kernel on a CPU",
        lambda t, f: _finetune(t, f, **{"model.attention_impl": "splash", "model.attention_probs_dropout_prob": 0}),
        "jft finetune: error: attention_impl 'splash' is a TPU kernel and this is cpu "
        "(--config.model.attention_impl=xla runs anywhere).",
    ),
    Case(
        "float16 training",
        lambda t, f: _finetune(t, f, **{"model.dtype": "float16"}),
        "jft finetune: error: model.dtype float16 cannot train: jft has no loss scaling, so small gradients would "
        "vanish; use bfloat16 (the same speed on GPUs and TPUs, float32's range) or float32.",
    ),
    Case(
        "keep no checkpoint",
        lambda t, f: _pretrain(t, f, keep_checkpoints=0),
        "jft pretrain: error: keep_checkpoints must be at least 1, got 0: the newest checkpoint is the run.",
    ),
    Case(
        "no steps",
        lambda t, f: _pretrain(t, f, total_steps=0),
        "jft pretrain: error: total_steps must be at least 1, got 0.",
    ),
    Case(
        "masking rate above 1",
        lambda t, f: _pretrain(t, f, **{"masking.rate": 1.5}),
        "jft pretrain: error: masking.rate must be between 0 and 1 and masking.max_predictions at least 1, got 1.5 "
        "and 5.",
    ),
    Case(
        "guard that never lets a run go on",
        lambda t, f: _pretrain(t, f, **{"guard.max_skipped_in_a_row": 0}),
        "jft pretrain: error: guard.max_skipped_in_a_row must be at least 1, got 0.",
    ),
    Case(
        "a synonym for a key",
        lambda t, f: _finetune(t, f, learning_rate=0.1),
        "jft finetune: error: unknown config key 'learning_rate'.{*}",
    ),
    Case(
        "a value of the wrong type",
        lambda t, f: _finetune(t, f, epochs="three"),
        "jft finetune: error: 'epochs' takes an integer; 'three' is not one.",
    ),
    Case(
        "unknown layout",
        lambda t, f: _finetune(t, f, **{"data.layout": "packd"}),
        "jft finetune: error: data.layout 'packd' is not one of padded, bucketed, packed.",
    ),
    Case(
        "unknown L2 reference",
        lambda t, f: _finetune(t, f, **{"l2.reference": "both"}),
        "jft finetune: error: l2.reference 'both' is not one of auto, zero, init.",
    ),
    Case(
        "unknown task kind",
        lambda t, f: _finetune(t, f, task="ner"),
        "jft finetune: error: task 'ner' is not one of classification, regression, token_classification, "
        "question_answering, multiple_choice.",
    ),
    Case(
        "negative L2 weight",
        lambda t, f: _finetune(t, f, **{"l2.weight": -1.0}),
        "jft finetune: error: l2.weight and joint_mlm.weight must be 0 or more, got -1.0, 0.0.",
    ),
    Case(
        "corpus and prepared rows both",
        lambda t, f: _pretrain(t, f, **{"data.corpus": f / "corpus.txt"}),
        "jft pretrain: error: set data.corpus (prepared into <workdir>/data) or data.prepared (a `jft prepare` "
        "directory), not both.",
    ),
    Case(
        "a config file with a syntax error",
        lambda t, f: ["finetune", "--config", str(_write(t / "bad.py", "def get_config(:\n")), "--workdir", "x"],
        "jft finetune: error: {tmp}/bad.py:1 is not valid Python (invalid syntax).",
    ),
    Case(
        "a config that imports a module with a syntax error",
        lambda t, f: [
            "finetune",
            "--config",
            (
                _write(t / "helper_broken.py", "X = 1\ndef f(:\n"),
                str(
                    _write(
                        t / "uses_helper.py",
                        "import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\nimport helper_broken\n",
                    )
                ),
            )[1],
            "--workdir",
            "x",
        ],
        "jft finetune: error: {tmp}/helper_broken.py:2 is not valid Python (invalid syntax).",
    ),
    Case(
        "a config argument the file does not know",
        lambda t, f: ["finetune", "--config", str(REPO / "configs/finetune/glue.py:mprc"), "--workdir", "x"],
        f"jft finetune: error: {REPO}/configs/finetune/glue.py: get_config('mprc') failed: unknown GLUE task 'mprc'; "
        "choose one of cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wnli",
    ),
    # Hugging Face directories.
    Case(
        "truncated safetensors",
        lambda t, f: ["inspect", str(_hf_copy(t, f, lambda d: _truncate(d / "model.safetensors")))],
        "jft inspect: error: {tmp}/bert/model.safetensors is not a readable safetensors file ({*}); it is damaged or "
        "incomplete: copy or convert it again.",
    ),
    Case(
        "config.json that is not JSON",
        lambda t, f: ["inspect", str(_hf_copy(t, f, lambda d: _write(d / "config.json", '{"hidden_size": 32,,}')))],
        "jft inspect: error: {tmp}/bert/config.json is not valid JSON: Expecting property name enclosed in double "
        "quotes at line 1, column 20.",
    ),
    Case(
        "config.json that is a list",
        lambda t, f: ["inspect", str(_hf_copy(t, f, lambda d: _write(d / "config.json", "[1, 2]")))],
        "jft inspect: error: {tmp}/bert/config.json holds a JSON array, not an object {...}.",
    ),
    Case(
        "sizes written as strings",
        lambda t, f: ["inspect", str(_hf_copy(t, f, lambda d: _edit_config(d, lambda c: {**c, "hidden_size": "32"})))],
        "jft inspect: error: {tmp}/bert/config.json: invalid model config: hidden_size must be an integer, got '32'.",
    ),
    Case(
        "a config without sizes",
        lambda t, f: [
            "inspect",
            str(_hf_copy(t, f, lambda d: _edit_config(d, lambda c: {"model_type": "bert", "vocab_size": 200}))),
        ],
        "jft inspect: error: {tmp}/bert/config.json lacks hidden_size, num_hidden_layers, num_attention_heads, "
        "intermediate_size; jft does not guess a model's sizes. Use the config.json that came with the weights.",
    ),
    Case(
        "a layer tensor missing",
        lambda t, f: ["inspect", str(_hf_copy(t, f, lambda d: _edit_tensors(d, _drop_layer_tensor)))],
        "jft inspect: error: {tmp}/bert/model.safetensors is incomplete: layer 1 has no attention/self/query/kernel.",
    ),
    Case(
        "more layers in the config than in the weights",
        lambda t, f: [
            "inspect",
            str(_hf_copy(t, f, lambda d: _edit_config(d, lambda c: {**c, "num_hidden_layers": 3}))),
        ],
        "jft inspect: error: {tmp}/bert/model.safetensors has 2 encoder layers, but its config.json says "
        "num_hidden_layers=3; the weights and the config must come from the same model.",
    ),
    Case(
        "a shard index that points outside its directory",
        lambda t, f: ["inspect", str(_hf_copy(t, f, _sharded_outside))],
        "jft inspect: error: the shard index {tmp}/bert/model.safetensors.index.json names files outside its "
        "directory (../../../etc/passwd); shards must be plain file names beside the index. Not read.",
    ),
    Case(
        "a NaN weight",
        lambda t, f: ["inspect", str(_hf_copy(t, f, lambda d: _edit_tensors(d, _nan_embedding)))],
        "jft inspect: error: {tmp}/bert/model.safetensors holds weights that are not finite (NaN or infinity): "
        "bert/embeddings/word_embeddings/embedding (1 of 6,400 values); such a model computes nothing useful. Use "
        "an earlier checkpoint or other weights.",
    ),
    Case(
        "a NaN weight as init_from",
        lambda t, f: _finetune(t, f, init_from=_hf_copy(t, f, lambda d: _edit_tensors(d, _nan_embedding))),
        "jft finetune: error: {tmp}/bert/model.safetensors holds weights that are not finite (NaN or infinity): "
        "bert/embeddings/word_embeddings/embedding (1 of 6,400 values); such a model computes nothing useful. Use "
        "an earlier checkpoint or other weights.",
    ),
    Case(
        "init_from a directory that is no model",
        lambda t, f: _finetune(t, f, init_from=_write(t / "empty" / "notes.txt", "x").parent),
        "jft finetune: error: init_from {tmp}/empty is neither a jft workdir (run.json) nor a Hugging Face model "
        "directory (config.json and weights).",
    ),
    Case(
        "init_from the folder a model is in",
        lambda t, f: _finetune(t, f, init_from=shutil.copytree(f / "hf", t / "package" / "model").parent),
        "jft finetune: error: init_from {tmp}/package is neither a jft workdir (run.json) nor a Hugging Face model "
        "directory (config.json and weights). There is one inside it: {tmp}/package/model.",
    ),
    Case(
        "init_from nowhere",
        lambda t, f: _finetune(t, f, init_from=t / "nowhere"),
        "jft finetune: error: init_from {tmp}/nowhere does not exist; give a jft workdir or a Hugging Face model "
        "directory.",
    ),
    # Task data.
    Case(
        "a CSV that is not UTF-8",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", b"text,label\nok,x\ncaf\xe9 noir,y\n")}),
        "jft finetune: error: {tmp}/a.csv:3 is not UTF-8 text (byte 0xe9); save the file as UTF-8 (e.g. `iconv -f "
        "latin1 -t utf-8`).",
    ),
    Case(
        "a broken JSONL line",
        lambda t, f: _finetune(
            t, f, **{"data.train": _write(t / "a.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", label}\n')}
        ),
        "jft finetune: error: {tmp}/a.jsonl:3 is not valid JSON (Expecting property name enclosed in double quotes, "
        "column 15).",
    ),
    Case(
        "a JSONL line that is not an object",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.jsonl", '{"text": "a", "label": "x"}\n[1]\n')}),
        "jft finetune: error: {tmp}/a.jsonl:2 is a JSON array, not an object {...}.",
    ),
    Case(
        "a tab-separated file named .csv",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "text\tlabel\nthe ship\tsea\n")}),
        "jft finetune: error: {tmp}/a.csv looks tab-separated (its header is 'text\\tlabel'); name it .tsv.",
    ),
    Case(
        "a semicolon-separated csv",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "text;label\nthe ship, at sea;sea\n")}),
        "jft finetune: error: {tmp}/a.csv looks semicolon-separated (its header is 'text;label'); jft reads CSV with "
        "commas: save it with commas (or tabs, as .tsv).",
    ),
    Case(
        "a row without its label",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "text,label\nthe ship,sea\nthe cow\n")}),
        "jft finetune: error: {tmp}/a.csv:3 has no value in column 'label' (the label).",
    ),
    Case(
        "one label in the training data",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "text,label\nthe ship,sea\nthe boat,sea\n")}),
        "jft finetune: error: data.train {tmp}/a.csv has one label, 'sea', in column 'label': a classifier learns "
        "from two classes or more. Check data.label_column, or add examples of the other classes.",
    ),
    Case(
        "a row with an empty label",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "text,label\nthe ship,sea\nthe cow,\n")}),
        "jft finetune: error: {tmp}/a.csv:3 has no value in column 'label' (the label).",
    ),
    Case(
        "a row with more fields than the header",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "text,label\nthe ship,sea,extra\n")}),
        "jft finetune: error: {tmp}/a.csv:2 has more fields than the header (2); put a field that holds the "
        "separator (',') in double quotes.",
    ),
    Case(
        "a column that is not there",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "sentence,label\nthe ship,sea\n")}),
        "jft finetune: error: {tmp}/a.csv has no column 'text' (columns: label, sentence); map yours with "
        "--config.data.text_column, text_pair_column and label_column.",
    ),
    Case(
        "a regression label that is not a number",
        lambda t, f: _finetune(
            t, f, task="regression", **{"data.train": _write(t / "a.csv", "text,label\na,1.5\nb,high\n")}
        ),
        "jft finetune: error: {tmp}/a.csv:3: the label 'high' is not a number; a regression task needs scores.",
    ),
    Case(
        "more tags than words",
        lambda t, f: _finetune(
            t,
            f,
            task="token_classification",
            **{"data.train": _write(t / "a.jsonl", '{"text": ["the", "ship"], "label": ["O", "B-X", "O"]}\n')},
        ),
        "jft finetune: error: {tmp}/a.jsonl:1 has 2 words but 3 tags; give one tag a word.",
    ),
    Case(
        "fewer tags than words",
        lambda t, f: _finetune(
            t,
            f,
            task="token_classification",
            **{"data.train": _write(t / "a.jsonl", '{"text": ["the", "ship", "sails"], "label": ["O"]}\n')},
        ),
        "jft finetune: error: {tmp}/a.jsonl:1 has 3 words but 1 tags; give one tag a word.",
    ),
    Case(
        "words given as one string",
        lambda t, f: _finetune(
            t,
            f,
            task="token_classification",
            **{"data.train": _write(t / "a.jsonl", '{"text": "the ship", "label": ["O", "O"]}\n')},
        ),
        "jft finetune: error: {tmp}/a.jsonl:1: column 'text' must be a list of words (strings), got 'the ship'.",
    ),
    Case(
        "an empty word to tag",
        lambda t, f: _finetune(
            t,
            f,
            task="token_classification",
            **{"data.train": _write(t / "a.jsonl", '{"text": ["the", "", "ship"], "label": ["O", "O", "O"]}\n')},
        ),
        "jft finetune: error: {tmp}/a.jsonl:1: word 2 of column 'text' is empty or only spaces (''); it has no token "
        "to tag: remove it (and its tag).",
    ),
    Case(
        "an evaluation label the training data never had",
        lambda t, f: _finetune(t, f, **{"data.eval": _write(t / "dev.csv", "text,label\nthe ship,ocean\n")}),
        "jft finetune: error: {tmp}/dev.csv:2: label 'ocean' is not in the task's label set ['city', 'farm', 'sea', "
        "'space']; fix the data, or fine-tune again with this label in the training data.",
    ),
    Case(
        "an empty data file",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.csv", "text,label\n")}),
        "jft finetune: error: {tmp}/a.csv holds no records.",
    ),
    Case(
        "a data file in another format",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "a.xlsx", "x")}),
        "jft finetune: error: cannot read {tmp}/a.xlsx: use .csv, .tsv or .jsonl (or tfds:NAME[:SPLIT]).",
    ),
    Case(
        "SQuAD's .json given to a classification run",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "qa.json", '{"data": []}')}),
        "jft finetune: error: cannot read {tmp}/qa.json: use .csv, .tsv or .jsonl (or tfds:NAME[:SPLIT]). A .json "
        "file is read as SQuAD's form by a question-answering run (task=question_answering, as --config "
        "finetune/squad); this is a classification run.",
    ),
    Case(
        "a data file that is not there",
        lambda t, f: _finetune(t, f, **{"data.train": t / "train.csv"}),
        "jft finetune: error: data file not found: {tmp}/train.csv",
    ),
    Case(
        "a data file that is not there, for a workdir through a folder not there either",
        lambda t, f: _with_workdir(_finetune(t, f, **{"data.train": t / "train.csv"}), t / "a" / ".." / "run"),
        "jft finetune: error: data file not found: {tmp}/train.csv",
    ),
    Case(
        "a folder given as the data file",
        lambda t, f: _finetune(t, f, **{"data.train": _write(t / "data" / "train.csv", "text,label\n").parent}),
        "jft finetune: error: {tmp}/data is a directory; give a data file in it (.csv, .tsv or .jsonl).",
    ),
    Case(
        "sequences longer than the position table",
        lambda t, f: _finetune(t, f, **{"data.seq_len": 100}),
        "jft finetune: error: data.seq_len 100 is longer than the position table (64); use data.seq_len <= 64.",
    ),
    Case(
        "a vocabulary larger than the model's embedding",
        lambda t, f: _finetune(
            t, f, init_from="", **{"data.vocab": f / "vocab" / "vocab.txt", "model.vocab_size": 150}
        ),
        "jft finetune: error: the vocabulary has 200 tokens, more than the model's vocab_size 150; use the vocabulary "
        "the model was made with, or a model with a larger embedding table.",
    ),
    Case(
        "a vocabulary other than the checkpoint's",
        lambda t, f: _finetune(
            t, f, **{"data.vocab": _write(t / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n")}
        ),
        "jft finetune: error: data.vocab {tmp}/vocab.txt: the vocabularies differ (200 and 6 tokens); a model works "
        "only with the vocabulary it was trained with. Leave data.vocab empty to use init_from's.",
    ),
    Case(
        "prepared rows with another vocabulary",
        lambda t, f: _pretrain(t, f, **{"data.vocab": _write(t / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")}),
        "jft pretrain: error: data.vocab {tmp}/vocab.txt: the vocabularies differ (200 and 5 tokens); a model works "
        "only with the vocabulary it was trained with. Leave data.vocab empty to use the one the rows in "
        "{files}/rows hold.",
    ),
    Case(
        "prepared rows with another vocabulary than init_from's",
        lambda t, f: _pretrain(t, f, init_from=_model_with_vocab(f, t / "hf", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")),
        "jft pretrain: error: init_from {tmp}/hf: the vocabularies differ (200 and 5 tokens); a model works only with "
        "the vocabulary it was trained with. Prepare the rows with init_from's vocabulary (`jft prepare --vocab` "
        "with its tokenizer.json or vocab.txt), or leave init_from empty.",
    ),
    # Corpora and prepared rows.
    Case(
        "a corpus that is not UTF-8",
        lambda t, f: ["vocab", str(_write(t / "c.txt", b"one line\nsecond \xff line\n")), "--out", str(t / "v")],
        "jft vocab: error: {tmp}/c.txt:2 is not UTF-8 text (byte 0xff); save the file as UTF-8 (e.g. `iconv -f latin1 "
        "-t utf-8`).",
    ),
    Case(
        "a JSONL corpus with a broken line",
        lambda t, f: [
            "prepare",
            str(_write(t / "c.jsonl", '{"text": "a b c."}\n{"text": "d e"\n')),
            "--vocab",
            str(f / "vocab"),
            "--out",
            str(t / "rows"),
        ],
        "jft prepare: error: {tmp}/c.jsonl:2 is not valid JSON (Expecting ',' delimiter, column 15).",
    ),
    Case(
        "prepare into a directory of other files",
        lambda t, f: _prepare(f, _write(t / "mine" / "notes.txt", "keep").parent),
        "jft prepare: error: --out {tmp}/mine is a directory that holds other files; prepare writes only into a new "
        "or empty directory (or over its own earlier output), so nothing of yours is replaced; add --overwrite to "
        "replace it whole.",
    ),
    Case(
        "prepare into a file",
        lambda t, f: _prepare(f, _write(t / "out", "x")),
        "jft prepare: error: --out {tmp}/out is a file; give a directory for the prepared rows.",
    ),
    Case(
        "a negative vocabulary size",
        lambda t, f: ["vocab", str(f / "corpus.txt"), "--out", str(t / "v"), "--vocab-size", "-5"],
        "jft vocab: error: the vocabulary's size must be 1 or more and its min_frequency 0 or more, got -5 and 2 "
        "(BERT's size: 30522).",
    ),
    Case(
        "an eval fraction above 1",
        lambda t, f: _prepare(f, t / "r", "--eval-fraction", "1.5"),
        "jft prepare: error: eval_fraction is the share of documents held out, in [0, 1): got 1.5.",
    ),
    Case(
        "a data file as the config",
        lambda t, f: ["finetune", "--config", str(_write(t / "train.csv", "text,label\na,b\n")), "--workdir", "x"],
        "jft finetune: error: {tmp}/train.csv is not a config file: a config is a Python file (.py) that defines "
        "get_config().",
    ),
    Case(
        "a run's config for jft bench",
        lambda t, f: ["bench", "--config", "pretrain/tiny", "--out", str(t / "b.json")],
        "jft bench: error: jft bench takes a bench config (bench:tiny, bench:base, ... or configs/bench.py:SIZE), not "
        "a run's.",
    ),
    Case(
        "an unknown bench size",
        lambda t, f: ["bench", "--config", "bench:gpt2_smal", "--out", str(t / "b.json")],
        "jft bench: error: {*}/configs/bench.py: get_config('gpt2_smal') failed: unknown bench size 'gpt2_smal'; "
        "choose one of tiny, mini, base, large, gpt2_tiny, gpt2_small, gpt2_medium, gpt2_large, roberta_tiny, "
        "roberta_base, roberta_large, modernbert_tiny, modernbert_base, modernbert_large, resnet_tiny, resnet18, "
        "resnet34, resnet50, resnet101, vgg_tiny, vgg11, vgg13, vgg16, vgg19, vgg11_bn, vgg13_bn, vgg16_bn, "
        "vgg19_bn, xlm_roberta_tiny, xlm_roberta_base, xlm_roberta_large.",
    ),
    Case(
        "an init size without its family's prefix",
        lambda t, f: ["init", "--config", "init:gpt2_huge", "--out", str(t / "m")],
        "jft init: error: {*}/configs/init.py: get_config('gpt2_huge') failed: unknown init size 'gpt2_huge'; "
        "choose one of tiny, mini, base, large, gpt2_tiny, gpt2_small, gpt2_medium, gpt2_large, roberta_tiny, "
        "roberta_base, roberta_large, modernbert_tiny, modernbert_base, modernbert_large, xlm_roberta_tiny, "
        "xlm_roberta_base, xlm_roberta_large.",
    ),
    Case(
        "an image family in a text pretraining config",
        lambda t, f: _pretrain(t, f, **{"model.family": "resnet"}),
        "jft pretrain: error: model.family=resnet is an image model, and this config pretrains on text "
        "(data.corpus): use --config pretrain/resnet_tiny or pretrain/vgg_tiny for images, pretrain/tiny (or "
        "pretrain/gpt2_tiny, roberta_tiny, modernbert_tiny) for text.",
    ),
    Case(
        "a text family in an image pretraining config",
        lambda t, f: (
            ["pretrain", "--config", "pretrain/resnet_tiny", "--workdir", str(t / "run")]
            + ["--config.model.family=bert"]
        ),
        "jft pretrain: error: this config pretrains on labeled images (epochs, data.train), and names a bert model, "
        "a text one: use --config pretrain/resnet_tiny or pretrain/vgg_tiny for images, pretrain/tiny (or "
        "pretrain/gpt2_tiny, roberta_tiny, modernbert_tiny) for text.",
    ),
    Case(
        "a GPT-2 config given BERT's model.family",
        lambda t, f: (
            ["pretrain", "--config", "pretrain/gpt2_tiny", "--workdir", str(t / "run")]
            + ["--config.model.family=bert", f"--config.data.prepared={f / 'rows'}"]
        ),
        "jft pretrain: error: model.family is bert, but the model group holds another family's fields "
        "(n_positions); start from a config made for bert instead of changing "
        "model.family (`jft config` lists the configs; init and bench take the family in their argument, as "
        "init:gpt2_tiny or bench:roberta_base).",
    ),
    Case(
        "a NaN L2 weight",
        lambda t, f: _finetune(t, f, **{"l2.weight": "nan"}),
        "jft finetune: error: l2.weight and joint_mlm.weight must be 0 or more, got nan, 0.0.",
    ),
    Case(
        "a corpus that is not there",
        lambda t, f: ["prepare", str(t / "missing.txt"), "--vocab", str(f / "vocab"), "--out", str(t / "rows")],
        "jft prepare: error: corpus file not found: {tmp}/missing.txt",
    ),
    Case(
        "a folder of text files as the corpus",
        lambda t, f: [
            "prepare",
            str(_write(t / "texts" / "a.txt", "One.\n").parent),
            "--vocab",
            str(f / "vocab"),
            "--out",
            str(t / "rows"),
        ],
        "jft prepare: error: {tmp}/texts is a folder; name the text files in it with a quoted glob, e.g. "
        "'{tmp}/texts/*.txt' ('{tmp}/texts/**/*.txt' for its subfolders too).",
    ),
    Case(
        "a folder of text files to train a vocabulary on",
        lambda t, f: ["vocab", str(_write(t / "texts" / "a.txt", "One.\n").parent), "--out", str(t / "v")],
        "jft vocab: error: {tmp}/texts is a folder; name the text files in it with a quoted glob, e.g. "
        "'{tmp}/texts/*.txt' ('{tmp}/texts/**/*.txt' for its subfolders too).",
    ),
    Case(
        "a gzip-compressed corpus",
        lambda t, f: (
            _prepare(f, t / "rows")[:1]
            + [str(_write(t / "c.txt.gz", gzip.compress(b"One.\nTwo.\n")))]
            + _prepare(f, t / "rows")[2:]
        ),
        "jft prepare: error: {tmp}/c.txt.gz is gzip-compressed; decompress it first (e.g. `gzip -dk {tmp}/c.txt.gz`).",
    ),
    Case(
        "streams that do not divide the batch",
        lambda t, f: _pretrain(t, f, **{"data.streams": 3}),
        "jft pretrain: error: data.streams=3 does not divide the global batch of 16 rows; use a divisor of it (1: "
        "one stream over every shard; the number of processes: each reads its own shards).",
    ),
    Case(
        "more masked positions than a row has tokens",
        lambda t, f: _pretrain(t, f, **{"masking.max_predictions": 999}),
        "jft pretrain: error: masking.max_predictions 999 is larger than the rows ({*} tokens); use at most {*} (BERT "
        "uses 20 for 128 tokens, 80 for 512).",
    ),
    Case(
        "more streams than shards",
        lambda t, f: _pretrain(t, f, **{"data.streams": 16}),
        "jft pretrain: error: data.streams=16 needs at least 16 shards with rows, and the 'train' split of "
        "{files}/rows has 1; use fewer streams, or prepare with a smaller --window-documents (each window of "
        "documents makes its own shards).",
    ),
    Case(
        "a process id out of range",
        lambda t, f: _pretrain(t, f, **{"parallel.num_processes": 2, "parallel.process_id": 2}),
        "jft pretrain: error: parallel.process_id=2 with parallel.num_processes=2: the count is 0 (found by "
        "jax.distributed), 1, or more, and each process's id is one of 0 .. count - 1.",
    ),
    Case(
        "rows that are not prepared rows",
        lambda t, f: _pretrain(t, f, **{"data.prepared": _write(t / "rows" / "x.npy", "x").parent}),
        "jft pretrain: error: data.prepared {tmp}/rows is not a prepared corpus (no metadata.json); run `jft prepare`.",
    ),
    # Workdirs and readers.
    Case(
        "a workdir that is a file",
        lambda t, f: _with_workdir(_pretrain(t, f), _write(t / "run", "x")),
        "jft pretrain: error: --workdir {tmp}/run is a file; give a directory.",
    ),
    Case(
        "a sweep's directory to inspect",
        lambda t, f: ["inspect", str(_write(t / "sweep" / "best_run" / "run.json", "{}").parent.parent)],
        "jft inspect: error: {tmp}/sweep is neither a jft workdir (run.json) nor a Hugging Face model directory "
        "(config.json and weights). There is one inside it: {tmp}/sweep/best_run.",
    ),
    Case(
        "a sweep's directory for its config",
        lambda t, f: ["config", str(_write(t / "sweep" / "best_run" / "run.json", "{}").parent.parent)],
        "jft config: error: {tmp}/sweep holds no jft run (run.json is missing); give a run directory or a config "
        "file. There is one inside it: {tmp}/sweep/best_run.",
    ),
    Case(
        "a run.json that is not JSON",
        lambda t, f: [
            "eval",
            "--workdir",
            str(_write(t / "w" / "run.json", "{").parent),
            "--data",
            str(f / "train.csv"),
        ],
        "jft eval: error: the run description {tmp}/w/run.json is not valid JSON: Expecting property name enclosed in "
        "double quotes at line 1, column 2. It says what the run is, and nothing of the run can be read without it: "
        "copy run.json back from where the directory came from, or start a new --workdir.",
    ),
    Case(
        "a run.json of another format",
        lambda t, f: [
            "config",
            str(_write(t / "w" / "run.json", '{"format": "jft-run/2", "stage": "pretraining"}').parent),
        ],
        "jft config: error: {tmp}/w/run.json is not a run description this jft reads (format 'jft-run/2' and stage "
        "'pretraining'; this jft's are 'jft-run/1' and one of pretraining, finetuning): a file of another program or "
        "another jft version. Use the jft that wrote it, or start a new --workdir.",
    ),
    Case(
        "a workdir from before run.json",
        lambda t, f: ["export", "--workdir", str(_write(t / "w" / "task.json", "{}").parent), "--out", str(t / "x")],
        "jft export: error: {tmp}/w was written by an earlier version of jft (task.json, no run.json); start a new "
        "--workdir.",
    ),
    Case(
        "a batch that does not divide over the devices",
        lambda t, f: _pretrain(t, f, batch_size=12),
        "jft pretrain: error: the global batch of 12 rows does not divide over 8 devices × 1 accumulation steps; use "
        "a multiple of 8.",
    ),
]


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_one_clear_line_and_nothing_written(case: Case, files, tmp_path, capsys):
    before_files = _snapshot(files)
    command = [str(part) for part in case.command(tmp_path, files)]
    before = _snapshot(tmp_path)
    code = cli.main(command)
    err = capsys.readouterr().err
    case.check(err, code, tmp_path, files)
    assert _snapshot(tmp_path) == before  # no workdir made, nothing half-written
    assert _snapshot(files) == before_files


def test_a_csv_with_a_byte_order_mark_reads_its_header(tmp_path):
    from jft.tasks.records import Columns, read_records

    (tmp_path / "a.csv").write_bytes("text,label\nthe ship,sea\n".encode("utf-8-sig"))
    assert read_records(str(tmp_path / "a.csv"), Columns(), "classification") == [{"text": "the ship", "label": "sea"}]


def test_a_config_path_may_hold_a_colon(tmp_path):
    from jft.config import load_config

    directory = tmp_path / "a:b"
    directory.mkdir()
    shutil.copy(REPO / "configs" / "finetune" / "glue.py", directory / "glue.py")
    assert load_config(directory / "glue.py").task == "classification"
    assert load_config(f"{directory / 'glue.py'}:stsb").task == "regression"


def test_exported_files_get_the_usual_permissions(tmp_path):
    config = BertConfig(vocab_size=50, **TINY_MODEL)
    old = os.umask(0o022)
    try:
        out = hf.save(tmp_path / "out", config, init_params(BertForPreTraining(config), jax.random.PRNGKey(0)))
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
        "config.json": "0o644",
        "model.safetensors": "0o644",
    }


# Damaged checkpoints: the run resumes from the newest good one and ends as an uninterrupted run.


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bytes(file: Path) -> None:
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0x5A for b in data[middle : middle + 8])
    file.write_bytes(bytes(data))


DAMAGE = {
    "truncated data file": lambda step: _truncate(_largest_file(step / "state")),
    "zeroed data file": lambda step: _largest_file(step / "state").write_bytes(
        bytes(_largest_file(step / "state").stat().st_size)
    ),
    "flipped bytes": lambda step: _flip_bytes(_largest_file(step / "state")),
    "missing _METADATA": lambda step: (step / "state" / "_METADATA").unlink(),
    "missing meta/metadata": lambda step: (step / "meta" / "metadata").unlink(),
    "missing state": lambda step: shutil.rmtree(step / "state"),
    "empty step directory": lambda step: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in step.iterdir()],
}
STEPS = {"total_steps": 6, "checkpoint_every": 2, "log_every": 2, "eval_every": 6, "async_checkpoints": False}


@pytest.fixture(scope="module")
def finished_run(files, tmp_path_factory) -> Path:
    """A pretraining run of 6 steps with checkpoints at 2, 4 and 6."""
    root = tmp_path_factory.mktemp("finished")
    assert cli.main(_pretrain(root, files, **STEPS)) == 0
    return root / "run"


def _params(workdir: Path, step: int):
    from jft.train.checkpoint import Checkpoints

    checkpoints = Checkpoints(workdir / "checkpoints")
    state, _ = checkpoints.restore(step=step)
    checkpoints.close()
    return state["train"]["params"]


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous_one(
    damage, files, finished_run, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    DAMAGE[damage](workdir / "checkpoints" / "6")
    assert cli.main(_pretrain(tmp_path, files, **STEPS)) == 0
    captured = capsys.readouterr()
    assert f"warning: the checkpoint {workdir}/checkpoints/6 " in captured.err
    assert f"set aside as {workdir}/damaged/checkpoints-6; trying an earlier one" in captured.err
    assert "resuming at step 4 of 6" in captured.out and "Traceback" not in captured.err
    assert (workdir / "damaged" / "checkpoints-6").is_dir()  # kept for a look, not deleted
    for a, b in zip(jax.tree.leaves(_params(finished_run, 6)), jax.tree.leaves(_params(workdir, 6)), strict=True):
        np.testing.assert_array_equal(a, b)  # the same as the run that was never damaged


def test_flipped_bytes_are_found_by_the_checksums(finished_run, tmp_path):
    from jft.train.checkpoint import Checkpoints, DamagedCheckpoint

    shutil.copytree(finished_run, tmp_path / "run")
    _flip_bytes(_largest_file(tmp_path / "run" / "checkpoints" / "6" / "state"))
    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints")
    with pytest.raises(DamagedCheckpoint, match="does not match its checksums"):
        checkpoints.restore(step=6)
    checkpoints.close()


def test_a_save_from_accelerator_memory_is_fingerprinted_there_and_checked_on_restore(tmp_path, monkeypatch):
    """A state on a GPU or TPU is digested where it is (jft.checkpoint.fingerprints), not copied to
    the host and hashed; here CPU devices stand in for the accelerator."""
    import ml_dtypes

    from jft.errors import JftError
    from jft.train import checkpoint

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(64, 33)).astype(np.float32)
    state = {
        "params": {"w": weights, "h": rng.normal(size=7).astype(ml_dtypes.bfloat16)},
        "step": np.int32(5),
        "rng": np.asarray(jax.random.PRNGKey(3)),
    }
    found, counts = checkpoint.fingerprints(jax.device_put(state))
    assert found == checkpoint.fingerprints(state)[0]  # the same on the devices and on the host
    assert counts == {"params/w": (0, 64 * 33), "params/h": (0, 7)}
    one_bit = weights.copy()
    one_bit.view(np.uint32)[13, 5] ^= 1
    swapped = weights.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    for changed in (one_bit, swapped):
        assert checkpoint.fingerprints({**state, "params": {**state["params"], "w": changed}})[0] != found

    monkeypatch.setattr(checkpoint, "_in_host_memory", lambda tree: False)
    checkpoints = checkpoint.Checkpoints(tmp_path / "checkpoints", asynchronous=False)
    checkpoints.save(1, jax.device_put(state), {}, force=True)
    restored, meta = checkpoints.restore(step=1)
    assert meta["fingerprints"] == found and "checksums" not in meta
    np.testing.assert_array_equal(restored["params"]["w"], weights)
    weights_nan = weights.copy()
    weights_nan[3, 4] = np.nan
    with pytest.raises(JftError, match=r"not finite \(NaN or infinity\): params/w \(1 of 2,112 values\)"):
        checkpoints.save(2, jax.device_put({**state, "params": {**state["params"], "w": weights_nan}}), {}, force=True)
    meta_file = tmp_path / "checkpoints" / "1" / "meta" / "metadata"
    written = json.loads(meta_file.read_text())
    written["fingerprints"]["params/w"] = checkpoint.fingerprints({"params": {"w": one_bit}})[0]["params/w"]
    meta_file.write_text(json.dumps(written))  # as if the stored weights had one bit flipped
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"does not match its checksums \(1 arrays, e.g. params/w\)"):
        checkpoints.restore(step=1)
    checkpoints.close()
    assert checkpoint.saved_steps(tmp_path / "checkpoints") == [1]


def test_init_from_a_run_whose_newest_checkpoint_is_damaged_uses_the_one_before(files, finished_run, tmp_path, capsys):
    shutil.copytree(finished_run, tmp_path / "pretrained")
    _truncate(_largest_file(tmp_path / "pretrained" / "checkpoints" / "6" / "state"))
    settings = {"init_from": tmp_path / "pretrained", "epochs": 1, "parallel.backend": "jit"}
    assert cli.main(_finetune(tmp_path, files, **settings)) == 0
    captured = capsys.readouterr()
    assert "checkpoints/6 cannot be read" in captured.err and "left as it is" in captured.err
    assert f"init from pretraining run {tmp_path / 'pretrained'} (step 4)" in captured.out
    assert (tmp_path / "pretrained" / "checkpoints" / "6").is_dir()  # another run's directory: not touched


def test_a_damaged_best_model_is_reported_not_used(files, tmp_path, capsys):
    assert cli.main(_finetune(tmp_path, files, epochs=1, **{"parallel.backend": "jit"})) == 0
    (best,) = (tmp_path / "run" / "best").iterdir()
    _flip_bytes(_largest_file(best / "state"))
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(tmp_path / "run"), "--data", str(files / "train.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    # which file is largest, and so whether the flip garbles compressed bytes or a stored value, varies by run
    assert re.match(
        rf"warning: the checkpoint {re.escape(str(best))} (does not match its checksums|cannot be read)", err[0]
    )
    assert (
        err[1] == f"jft eval: error: every checkpoint in {tmp_path}/run/best is damaged (see the warnings above); "
        "nothing can be read. Copy the run again from where it came from."
    )


# Non-finite results: never applied, never saved; a run that keeps producing them stops.


def test_a_diverging_run_stops_with_nothing_non_finite_saved(files, tmp_path, capsys):
    settings = {**STEPS, "total_steps": 20, "log_every": 1, "optim.lr": 1e30, "optim.warmup_steps": 0}
    settings["guard.max_skipped_in_a_row"] = 3
    assert cli.main(_pretrain(tmp_path, files, **settings)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # lr 1e30: the first update is finite (about ±1e30 a weight), every later one is not
    assert err.startswith("jft pretrain: error: stopped at step 4: the last 3 updates were skipped because their")
    assert err.endswith(
        "Its checkpoints/ holds only finite weights from before. Lower optim.lr (or raise optim.warmup_steps) in a "
        f"new --workdir, with --config.init_from={tmp_path / 'run'} to start from them."
    )
    from jft.train.checkpoint import Checkpoints

    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints")
    assert checkpoints.latest_step() == 2
    state, _ = checkpoints.restore()
    checkpoints.close()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating))


def test_a_run_that_diverges_before_its_first_checkpoint_is_not_told_to_start_from_it(files, tmp_path, capsys):
    settings = {**STEPS, "total_steps": 20, "checkpoint_every": 10, "optim.lr": 1e30, "optim.warmup_steps": 0}
    settings |= {"log_every": 1, "guard.max_skipped_in_a_row": 3}
    assert cli.main(_pretrain(tmp_path, files, **settings)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        "the run diverged. It saved no weights to start again from. Lower optim.lr (or raise optim.warmup_steps) in "
        "a new --workdir."
    ), err
    assert cli.main(_pretrain(tmp_path / "again", files, **{**settings, "optim.lr": 1e-3})) == 0  # as advised


def test_the_guard_warns_about_a_huge_or_rising_loss(tmp_path, capsys):
    from jft.defaults import GUARD, build
    from jft.train.log import DivergenceGuard

    guard = DivergenceGuard(build(GUARD).guard, tmp_path, "checkpoints")
    guard.train(5, {"loss": 3e9, "skipped_in_a_row": 0})
    guard.train(6, {"loss": 4e9, "skipped_in_a_row": 0})  # said once until it comes back down
    for step, loss in enumerate([2.0, 2.1, 2.2, 2.3]):
        guard.eval(step, {"mlm_loss": loss, "mlm_accuracy": 0.5})
    assert capsys.readouterr().err.splitlines() == [
        "warning: step 5: the training loss is 3e+09 (guard.warn_loss_above 10000.0)",
        "warning: step 3: the evaluation mlm_loss rose 3 times in a row (now 2.3)",
    ]


def test_metrics_that_are_not_finite_are_written_as_null(tmp_path):
    from jft.train.log import MetricWriter

    writer = MetricWriter(tmp_path)
    writer.write(1, "train", {"loss": 1.5, "grad_norm": float("inf")})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 1, "split": "train", "loss": 1.5, "grad_norm": None} and "Infinity" not in line


# A full disk: one message, the newest good checkpoint named, no temporary files left.


def _small_disk(directory: Path, size: str) -> bool:
    directory.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_stops_the_run_cleanly(files, tmp_path, monkeypatch, capsys):
    disk = tmp_path / "disk"
    mounted = _small_disk(disk, "1m")
    if not mounted:  # no permission to mount: the disk fills up after the first checkpoint
        import jft.train.checkpoint

        real = shutil.disk_usage
        saves = iter([None])  # the save of step 2 finds room, the next one does not

        def usage(path):
            return real(path) if next(saves, "full") is None else real(path)._replace(free=100_000)

        monkeypatch.setattr(jft.train.checkpoint.shutil, "disk_usage", usage)
    try:
        assert cli.main(_pretrain(disk, files, **STEPS)) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert re.fullmatch(
            f"jft pretrain: error: no room to save the checkpoint of step 4: it needs about [0-9.]+ MB and "
            f"{disk}/run/checkpoints has [0-9.]+ MB free; the newest saved checkpoint is step 2. Free [0-9.]+ MB "
            "or more on that disk and run the same command to resume.",
            err,
        ), err
        assert not list(disk.rglob("*tmp*")) and not (disk / "run" / "run.lock").exists()
        assert sorted(p.name for p in (disk / "run" / "checkpoints").iterdir()) == ["2"]
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def test_predictions_to_a_path_that_cannot_be_written_fail_first(files, tmp_path, capsys):
    assert cli.main(_finetune(tmp_path, files, epochs=1, **{"parallel.backend": "jit"})) == 0
    capsys.readouterr()
    (tmp_path / "a-file").write_text("")
    output = tmp_path / "a-file" / "predictions.jsonl"
    command = ["predict", "--workdir", str(tmp_path / "run"), "--input", str(files / "train.csv"), "--output"]
    assert cli.main([*command, str(output)]) == 2
    assert (
        capsys.readouterr().err
        == f"jft predict: error: cannot write --output {output}: {output.parent} is a file, not a folder.\n"
    )


# Long inputs.


def test_token_classification_predicts_one_tag_for_every_word_of_a_long_record(files, tmp_path):
    from jft.tasks.predictor import FinetunedModel

    words = ["the", "harbor", "sailor", "sees", "the", "moon"]
    tags = ["O", "B-LOC", "B-PER", "O", "O", "B-LOC"]
    _write(tmp_path / "ner.jsonl", "".join(json.dumps({"text": words, "label": tags}) + "\n" for _ in range(8)))
    settings = {"data.train": tmp_path / "ner.jsonl", "data.seq_len": 16, "epochs": 1, "parallel.backend": "jit"}
    assert cli.main(_finetune(tmp_path, files, task="token_classification", **settings)) == 0
    long_record = [word for _ in range(14) for word in words]  # 84 words: more than 5 rows of 16 tokens
    _write(tmp_path / "long.jsonl", json.dumps({"text": long_record}) + "\n" + json.dumps({"text": words}) + "\n")
    predicted = FinetunedModel(tmp_path / "run").predict(str(tmp_path / "long.jsonl"))
    assert [len(p["tags"]) for p in predicted] == [84, 6]
    assert all(tag in ("O", "B-LOC", "B-PER") for tag in predicted[0]["tags"])


def test_a_ten_megabyte_line_prepares_in_seconds(files, tmp_path):
    """Truncating a sentence pair used to remove one token at a time from a list (quadratic: an
    800 KB line took 7.4 s, so 10 MB would take about 20 minutes); now it is counted."""
    import random
    import time

    words = ["ship", "harbor", "sailor", "moon", "sees", "the", "quiet", "wave"]
    rng = random.Random(0)
    line = " ".join(rng.choice(words) for _ in range(1_800_000))
    _write(tmp_path / "corpus.txt", "a short document.\nof two lines.\n\n" + line + "\n\nthe end.\nreally.\n")
    start = time.perf_counter()
    meta = prepare(str(tmp_path / "corpus.txt"), files / "vocab", tmp_path / "rows", seq_len=128, progress=False)
    assert time.perf_counter() - start < 120 and meta["tokens"] > 1_800_000


def test_a_read_only_workdir_is_one_line(files, tmp_path, monkeypatch, capsys):
    disk = tmp_path / "disk"
    mounted = _small_disk(disk, "1m") and subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
    if not mounted:  # no permission to mount: the file system refuses the lock file
        import errno

        real_open = os.open

        def read_only(path, flags, *args):
            if str(path).startswith(str(disk)) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args)

        (disk / "run").mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(os, "open", read_only)
    try:
        code = cli.main(_pretrain(disk, files))
        err = capsys.readouterr().err
        assert code == 2 and re.fullmatch(
            f"jft pretrain: error: cannot (create|write in) --workdir {disk}/run: Read-only file system.\n", err
        ), err
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def test_export_and_predict_refuse_a_best_model_with_a_nan(files, tmp_path, capsys):
    from jft.train.checkpoint import Checkpoints, sha256_checksums

    assert cli.main(_finetune(tmp_path, files, epochs=1, **{"parallel.backend": "jit"})) == 0
    best = Checkpoints(tmp_path / "run" / "best", asynchronous=False)
    state, meta = best.restore()
    step = best.latest_step()
    state["params"]["classifier"]["kernel"][0, 0] = np.nan
    shutil.rmtree(best.directory / str(step))
    best.manager.reload()
    import orbax.checkpoint as ocp  # written past Checkpoints.save, which refuses it, as before fingerprints

    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({**meta, "checksums": sha256_checksums(state)})
    )
    best.manager.save(step, args=args, force=True)
    best.close()
    capsys.readouterr()
    for command in (
        ["export", "--out", str(tmp_path / "hf")],
        ["predict", "--input", str(files / "train.csv"), "--output", str(tmp_path / "p.jsonl")],
    ):
        assert cli.main([command[0], "--workdir", str(tmp_path / "run"), *command[1:]]) == 2
        assert capsys.readouterr().err == (
            f"jft {command[0]}: error: the best model (step {step}) in {tmp_path}/run/best holds weights that are not "
            "finite (NaN or "
            "infinity): classifier/kernel (1 of 128 values); such a model computes nothing useful. Use an earlier "
            "checkpoint or other weights.\n"
        )
    assert not (tmp_path / "hf").exists() and not (tmp_path / "p.jsonl").exists()


# What a damaged checkpoint is, and what it is not.


def test_readers_of_another_run_leave_a_save_in_progress_alone(finished_run, tmp_path, capsys):
    """init_from, export and inspect read another run's checkpoints: the temporary folder of a save
    that run has under way is not theirs to clean up."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    in_progress = run / "checkpoints" / "8.orbax-checkpoint-tmp-1764872045123456"
    (in_progress / "state").mkdir(parents=True)
    (in_progress / "state" / "part").write_bytes(b"being written")
    before = _snapshot(run)
    assert cli.main(["export", "--workdir", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert cli.main(["inspect", str(run)]) == 0
    assert rundir.open_init(run).step == 6
    assert in_progress.is_dir() and _snapshot(run) == before


@pytest.mark.parametrize(
    "fault",
    [MemoryError(), OSError(errno.EIO, "Input/output error"), PermissionError(errno.EACCES, "Permission denied")],
    ids=["out of memory", "I/O error", "permission"],
)
def test_a_fault_of_the_machine_while_reading_moves_no_checkpoint(
    fault, files, finished_run, tmp_path, monkeypatch, capsys
):
    """Only data that cannot be read, or fails its checksums, is damage; a read that fails for a
    reason of this machine or moment stops the run (exit 1) and sets nothing aside."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    before = _snapshot(workdir)

    def failing(*args, **kwargs):
        raise fault

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
    assert cli.main(_pretrain(tmp_path, files, **STEPS)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot read the checkpoint {workdir}/checkpoints/6 (" in err and "nothing was moved" in err, err
    assert not (workdir / "damaged").exists() and _snapshot(workdir) == before


def test_a_checkpoint_of_another_layout_is_an_error_not_damage(files, finished_run, tmp_path, capsys):
    """A state whose arrays are not the ones this jft trains (another version's layout) is refused
    with what differs, and left where it is."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    checkpoints = Checkpoints(workdir / "checkpoints", asynchronous=False)
    state, meta = checkpoints.restore(step=6)
    state["train"]["extra"] = np.zeros(3, np.float32)
    checkpoints.save(8, state, {k: v for k, v in meta.items() if k not in ("checksums", "fingerprints")}, force=True)
    checkpoints.close()
    before = _snapshot(workdir)
    assert cli.main(_pretrain(tmp_path, files, **STEPS)) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoints/8 holds a state of another layout than this jft trains (train/extra: not expected" in err, err
    assert "nothing was moved" in err and _snapshot(workdir) == before

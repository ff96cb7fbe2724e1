"""The TFDS task configs (configs/finetune/glue.py and conll2003.py) against TFDS's own builders.

Each GLUE task's columns, label kind and evaluation split, and CoNLL-2003's, must exist in the
real dataset definitions. SST-2 and CoNLL-2003 are then built by those builders from small local
files in the original formats (the download replaced by a local directory, nothing fetched) and
fine-tuned end to end through the config files, as a user would after `tfds build`.
"""

import importlib.util
from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.text import glue
from tensorflow_datasets.text.conll2003 import conll2003

from conftest import REPO, TINY_MODEL, write_vocab
from jft.config import load_config
from jft.data.synthetic import TOPICS
from jft.finetune import train_and_evaluate
from jft.tasks.predictor import FinetunedModel

GLUE_CONFIG = REPO / "configs" / "finetune" / "glue.py"
CONLL_CONFIG = REPO / "configs" / "finetune" / "conll2003.py"
spec = importlib.util.spec_from_file_location("glue_config", GLUE_CONFIG)
glue_config = importlib.util.module_from_spec(spec)
spec.loader.exec_module(glue_config)


class LocalFiles:
    """Stands in for TFDS's download manager: every download is a local directory of files."""

    def __init__(self, path: Path):
        self.path = path

    def download_and_extract(self, url):
        return self.path

    def download(self, urls):
        return {name: self.path / name for name in urls}


def split_names(builder) -> list[str]:
    """The splits a TFDS builder makes (its split generators, without reading any file)."""
    generators = builder._split_generators(LocalFiles(Path("unused")))
    return [str(g.name) for g in generators] if isinstance(generators, list) else list(generators)


def data_columns(config) -> dict:
    data = config.data
    return {"text": data.text_column, "pair": data.text_pair_column, "label": data.label_column}


@pytest.mark.parametrize("task", sorted(glue_config.TASKS))
def test_glue_config_matches_the_tfds_builder(task, tmp_path):
    config = glue_config.get_config(task)
    builder = glue.Glue(config=task, data_dir=str(tmp_path))
    features = builder.info.features
    columns = data_columns(config)
    for column in filter(None, columns.values()):
        assert column in features, f"{task}: no feature {column!r} in {list(features)}"
    is_class_label = isinstance(features[columns["label"]], tfds.features.ClassLabel)
    assert is_class_label == (config.task == "classification"), task
    splits = split_names(builder)
    for source in (config.data.train, config.data.eval):
        name, _, split = source.removeprefix("tfds:").partition(":")
        assert name == f"glue/{task}" and split in splits, (source, splits)


def test_conll2003_config_matches_the_tfds_builder(tmp_path):
    config = load_config(CONLL_CONFIG)
    builder = conll2003.Conll2003(data_dir=str(tmp_path))
    features = builder.info.features
    columns = data_columns(config)
    assert isinstance(features[columns["text"]], tfds.features.Sequence)
    assert isinstance(features[columns["label"]].feature, tfds.features.ClassLabel)
    for source in (config.data.train, config.data.eval):
        name, _, split = source.removeprefix("tfds:").partition(":")
        assert name == "conll2003" and split in split_names(builder), source


def _sst2_files(root: Path) -> Path:
    """SST-2.zip's layout: SST-2/{train,dev,test}.tsv, sentence and label columns (test unlabeled)."""
    directory = root / "SST-2"
    directory.mkdir(parents=True)
    nouns = TOPICS["sea"] + TOPICS["space"]
    rows = [f"the {noun} {verb}\t{int(noun in TOPICS['sea'])}" for noun in nouns for verb in ("sees", "likes")]
    for name in ("train", "dev"):
        (directory / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (directory / "test.tsv").write_text("index\tsentence\n0\tthe ship sees\n")
    return root


def _conll_files(root: Path) -> Path:
    """conll2003.zip's layout: {train,valid,test}.txt, word POS chunk NER a line, a blank line between
    sentences, -DOCSTART- between documents."""
    root.mkdir(parents=True)
    sentence = "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n"
    other = "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\nsees VBZ B-VP O\nBrussels NNP B-NP B-LOC\n"
    text = "-DOCSTART- -X- -X- O\n\n" + (sentence + "\n" + other + "\n") * 8
    for name in ("train", "valid", "test"):
        (root / f"{name}.txt").write_text(text)
    return root


@pytest.fixture
def built(tmp_path, monkeypatch):
    """build(builder_class, files, **kwargs): the builder's dataset made from local files in tmp_path/tfds."""

    def build(builder_class, files: Path, **kwargs):
        monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", lambda self, url: files)
        builder = builder_class(data_dir=str(tmp_path / "tfds"), **kwargs)
        builder.download_and_prepare(file_format="array_record")
        return str(tmp_path / "tfds")

    return build


def _run_config(config_spec, data_dir: str, vocab: Path, **changes):
    overrides = {
        "data.tfds_data_dir": data_dir,
        "data.vocab": str(vocab),
        "data.seq_len": 32,
        **{f"model.{key}": value for key, value in TINY_MODEL.items()},
        "model.type_vocab_size": 2,
        "batch_size": 8,
        "epochs": 2,
        "optim.lr": 1e-3,
        "progress": False,
        **changes,
    }
    return load_config(config_spec, [f"{key}={value}" for key, value in overrides.items()])


def test_sst2_built_by_tfds_fine_tunes_through_the_glue_config(tmp_path, built):
    data_dir = built(glue.Glue, _sst2_files(tmp_path / "download"), config="sst2")
    config = _run_config(f"{GLUE_CONFIG}:sst2", data_dir, write_vocab(tmp_path / "vocab.txt"), epochs=20)
    final = train_and_evaluate(config, tmp_path / "sst2")
    assert {"eval_accuracy", "eval_f1", "eval_mcc"} <= set(final)
    assert final["eval_accuracy"] > 0.8  # the dev file is the train file: learned, not chance (0.5)
    model = FinetunedModel(tmp_path / "sst2")
    assert model.task.labels == ["negative", "positive"]  # TFDS's class names, in its order


def test_conll2003_built_by_tfds_fine_tunes_through_its_config(tmp_path, built):
    data_dir = built(conll2003.Conll2003, _conll_files(tmp_path / "download"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "EU", "German", "call", "sees"]))
    final = train_and_evaluate(_run_config(CONLL_CONFIG, data_dir, vocab), tmp_path / "ner")
    assert {"eval_entity_f1", "eval_token_accuracy"} <= set(final)
    tags = conll2003.Conll2003(data_dir=data_dir).info.features["ner"].feature.names
    assert FinetunedModel(tmp_path / "ner").task.labels == tags  # TFDS's tag names, in its order


def test_squad_built_by_tfds_fine_tunes_through_the_squad_config(tmp_path, built, monkeypatch):
    """TFDS's squad/v1.1 builder makes its dataset from SQuAD-format files (generated here); the
    records it gives (answers a feature dict of bytes) train and score through finetune/squad."""
    from tensorflow_datasets.question_answering import squad

    from jft.data.synthetic import write_qa_task

    files = {
        "train": write_qa_task(tmp_path / "train.json", 16),
        "dev": write_qa_task(tmp_path / "dev.json", 8, seed=1),
    }
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", lambda self, urls: files)
    builder = squad.Squad(config="v1.1", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(file_format="array_record")
    config = _run_config(
        "finetune/squad",
        str(tmp_path / "tfds"),
        write_vocab(tmp_path / "vocab.txt"),
        **{"data.train": "tfds:squad/v1.1:train", "data.eval": "tfds:squad/v1.1:validation"},
        **{"data.seq_len": 64, "data.doc_stride": 16, "model.max_position_embeddings": 64},
    )
    final = train_and_evaluate(config, tmp_path / "squad")
    assert {"eval_exact_match", "eval_f1"} <= set(final)
    model = FinetunedModel(tmp_path / "squad")
    assert model.task.kind == "question_answering" and model.task.spans.doc_stride == 16

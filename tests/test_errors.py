"""Bad input gets one clear error that says what was wrong and how to fix it."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import transformers

from conftest import tiny_hf_config
from jft import params as ptree
from jft.errors import JftError
from jft.models import hf
from jft.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel, init_params


@pytest.fixture
def saved(tmp_path):
    config = BertConfig.from_hf(tiny_hf_config().to_dict())
    params = init_params(BertForPreTraining(config), jax.random.key(0))
    hf.save(tmp_path, config, params)
    return tmp_path, config, params


def test_config_and_weights_disagree_lists_every_mismatch(saved):
    path, _, _ = saved
    hf_config = json.loads((path / "config.json").read_text())
    hf_config.update(hidden_size=48, num_hidden_layers=2)
    (path / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(JftError) as error:
        hf.load(path)
    message = str(error.value)
    assert "bert/embeddings/word_embeddings/embedding: expected (101, 48), found (101, 32)" in message
    assert "bert/encoder/layer/attention/self/query/kernel: expected (2, 48, 48), found (3, 32, 32)" in message
    assert "config.json" in message


def test_merge_into_other_model_names_paths_and_both_shapes(saved):
    _, _, params = saved
    other = BertConfig.from_hf(tiny_hf_config(hidden_size=64, vocab_size=90).to_dict())
    target = init_params(BertForSequenceClassification(other, num_labels=2), jax.random.key(1))
    with pytest.raises(JftError) as error:
        ptree.merge(target, params)
    message = str(error.value)
    assert "bert/embeddings/word_embeddings/embedding: expected (90, 64), found (101, 32)" in message
    assert "bert/pooler/dense/kernel: expected (64, 64), found (32, 32)" in message


def test_merge_reports_loaded_created_and_unused(saved):
    _, config, params = saved
    target = init_params(BertForSequenceClassification(config, num_labels=2), jax.random.key(1))
    merged, report = ptree.merge(target, params)
    assert set(report.created) == {"classifier/kernel", "classifier/bias"}
    assert "cls/seq_relationship/kernel" in report.unused
    assert np.array_equal(merged["bert"]["pooler"]["dense"]["kernel"], params["bert"]["pooler"]["dense"]["kernel"])
    assert np.array_equal(merged["classifier"]["kernel"], target["classifier"]["kernel"])
    assert "created new (2)" in report.summary()


def test_missing_files(tmp_path, saved):
    with pytest.raises(JftError, match="no such file or directory"):
        hf.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JftError, match="has no config.json"):
        hf.load(tmp_path / "empty")
    path, _, _ = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(JftError, match="no weights in .*expected model.safetensors"):
        hf.load(path)


def test_missing_shard(tmp_path, saved):
    _, config, params = saved
    hf.save(tmp_path / "sharded", config, params, max_shard_size=20_000)
    (tmp_path / "sharded" / "model-00002-of-00007.safetensors").unlink()
    with pytest.raises(JftError, match="shards that are missing: model-00002-of-00007.safetensors"):
        hf.load(tmp_path / "sharded")


def test_pickle_is_refused_with_a_conversion_hint(tmp_path, saved):
    path, _, _ = saved
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    for where in (path, path / "pytorch_model.bin"):
        with pytest.raises(JftError, match="pickle file; jft never unpickles.*safe_serialization=True"):
            hf.load(where)


def test_the_pickle_hint_converts_a_classifier_with_its_head(tmp_path):
    """The command the refusal gives, run as given, writes safetensors that jft loads, head and all."""
    torch_config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, num_labels=3
    )
    transformers.BertForSequenceClassification(torch_config).save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(JftError, match="pickle file") as refused:
        hf.load(tmp_path)
    command = str(refused.value).split("`")[1].replace("python -c", "", 1).strip().strip('"')
    subprocess.run([sys.executable, "-c", command], check=True, capture_output=True)
    _, params = hf.load(tmp_path)
    assert params["classifier"]["kernel"].shape == (32, 3)


def test_unknown_tensor_names_are_reported(saved):
    path, _, _ = saved
    tensors = safetensors.numpy.load_file(path / "model.safetensors")
    tensors["bert.encoder.adapter.weight"] = np.zeros((4, 4), np.float32)
    safetensors.numpy.save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(JftError, match="bert/encoder/adapter/kernel: unexpected, found \\(4, 4\\)"):
        hf.load(path)


def test_untied_mlm_decoder_is_refused(saved):
    path, _, _ = saved
    tensors = safetensors.numpy.load_file(path / "model.safetensors")
    tensors["cls.predictions.decoder.weight"] = np.ones((101, 32), np.float32)
    safetensors.numpy.save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(JftError, match="MLM decoder differs from its word embeddings"):
        hf.load(path)


def test_other_model_types_are_refused(saved):
    path, _, _ = saved
    hf_config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**hf_config, "model_type": "t5"}))
    with pytest.raises(
        JftError, match="'t5' model; jft loads bert, gpt2, modernbert, resnet, roberta, vgg, xlm-roberta models"
    ):
        hf.load(path)
    # a model type jft has, over another family's weights: one line, not a list of every tensor
    (path / "config.json").write_text(json.dumps({**hf_config, "model_type": "roberta"}))
    with pytest.raises(JftError, match=r"model.safetensors holds a bert's weights \(bert\.\*\), not a roberta's"):
        hf.load(path)


def test_sequence_longer_than_position_table():
    config = BertConfig.from_hf(tiny_hf_config(max_position_embeddings=16).to_dict())
    model = BertModel(config)
    params = init_params(model, jax.random.key(0))
    with pytest.raises(JftError, match="17 tokens are longer than the position table.*truncate them to 16"):
        model.apply({"params": params}, jnp.ones((1, 17), jnp.int32))


def test_unknown_model_config_key_names_the_closest():
    with pytest.raises(JftError, match="unknown model config key 'hidden_szie'. Did you mean 'hidden_size'"):
        BertConfig.from_dict({"hidden_szie": 8})


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(hidden_size=30, num_attention_heads=4), "not divisible by num_attention_heads"),
        (dict(hidden_act="gelu2"), "hidden_act 'gelu2' is not one of"),
        (dict(attention_impl="cudnn", dtype="bfloat16"), "'cudnn' has no attention dropout"),
        (dict(attention_impl="cudnn", attention_probs_dropout_prob=0.0), "needs dtype 'bfloat16'"),
        (dict(attention_impl="splash"), "'splash' has no attention dropout: set attention_probs_dropout_prob=0"),
        (dict(attention_impl="flash"), "attention_impl 'flash' is not one of"),
        (dict(dtype="fp8"), "dtype 'fp8' is not one of"),
    ],
)
def test_invalid_model_configs(fields, message):
    with pytest.raises(JftError, match=message):
        BertConfig(**fields)


def test_save_rejects_wrong_label_count(tmp_path):
    config = BertConfig.from_hf(tiny_hf_config().to_dict())
    params = init_params(BertForSequenceClassification(config, num_labels=3), jax.random.key(0))
    with pytest.raises(JftError, match="2 label names given for a head with 3 outputs"):
        hf.save(tmp_path, config, params, labels=["a", "b"])
    with pytest.raises(JftError, match="unknown format 'bin'"):
        hf.save(tmp_path, config, params, format="bin")

"""Hugging Face formats in and out: transformers loads what jft saves, jft loads what transformers saves."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import make_batch, tiny_hf_config
from jft.models import hf
from jft.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel, init_params

TOL = 1e-5


def _torch_batch(batch):
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _jft_pretraining(seed=0, **overrides):
    config = BertConfig.from_hf(tiny_hf_config(**overrides).to_dict())
    params = init_params(BertForPreTraining(config), jax.random.key(seed))
    # Non-zero biases and LayerNorm shifts, so a dropped or misplaced array shows in the outputs.
    params = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(seed + 1), x.shape), params)
    return config, params


@pytest.mark.parametrize("shard", [None, 20_000], ids=["single", "sharded"])
def test_safetensors_from_jft_loads_in_pytorch(tmp_path, max_abs_diff, shard):
    config, params = _jft_pretraining()
    hf.save(tmp_path, config, params, format="safetensors", max_shard_size=shard)
    assert (tmp_path / ("model.safetensors.index.json" if shard else "model.safetensors")).is_file()
    ref = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    batch = make_batch(0)
    with torch.no_grad():
        ref_out = ref(**_torch_batch(batch))
    out = BertForPreTraining(config).apply({"params": params}, **batch)
    assert max_abs_diff(out["mlm_logits"], ref_out.prediction_logits.numpy()) <= TOL
    assert max_abs_diff(out["nsp_logits"], ref_out.seq_relationship_logits.numpy()) <= TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


@pytest.mark.parametrize("shard", [None, 20_000], ids=["single", "sharded"])
def test_msgpack_from_jft_loads_in_hf_flax(tmp_path, max_abs_diff, shard):
    config, params = _jft_pretraining(seed=2)
    hf.save(tmp_path, config, params, format="msgpack", max_shard_size=shard)
    assert (tmp_path / ("flax_model.msgpack.index.json" if shard else "flax_model.msgpack")).is_file()
    ref = transformers.FlaxBertForPreTraining.from_pretrained(tmp_path)
    batch = make_batch(1)
    ref_out = ref(**batch)
    out = BertForPreTraining(config).apply({"params": params}, **batch)
    assert max_abs_diff(out["mlm_logits"], ref_out.prediction_logits) <= TOL
    assert max_abs_diff(out["nsp_logits"], ref_out.seq_relationship_logits) <= TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_encoder_only_round_trip(tmp_path, max_abs_diff, fmt):
    """A bare encoder is written in BertModel's layout (no 'bert' prefix) and read back by both."""
    config, params = _jft_pretraining(seed=3)
    encoder = {"bert": params["bert"]}
    hf.save(tmp_path, config, encoder, format=fmt)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertModel"]
    batch = make_batch(2)
    hidden, pooled = BertModel(config).apply({"params": encoder["bert"]}, **batch)
    if fmt == "safetensors":
        with torch.no_grad():
            ref_out = transformers.BertModel.from_pretrained(tmp_path).eval()(**_torch_batch(batch))
        ref_hidden, ref_pooled = ref_out.last_hidden_state.numpy(), ref_out.pooler_output.numpy()
    else:
        ref_out = transformers.FlaxBertModel.from_pretrained(tmp_path)(**batch)
        ref_hidden, ref_pooled = ref_out.last_hidden_state, ref_out.pooler_output
    assert max_abs_diff(hidden, ref_hidden) <= TOL
    assert max_abs_diff(pooled, ref_pooled) <= TOL
    _, loaded = hf.load(tmp_path)
    assert set(loaded) == {"bert"}


def test_pytorch_saved_sharded_loads_in_jft(tmp_path, max_abs_diff):
    torch.manual_seed(1)
    ref = transformers.BertForPreTraining(tiny_hf_config()).eval()
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    config, params = hf.load(tmp_path)
    batch = make_batch(5)
    with torch.no_grad():
        ref_out = ref(**_torch_batch(batch))
    out = BertForPreTraining(config).apply({"params": params}, **batch)
    assert max_abs_diff(out["mlm_logits"], ref_out.prediction_logits.numpy()) <= TOL


def test_hf_flax_sharded_loads_in_jft(tmp_path, max_abs_diff):
    ref = transformers.FlaxBertForPreTraining(tiny_hf_config(), seed=7)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "flax_model.msgpack.index.json").is_file()
    config, params = hf.load(tmp_path)
    batch = make_batch(6)
    out = BertForPreTraining(config).apply({"params": params}, **batch)
    assert max_abs_diff(out["mlm_logits"], ref(**batch).prediction_logits) <= TOL


def test_classifier_round_trip_with_labels(tmp_path, max_abs_diff):
    config = BertConfig.from_hf(tiny_hf_config().to_dict())
    module = BertForSequenceClassification(config, num_labels=3)
    params = init_params(module, jax.random.key(4))
    hf.save(tmp_path, config, params, labels=["negative", "neutral", "positive"])
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForSequenceClassification"]
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert ref.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    batch = make_batch(7)
    with torch.no_grad():
        ref_logits = ref(**_torch_batch(batch)).logits.numpy()
    assert max_abs_diff(module.apply({"params": params}, **batch)["logits"], ref_logits) <= TOL
    config2, params2 = hf.load(tmp_path)  # the classifier comes back into jft whole, head included
    assert config2 == config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


def test_bfloat16_params_round_trip(tmp_path):
    config, params = _jft_pretraining(seed=5)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    hf.save(tmp_path, config, bf16)
    json_config = json.loads((tmp_path / "config.json").read_text())
    assert "param_dtype" not in json_config  # jft's own fields stay out of config.json
    _, loaded = hf.load(tmp_path)  # weights come back as float32 master weights by default
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(loaded))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a.astype(jnp.float32), b)), bf16, loaded))


def test_convert_between_formats_keeps_weights(tmp_path):
    config, params = _jft_pretraining(seed=6)
    hf.save(tmp_path / "st", config, params, format="safetensors")
    config1, params1 = hf.load(tmp_path / "st")
    hf.save(tmp_path / "mp", config1, params1, format="msgpack")
    config2, params2 = hf.load(tmp_path / "mp" / "flax_model.msgpack")  # a weights file works as a path too
    assert config2 == config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, params2))


def test_pytorch_masked_lm_without_pooler_loads_in_jft(tmp_path, max_abs_diff):
    torch.manual_seed(2)
    ref = transformers.BertForMaskedLM(tiny_hf_config()).eval()
    ref.save_pretrained(tmp_path)
    config, params = hf.load(tmp_path)
    assert "pooler" not in params["bert"] and "seq_relationship" not in params["cls"]
    batch = make_batch(8)
    with torch.no_grad():
        ref_logits = ref(**_torch_batch(batch)).logits.numpy()
    out = BertForPreTraining(config, nsp=False).apply({"params": params}, **batch)
    assert max_abs_diff(out["mlm_logits"], ref_logits) <= TOL


def test_saving_in_one_format_replaces_the_other(tmp_path):
    config, params = _jft_pretraining(seed=8)
    hf.save(tmp_path, config, params, format="safetensors")
    newer = jax.tree.map(lambda x: x + 1.0, params)
    hf.save(tmp_path, config, newer, format="msgpack", max_shard_size=20_000)
    assert not (tmp_path / "model.safetensors").exists()
    _, loaded = hf.load(tmp_path)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), newer, loaded))


@pytest.mark.parametrize(
    ("config", "task"),
    [
        (
            {"architectures": ["BertForSequenceClassification"], "id2label": {"1": "b", "0": "a", "10": "k"}},
            {"kind": "classification", "labels": ["a", "b", "k"]},
        ),
        (
            {
                "architectures": ["RobertaForSequenceClassification"],
                "problem_type": "regression",
                "id2label": {"0": "x"},
            },
            {"kind": "regression", "labels": []},
        ),
        ({"architectures": ["ResNetForImageClassification"], "id2label": {"0": "crane", "1": "crane"}}, None),
        (
            {"architectures": ["BertForTokenClassification"], "id2label": {"0": "O", "1": "B-PER"}},
            {"kind": "token_classification", "labels": ["O", "B-PER"]},
        ),
        ({"architectures": ["BertForMaskedLM"]}, None),
        ({}, None),
    ],
    ids=["classifier", "regression", "repeated-names", "token-tagger", "pretraining", "no-architecture"],
)
def test_the_task_of_a_hugging_face_head_is_read_from_its_architecture_and_id2label(tmp_path, config, task):
    """What init_from compares with the task to keep a classifier's head: its labels in id order;
    nothing for the heads whose outputs are no labels, or names that repeat (ImageNet's 'crane')."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert hf.read_task(tmp_path) == task

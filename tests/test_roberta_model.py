"""RoBERTa and XLM-R: the same logits, loss and gradients as Hugging Face's PyTorch and Flax models,
their checkpoints in and out with every head, packed rows, and the refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from conftest import padded_ids, perturbed, raises_one_line
from jft import params as ptree
from jft.errors import JftError
from jft.models import Head, hf
from jft.models.roberta import (
    FAMILY,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    init_params,
)

TOL = 1e-5
VOCAB = 1000
PAD = 1
CLASSES = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta"}


def _hf_config(model_type: str, **overrides):
    """A small RoBERTa (hidden 48, 3 heads, 3 layers, vocab 1000) without dropout, in Hugging Face's class."""
    values = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config_class = getattr(transformers, f"{CLASSES[model_type]}Config")
    return config_class(**{**values, **overrides})


def _batch(seed: int, batch: int = 3, seq: int = 12) -> tuple[np.ndarray, np.ndarray]:
    return padded_ids(seed, VOCAB, PAD, 3, batch, seq)


def _with_head(module, params: dict, seed: int) -> dict:
    """params with module's task head added, random (biases too), the encoder and MLM head kept."""
    shapes = jax.eval_shape(lambda: init_params(module, jax.random.key(0)))
    head = {name: tree for name, tree in shapes.items() if name not in params}
    leaves, treedef = jax.tree.flatten(head)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    random = [0.1 * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)]
    kept = {name: params[name] for name in shapes if name in params}
    return {**jax.tree.unflatten(treedef, random), **kept}


@pytest.fixture(scope="module", params=["roberta", "xlm-roberta"])
def reference(request, tmp_path_factory):
    """A random PyTorch ...ForMaskedLM saved with save_pretrained (safetensors), and jft's load of it."""
    torch.manual_seed(0)
    model_class = getattr(transformers, f"{CLASSES[request.param]}ForMaskedLM")
    model = perturbed(model_class(_hf_config(request.param)), seed=1)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    config, params = hf.load(path)
    return request.param, model, path, config, params


def test_logits_loss_and_gradients_equal_pytorch_and_flax(reference, max_abs_diff):
    """On right-padded rows, at every real token: PyTorch's and Flax's MLM logits, PyTorch's loss with
    every real token as its label, and the gradients of that loss with respect to every Flax weight."""
    model_type, model, path, config, params = reference
    assert config.model_type == model_type and config.position_offset == 2
    ids, mask = _batch(0)
    real = mask.astype(bool)
    labels = torch.tensor(np.where(real, ids, -100), dtype=torch.long)
    with torch.no_grad():
        torch_out = model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), labels=labels
        )
    flax_class = getattr(transformers, f"Flax{CLASSES[model_type]}ForMaskedLM")
    flax_model = flax_class.from_pretrained(path, from_pt=True)

    def loss_of(logits):
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
        return jnp.sum(losses * mask) / jnp.sum(mask)

    def jft_loss(p):
        logits = RobertaForMaskedLM(config).apply({"params": p}, input_ids=ids, attention_mask=mask)["mlm_logits"]
        return loss_of(logits), logits

    def flax_loss(p):
        logits = flax_model(ids, attention_mask=mask, params=p).logits
        return loss_of(logits), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(jft_loss, has_aux=True))(params)
    (_, flax_logits), flax_grads = jax.jit(jax.value_and_grad(flax_loss, has_aux=True))(flax_model.params)
    assert logits.shape == (3, 12, VOCAB) and logits.dtype == jnp.float32
    assert max_abs_diff(np.asarray(logits)[real], torch_out.logits.numpy()[real]) <= TOL
    assert max_abs_diff(np.asarray(logits)[real], np.asarray(flax_logits)[real]) <= TOL
    assert abs(float(loss) - float(torch_out.loss)) <= TOL
    grads, flax_grads = FAMILY.weights_to_hf(grads, "flax"), ptree.flatten(flax_grads)
    assert set(grads) == set(flax_grads)
    for name, expected in flax_grads.items():
        assert max_abs_diff(grads[name], expected) <= TOL * max(float(np.max(np.abs(expected))), 1e-3), name


def test_the_longest_row_is_the_position_table_less_its_offset(reference):
    """max_position_embeddings 40 holds rows of 38 tokens (rows 0 and 1 precede them); 39 is refused."""
    _, _, _, config, params = reference
    model = RobertaForMaskedLM(config)
    ids = np.full((1, 38), 5, np.int32)
    assert model.apply({"params": params}, input_ids=ids)["mlm_logits"].shape == (1, 38, VOCAB)
    expected = r"39 tokens .*max_position_embeddings=40, of which the first 2 .* truncate them to 38"
    with pytest.raises(JftError, match=expected):
        model.apply({"params": params}, input_ids=np.full((1, 39), 5, np.int32))


def test_msgpack_from_jft_loads_in_flax(reference, tmp_path, max_abs_diff):
    model_type, _, _, config, params = reference
    hf.save(tmp_path, config, params, format="msgpack")
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [f"{CLASSES[model_type]}ForMaskedLM"] and written["model_type"] == model_type
    ids, mask = _batch(1)
    flax_class = getattr(transformers, f"Flax{CLASSES[model_type]}ForMaskedLM")
    flax_model, flax_params = flax_class.from_pretrained(tmp_path, _do_init=False)
    flax_logits = jax.jit(lambda p: flax_model(ids, attention_mask=mask, params=p).logits)(flax_params)
    logits = jax.jit(RobertaForMaskedLM(config).apply)({"params": params}, input_ids=ids, attention_mask=mask)
    assert max_abs_diff(np.asarray(logits["mlm_logits"])[mask == 1], np.asarray(flax_logits)[mask == 1]) <= TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


@pytest.mark.parametrize(
    "suffix, module",
    [
        ("ForMaskedLM", None),
        ("ForSequenceClassification", RobertaForSequenceClassification),
        ("ForTokenClassification", RobertaForTokenClassification),
        ("ForQuestionAnswering", "question_answering"),
        ("Model", "encoder"),
    ],
)
def test_safetensors_from_jft_loads_in_pytorch(reference, tmp_path, max_abs_diff, suffix, module):
    """Every weight is where transformers looks for it (none missing or unexpected) and gives jft's
    logits (the classifier reads the <s> state through dense, tanh, out_proj), and loads back equal."""
    model_type, _, _, config, params = reference
    if module is None:
        module = RobertaForMaskedLM(config)
    elif module == "encoder":
        module = FAMILY.module(config, FAMILY.head_of({"roberta": params["roberta"]}))
        params = {"roberta": {**params["roberta"]}}
        params["roberta"]["pooler"] = {"dense": {"kernel": 0.1 * jnp.ones((48, 48)), "bias": 0.1 * jnp.ones(48)}}
        module = FAMILY.module(config, FAMILY.head_of(params))
    elif module == "question_answering":
        module = FAMILY.module(config, Head("question_answering", 2))
        params = _with_head(module, {"roberta": params["roberta"]}, seed=2)
    else:
        module = module(config, num_labels=3)
        params = _with_head(module, {"roberta": params["roberta"]}, seed=2)
    hf.save(tmp_path, config, params, format="safetensors")
    architecture = CLASSES[model_type] + suffix
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    ref, info = getattr(transformers, architecture).from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    ids, mask = _batch(2)
    with torch.no_grad():
        ref_out = ref.eval()(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    out = jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask)
    if suffix == "ForQuestionAnswering":
        expected = np.stack([ref_out.start_logits.numpy(), ref_out.end_logits.numpy()], -1)
        assert max_abs_diff(np.asarray(out["logits"])[mask == 1], expected[mask == 1]) <= TOL
    elif suffix == "Model":
        assert max_abs_diff(out["pooled"], ref_out.pooler_output.numpy()) <= TOL
        assert max_abs_diff(np.asarray(out["hidden"])[mask == 1], ref_out.last_hidden_state.numpy()[mask == 1]) <= TOL
    else:
        logits = np.asarray(out["mlm_logits" if suffix == "ForMaskedLM" else "logits"])
        if logits.ndim == 3:
            assert max_abs_diff(logits[mask == 1], ref_out.logits.numpy()[mask == 1]) <= TOL
        else:
            assert logits.shape == (3, 3) and max_abs_diff(logits, ref_out.logits.numpy()) <= TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == config
    assert FAMILY.head_of(params2) == FAMILY.head_of(params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


def test_packed_examples_give_the_logits_each_has_alone(reference, max_abs_diff):
    """One row holding two examples (segment_ids 1 then 2, positions from 0 in each, <s> first in
    each): the classifier's logits for each (and the MLM logits) equal the example's alone."""
    _, _, _, config, params = reference
    ids = _batch(3, batch=1, seq=14)[0][0]
    split = 5
    ids[0] = ids[split] = 0  # each example begins with <s>
    packed = dict(
        input_ids=ids[None],
        segment_ids=np.where(np.arange(14) < split, 1, 2)[None].astype(np.int32),
        position_ids=np.concatenate([np.arange(split), np.arange(14 - split)])[None].astype(np.int32),
        attention_mask=np.ones((1, 14), np.int32),
        cls_positions=np.array([[0, split]], np.int32),
        masked_positions=np.array([[1, split + 2]], np.int32),
    )
    alone = np.full((2, 14 - split), PAD, np.int32)
    alone[0, :split], alone[1] = ids[:split], ids[split:]
    alone_mask = (alone != PAD).astype(np.int32)
    classifier = RobertaForSequenceClassification(config, num_labels=2, mlm=True)
    task = _with_head(classifier, params, seed=3)
    run = jax.jit(classifier.apply)
    out = run({"params": task}, **packed)
    single = run(
        {"params": task}, input_ids=alone, attention_mask=alone_mask, masked_positions=np.array([[1], [2]], np.int32)
    )
    assert out["logits"].shape == (1, 2, 2) and out["mlm_logits"].shape == (1, 2, VOCAB)
    assert max_abs_diff(out["logits"][0], single["logits"]) <= TOL
    assert max_abs_diff(out["mlm_logits"][0], single["mlm_logits"][:, 0]) <= TOL


def test_a_bert_directory_for_a_roberta_and_the_reverse_are_one_line(reference, tmp_path):
    """A BERT checkpoint's config.json read as RoBERTa's, and RoBERTa's as BERT's: each names the other type."""
    from jft.models.bert import BertConfig
    from jft.models.roberta import RobertaConfig

    _, _, path, config, _ = reference
    bert_json = {**transformers.BertConfig(hidden_size=48, num_attention_heads=3).to_dict()}
    with raises_one_line(r"describes a 'bert' model, not one of roberta, xlm-roberta\."):
        RobertaConfig.from_hf(bert_json)
    with raises_one_line(r"describes a '(xlm-)?roberta' model, not one of bert\."):
        BertConfig.from_hf(json.loads((path / "config.json").read_text()))

"""ModernBERT: the same logits, loss and gradients as Hugging Face's PyTorch ModernBERT (eager
attention), rows longer than the local window, padded and packed rows, every head in and out of
Hugging Face's names, and the kernels' sliding windows."""

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
from jft.models.modernbert import (
    FAMILY,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    init_params,
)

TOL = 1e-5
VOCAB = 1000


def _hf_config(**overrides) -> transformers.ModernBertConfig:
    """A small ModernBERT (hidden 48, 3 heads, 3 layers, vocab 1000) whose local window (4 tokens:
    2 each side) is shorter than the rows, global attention in layers 0 and 2, eager attention."""
    values = dict(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=64,
        local_attention=4,
        global_attn_every_n_layers=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        attn_implementation="eager",
    )
    return transformers.ModernBertConfig(**{**values, **overrides})


def _batch(seed: int, batch: int = 3, seq: int = 12) -> tuple[np.ndarray, np.ndarray]:
    return padded_ids(seed, VOCAB, 0, 3, batch, seq)


@pytest.fixture(scope="module", params=[False, True], ids=["no biases", "biases"])
def reference(request, tmp_path_factory):
    """A random PyTorch ModernBertForMaskedLM (ModernBERT's own: no biases; or every bias on) saved
    with save_pretrained, and jft's load of it."""
    biases = dict.fromkeys(("norm_bias", "attention_bias", "mlp_bias", "classifier_bias"), request.param)
    torch.manual_seed(0)
    model = perturbed(transformers.ModernBertForMaskedLM(_hf_config(**biases)), seed=1)
    path = tmp_path_factory.mktemp("modernbert")
    model.save_pretrained(path)
    config, params = hf.load(path)
    return model, path, config, params, biases


def test_logits_loss_and_gradients_equal_pytorch(reference, max_abs_diff):
    """On right-padded rows of 12 tokens (3 times the window), at every real token: PyTorch's MLM
    logits, its loss with every real token as its label, and the gradient of every weight."""
    model, _, config, params, _ = reference
    ids, mask = _batch(0)
    real = mask.astype(bool)
    labels = torch.tensor(np.where(real, ids, -100), dtype=torch.long)
    model.zero_grad()
    torch_out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), labels=labels)
    torch_out.loss.backward()

    def jft_loss(p):
        logits = ModernBertForMaskedLM(config).apply({"params": p}, input_ids=ids, attention_mask=mask)["mlm_logits"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
        return jnp.sum(losses * mask) / jnp.sum(mask), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(jft_loss, has_aux=True))(params)
    assert logits.shape == (3, 12, VOCAB) and logits.dtype == jnp.float32
    assert max_abs_diff(np.asarray(logits)[real], torch_out.logits.detach().numpy()[real]) <= TOL
    assert abs(float(loss) - float(torch_out.loss.detach())) <= TOL
    theirs = {name: weight.grad.numpy() for name, weight in model.named_parameters()}
    ours = FAMILY.weights_to_hf(grads, "torch")
    # tied, the decoder's weight is the token embeddings' (named once): its gradient sums both uses
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        assert max_abs_diff(ours[name], expected) <= TOL * max(float(np.max(np.abs(expected))), 1e-3), name
    assert not np.any(np.asarray(grads["model"]["layers"]["attn_norm"]["scale"][0]))  # layer 0 reads no attn_norm


def test_a_row_longer_than_the_model_takes_is_refused(reference):
    _, _, config, params, _ = reference
    with pytest.raises(JftError, match="65 tokens are longer than the model takes .* truncate them to 64"):
        ModernBertForMaskedLM(config).apply({"params": params}, input_ids=np.ones((1, 65), np.int32))


def _with_head(module, params: dict, seed: int) -> dict:
    """params with module's new weights added, random (biases too); what params has is kept."""
    shapes = jax.eval_shape(lambda: init_params(module, jax.random.key(0)))
    flat, kept = ptree.flatten(shapes), ptree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    new = {path: 0.1 * jax.random.normal(key, leaf.shape) for key, (path, leaf) in zip(keys, flat.items())}
    return ptree.unflatten({path: kept.get(path, new[path]) for path in flat})


@pytest.mark.parametrize(
    "architecture, module, pooling",
    [
        ("ModernBertForMaskedLM", None, "cls"),
        ("ModernBertForSequenceClassification", ModernBertForSequenceClassification, "cls"),
        ("ModernBertForSequenceClassification", ModernBertForSequenceClassification, "mean"),
        ("ModernBertForTokenClassification", ModernBertForTokenClassification, "cls"),
        ("ModernBertForQuestionAnswering", "question_answering", "cls"),
        ("ModernBertModel", "encoder", "cls"),
    ],
)
def test_safetensors_from_jft_loads_in_pytorch(reference, tmp_path, max_abs_diff, architecture, module, pooling):
    """Every weight is where transformers looks for it (none missing or unexpected; layer 0's
    attn_norm is not written), gives jft's logits, and loads back equal."""
    import dataclasses

    _, _, config, params, _ = reference
    config = dataclasses.replace(config, classifier_pooling=pooling)
    if module is None:
        module = ModernBertForMaskedLM(config)
    elif module == "encoder":
        params = {"model": params["model"]}
        module = FAMILY.module(config, FAMILY.head_of(params))
    elif module == "question_answering":
        module = FAMILY.module(config, Head("question_answering", 2))
        params = _with_head(module, {"model": params["model"], "head": params["head"]}, seed=2)
    else:
        params = _with_head(module(config, num_labels=3), {"model": params["model"], "head": params["head"]}, seed=2)
        module = module(config, num_labels=3)
    hf.save(tmp_path, config, params, format="safetensors")
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    ref, info = getattr(transformers, architecture).from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    ids, mask = _batch(2)
    with torch.no_grad():
        ref_out = ref.eval()(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    out = jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask)
    if architecture == "ModernBertModel":
        expected, ours = ref_out.last_hidden_state.numpy(), np.asarray(out["hidden"])
    elif architecture == "ModernBertForQuestionAnswering":
        expected = np.stack([ref_out.start_logits.numpy(), ref_out.end_logits.numpy()], -1)
        ours = np.asarray(out["logits"])
    else:
        key = "mlm_logits" if architecture == "ModernBertForMaskedLM" else "logits"
        expected, ours = ref_out.logits.numpy(), np.asarray(out[key])
    if ours.ndim == 3:
        assert max_abs_diff(ours[mask == 1], expected[mask == 1]) <= TOL
    else:
        assert ours.shape == (3, 3) and max_abs_diff(ours, expected) <= TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == config
    # read back, a per-token classifier is a sequence classifier's (Hugging Face's names do not say)
    if architecture not in ("ModernBertForTokenClassification", "ModernBertForQuestionAnswering"):
        assert FAMILY.head_of(params2) == FAMILY.head_of(params)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_packed_texts_give_the_logits_each_has_alone(reference, max_abs_diff, pooling):
    """Unpadded: one row holding three texts of 7, 5 and 6 tokens (each longer than the window;
    segment_ids 1, 2, 3, positions from 0 in each) gives each text's classifier logits (its first
    token, or the mean of its tokens) and MLM logits as the text alone in a padded batch."""
    import dataclasses

    _, _, config, params, _ = reference
    config = dataclasses.replace(config, classifier_pooling=pooling)
    lengths = [7, 5, 6]
    ids = _batch(3, batch=1, seq=sum(lengths))[0][0]
    starts = np.cumsum([0] + lengths[:-1])
    packed = dict(
        input_ids=ids[None],
        segment_ids=np.repeat(np.arange(1, 4), lengths)[None].astype(np.int32),
        position_ids=np.concatenate([np.arange(n) for n in lengths])[None].astype(np.int32),
        attention_mask=np.ones((1, sum(lengths)), np.int32),
        cls_positions=starts[None].astype(np.int32),
        masked_positions=(starts + 2)[None].astype(np.int32),
    )
    alone = np.zeros((3, max(lengths)), np.int32)
    for row, (start, length) in enumerate(zip(starts, lengths)):
        alone[row, :length] = ids[start : start + length]
    classifier = ModernBertForSequenceClassification(config, num_labels=2, mlm=True)
    task = _with_head(classifier, params, seed=3)
    run = jax.jit(classifier.apply)
    out = run({"params": task}, **packed)
    single = run(
        {"params": task},
        input_ids=alone,
        attention_mask=(np.arange(max(lengths))[None] < np.array(lengths)[:, None]).astype(np.int32),
        masked_positions=np.full((3, 1), 2, np.int32),
    )
    assert out["logits"].shape == (1, 3, 2) and out["mlm_logits"].shape == (1, 3, VOCAB)
    assert max_abs_diff(out["logits"][0], single["logits"]) <= TOL
    assert max_abs_diff(out["mlm_logits"][0], single["mlm_logits"][:, 0]) <= TOL


@pytest.mark.parametrize("packed", [False, True], ids=["padded rows", "packed rows"])
def test_the_kernels_sliding_windows_give_xlas_windowed_attention(packed, monkeypatch, max_abs_diff):
    """attention(..., window=w) on every real token: as spelled out by hand, and the same by
    splash's LocalMask (Pallas's interpreter) and by jax.nn.dot_product_attention's
    local_window_size (the cuDNN call, run here by its "xla" implementation)."""
    from jft.models import layers

    monkeypatch.setattr(layers, "SPLASH_INTERPRET", True)
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 40, 2, 8)), jnp.float32) for _ in range(3))
    real = np.arange(40)[None] < np.array([40, 23])[:, None]
    segments = np.where(real, 1 + (np.arange(40)[None] >= 15), 0) if packed else real.astype(np.int32)
    mask = layers.attention_mask_4d(jnp.asarray(real.astype(np.int32)), jnp.asarray(segments) if packed else None)
    out = layers.attention(q, k, v, mask, implementation="xla", dropout_rate=0.0, dropout_rng=None, window=5)
    distance = np.abs(np.arange(40)[:, None] - np.arange(40)[None])
    seen = np.asarray(mask) & (distance <= 5)
    logits = np.where(seen, np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(8), -1e30)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    by_hand = np.einsum("bnqk,bknh->bqnh", probs / probs.sum(-1, keepdims=True), v)
    splash = layers.splash_attention(q, k, v, jnp.asarray(segments), window=5)
    fused = layers.fused_attention(q, k, v, mask, "xla", window=5)
    for other in (by_hand, splash, fused):
        assert max_abs_diff(np.asarray(other)[real], np.asarray(out)[real]) <= TOL


def test_unrolled_layers_compute_the_scanned_function(reference, max_abs_diff):
    import dataclasses

    _, _, config, params, _ = reference
    ids, mask = _batch(4)
    scanned = ModernBertForMaskedLM(config).apply({"params": params}, input_ids=ids, attention_mask=mask)
    unrolled_config = dataclasses.replace(config, scan_layers=False, remat="dots")
    unrolled = ModernBertForMaskedLM(unrolled_config).apply({"params": params}, input_ids=ids, attention_mask=mask)
    assert max_abs_diff(scanned["mlm_logits"], unrolled["mlm_logits"]) <= TOL


def test_other_families_configs_and_weights_are_one_line(reference, tmp_path):
    from jft.models.modernbert import ModernBertConfig

    model, path, _, _, _ = reference
    bert_json = transformers.BertConfig(hidden_size=48, num_attention_heads=3).to_dict()
    with raises_one_line(r"describes a 'bert' model, not one of modernbert\."):
        ModernBertConfig.from_hf(bert_json)
    hf_config = json.loads((path / "config.json").read_text())
    with raises_one_line("heads of an even width"):
        ModernBertConfig.from_hf({**hf_config, "hidden_size": 45})
    with raises_one_line("scales its rotary positions"):
        ModernBertConfig.from_hf({**hf_config, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})

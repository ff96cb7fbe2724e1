"""GPT-2: the same logits, loss and gradients as Hugging Face's PyTorch and Flax models, its
checkpoints in and out, packed rows, the KV cache, the layer loop and the config's refusals."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from conftest import padded_ids, perturbed, raises_one_line, tiny_hf_config
from jft import params as ptree
from jft.errors import JftError
from jft.models import config_of, family_of_hf, hf
from jft.models.gpt2 import (
    FAMILY,
    Gpt2Config,
    Gpt2ForSequenceClassification,
    Gpt2ForTokenClassification,
    Gpt2LMHeadModel,
    init_cache,
    init_params,
)

TOL = 1e-5
VOCAB = 1000


def _hf_config(**overrides) -> transformers.GPT2Config:
    """A small GPT-2 (without dropout unless overridden), in Hugging Face's config class."""
    values = dict(n_embd=48, n_head=3, n_layer=3, vocab_size=VOCAB, n_positions=64)
    values.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2Config(**{**values, **overrides})


def _batch(seed: int, batch: int = 3, seq: int = 12) -> tuple[np.ndarray, np.ndarray]:
    return padded_ids(seed, VOCAB, 0, 1, batch, seq)


def _with_head(module, params: dict, seed: int) -> dict:
    """params with module's task head added, random (biases too), without compiling an initialisation."""
    shapes = jax.eval_shape(lambda: init_params(module, jax.random.key(0)))
    head = {name: tree for name, tree in shapes.items() if name != "transformer"}
    leaves, treedef = jax.tree.flatten(head)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    random = [0.1 * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)]
    return {**jax.tree.unflatten(treedef, random), "transformer": params["transformer"]}


def _next_word_loss(logits, input_ids, attention_mask):
    """Mean cross-entropy of each real token's logits against the next real token (HF's labels=input_ids,
    padding labelled -100)."""
    weights = attention_mask[:, 1:].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], input_ids[:, 1:])
    return jnp.sum(losses * weights) / jnp.sum(weights)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random PyTorch GPT2LMHeadModel saved with save_pretrained (safetensors), and jft's load of it."""
    torch.manual_seed(0)
    model = perturbed(transformers.GPT2LMHeadModel(_hf_config()), seed=1)
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    config, params = hf.load(path)
    return model, path, config, params


def test_logits_loss_and_gradients_equal_pytorch_and_flax_gpt2(reference, max_abs_diff):
    """On right-padded rows, at every real token: PyTorch's and Flax's logits, PyTorch's loss with
    labels=input_ids, and the gradients of that loss with respect to every Flax weight."""
    model, path, config, params = reference
    ids, mask = _batch(0)
    real = mask.astype(bool)
    labels = torch.tensor(np.where(real, ids, -100), dtype=torch.long)
    with torch.no_grad():
        torch_out = model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), labels=labels
        )
    flax_model = transformers.FlaxGPT2LMHeadModel.from_pretrained(path, from_pt=True)

    def jft_loss(p):
        logits = Gpt2LMHeadModel(config).apply({"params": p}, input_ids=ids, attention_mask=mask)["lm_logits"]
        return _next_word_loss(logits, ids, mask), logits

    def flax_loss(p):
        logits = flax_model(ids, attention_mask=mask, params=p).logits
        return _next_word_loss(logits, ids, mask), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(jft_loss, has_aux=True))(params)
    (_, flax_logits), flax_grads = jax.jit(jax.value_and_grad(flax_loss, has_aux=True))(flax_model.params)
    assert logits.shape == (3, 12, VOCAB) and logits.dtype == jnp.float32
    assert max_abs_diff(np.asarray(logits)[real], torch_out.logits.numpy()[real]) <= TOL
    assert max_abs_diff(np.asarray(logits)[real], np.asarray(flax_logits)[real]) <= TOL
    assert abs(float(loss) - float(torch_out.loss)) <= TOL
    grads, flax_grads = FAMILY.weights_to_hf(grads, "flax"), ptree.flatten(flax_grads)
    assert set(grads) == set(flax_grads)
    for name, expected in flax_grads.items():
        assert max_abs_diff(grads[name], expected) <= TOL * float(np.max(np.abs(expected))), name


def _as_written(config: Gpt2Config) -> Gpt2Config:
    """config as config.json holds it: without a pad_token_id, the end-of-text token pads (Gpt2Config.to_hf)."""
    return config if config.pad_token_id is not None else dataclasses.replace(config, pad_token_id=config.eos_token_id)


def test_msgpack_from_jft_loads_in_flax_gpt2(reference, tmp_path, max_abs_diff):
    _, _, config, params = reference
    hf.save(tmp_path, config, params, format="msgpack")
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    ids, mask = _batch(1)
    flax_model, flax_params = transformers.FlaxGPT2LMHeadModel.from_pretrained(tmp_path, _do_init=False)
    flax_logits = jax.jit(lambda p: flax_model(ids, attention_mask=mask, params=p).logits)(flax_params)
    logits = jax.jit(Gpt2LMHeadModel(config).apply)({"params": params}, input_ids=ids, attention_mask=mask)["lm_logits"]
    assert max_abs_diff(np.asarray(logits)[mask == 1], np.asarray(flax_logits)[mask == 1]) <= TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == _as_written(config)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


@pytest.mark.parametrize(
    "architecture, module",
    [
        ("GPT2LMHeadModel", None),
        ("GPT2ForSequenceClassification", Gpt2ForSequenceClassification),
        ("GPT2ForTokenClassification", Gpt2ForTokenClassification),
    ],
)
def test_safetensors_from_jft_loads_in_pytorch(reference, tmp_path, max_abs_diff, architecture, module):
    """Every weight is where transformers looks for it (none missing or unexpected) and gives jft's
    logits; the sequence classifier reads the last real token of each right-padded row."""
    _, _, config, params = reference
    config = dataclasses.replace(config, pad_token_id=0)
    module = Gpt2LMHeadModel(config) if module is None else module(config, num_labels=3)
    params = _with_head(module, params, seed=2)
    hf.save(tmp_path, config, params, format="safetensors")
    ref, info = getattr(transformers, architecture).from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    ids, mask = _batch(2)
    with torch.no_grad():
        ref_logits = ref.eval()(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    out = jax.jit(module.apply)({"params": params}, input_ids=ids, attention_mask=mask)
    logits = out["lm_logits" if architecture == "GPT2LMHeadModel" else "logits"]
    if logits.ndim == 3:
        assert max_abs_diff(np.asarray(logits)[mask == 1], ref_logits.numpy()[mask == 1]) <= TOL
    else:
        assert logits.shape == (3, 3) and max_abs_diff(logits, ref_logits.numpy()) <= TOL
    config2, params2 = hf.load(tmp_path)
    assert config2 == _as_written(config)
    assert FAMILY.head_of(params2) == FAMILY.head_of(params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2))


def test_packed_documents_give_the_logits_each_has_alone(reference, max_abs_diff):
    """One row holding two documents (segment_ids 1 then 2, positions from 0 in each): the LM logits
    of each, and a sequence classifier's logits for each (read at its last token), equal the
    document's alone; cls_positions' third slot is empty and reads position 0, the first token."""
    _, _, config, params = reference
    ids = _batch(3, batch=1, seq=14)[0][0]
    split = 5
    packed = dict(
        input_ids=ids[None],
        segment_ids=np.where(np.arange(14) < split, 1, 2)[None].astype(np.int32),
        position_ids=np.concatenate([np.arange(split), np.arange(14 - split)])[None].astype(np.int32),
        attention_mask=np.ones((1, 14), np.int32),
        cls_positions=np.array([[0, split, 0]], np.int32),
    )
    # alone: the first document, the second, and the first token, as right-padded rows
    alone = np.zeros((3, 14 - split), np.int32)
    alone[0, :split], alone[1], alone[2, 0] = ids[:split], ids[split:], ids[0]
    alone_mask = (alone > 0).astype(np.int32)
    classifier = Gpt2ForSequenceClassification(config, num_labels=2, mlm=True)
    task = _with_head(classifier, params, seed=3)
    run = jax.jit(classifier.apply)
    out = run({"params": task}, **packed)
    single = run({"params": task}, input_ids=alone, attention_mask=alone_mask)
    assert out["logits"].shape == (1, 3, 2) and out["lm_logits"].shape == (1, 14, VOCAB)
    assert max_abs_diff(out["logits"][0], single["logits"]) <= TOL
    assert max_abs_diff(out["lm_logits"][0, :split], single["lm_logits"][0, :split]) <= TOL
    assert max_abs_diff(out["lm_logits"][0, split:], single["lm_logits"][1]) <= TOL
    lm = jax.jit(Gpt2LMHeadModel(config).apply)(
        {"params": params}, **{k: v for k, v in packed.items() if k != "cls_positions"}
    )
    assert max_abs_diff(lm["lm_logits"], out["lm_logits"]) <= TOL  # the joint objective's: the same forward pass


def test_decoding_with_the_kv_cache_equals_recomputing_the_whole_row(reference, max_abs_diff):
    """A left-padded prompt prefilled into the cache, then one token at a time: each step's
    next-token logits equal those of the whole row so far run again without the cache, under jit."""
    _, _, config, params = reference
    model = Gpt2LMHeadModel(config)
    rng = np.random.default_rng(4)
    prompt_len, steps = 6, 4
    lengths = np.array([6, 3, 1])
    prompt_mask = (np.arange(prompt_len)[None] >= (prompt_len - lengths)[:, None]).astype(np.int32)
    prompt = np.where(prompt_mask == 1, rng.integers(1, VOCAB, (3, prompt_len)), 0).astype(np.int32)
    generated = rng.integers(1, VOCAB, (3, steps)).astype(np.int32)

    @jax.jit
    def cached(ids, mask, positions, cache):
        out = model.apply({"params": params}, input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
        return out["lm_logits"][:, -1], out["cache"]

    @jax.jit
    def whole(ids, mask, last):
        positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        out = model.apply({"params": params}, input_ids=ids, attention_mask=mask, position_ids=positions)
        return out["lm_logits"][:, last]

    def recomputed(ids, mask):
        """The row so far run again, the tokens still to come as padding (one shape: one compile)."""
        future = ((0, 0), (0, prompt_len + steps - ids.shape[1]))
        return whole(np.pad(ids, future), np.pad(mask, future), ids.shape[1] - 1)

    positions = np.maximum(np.cumsum(prompt_mask, axis=1) - 1, 0)
    logits, cache = cached(prompt, prompt_mask, positions, init_cache(config, 3, prompt_len + steps, jnp.float32))
    ids, mask = prompt, prompt_mask
    for step in range(steps + 1):
        assert max_abs_diff(logits, recomputed(ids, mask)) <= TOL, step
        assert int(cache["index"]) == prompt_len + step
        if step == steps:
            break
        token = generated[:, step : step + 1]
        ids, mask = np.concatenate([ids, token], 1), np.concatenate([mask, np.ones((3, 1), np.int32)], 1)
        positions = positions[:, -1:] + 1
        logits, cache = cached(token, np.ones((3, 1), np.int32), positions, cache)
    assert cache["key"].shape == (3, 3, prompt_len + steps, 3, 16)


@pytest.mark.parametrize("packed", [False, True], ids=["padded rows", "packed rows"])
def test_the_kernels_causal_masks_give_xla_causal_attention(packed, monkeypatch, max_abs_diff):
    """attention(..., causal=True) on every real token: as spelled out by hand, and the same by
    splash's CausalMask (Pallas's interpreter) and by jax.nn.dot_product_attention's is_causal (the
    cuDNN call, run here by its "xla" implementation)."""
    from jft.models import layers

    monkeypatch.setattr(layers, "SPLASH_INTERPRET", True)
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 40, 2, 8)), jnp.float32) for _ in range(3))
    real = np.arange(40)[None] < np.array([40, 23])[:, None]
    segments = np.where(real, 1 + (np.arange(40)[None] >= 15), 0) if packed else real.astype(np.int32)
    mask = layers.attention_mask_4d(jnp.asarray(real.astype(np.int32)), jnp.asarray(segments) if packed else None)
    out = layers.attention(q, k, v, mask, implementation="xla", dropout_rate=0.0, dropout_rng=None, causal=True)
    seen = np.asarray(mask) & np.tril(np.ones((40, 40), bool))
    logits = np.where(seen, np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(8), -1e30)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    by_hand = np.einsum("bnqk,bknh->bqnh", probs / probs.sum(-1, keepdims=True), v)
    splash = layers.splash_attention(q, k, v, jnp.asarray(segments), causal=True)
    fused = layers.fused_attention(q, k, v, mask, "xla", causal=True)
    for other in (by_hand, splash, fused):
        assert max_abs_diff(np.asarray(other)[real], np.asarray(out)[real]) <= TOL


def test_unrolled_layers_compute_the_scanned_function(reference):
    """scan_layers=False: the scanned outputs from the same stacked weights, dropout masks included."""
    _, _, config, params = reference
    base = dataclasses.replace(config, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    assert params["transformer"]["h"]["attn"]["c_attn"]["kernel"].shape == (3, 48, 144)
    ids, mask = _batch(5, batch=4, seq=16)
    rngs = {"dropout": jax.random.key(6)}
    logits = []
    for scan_layers in (True, False):
        model = Gpt2LMHeadModel(dataclasses.replace(base, scan_layers=scan_layers))
        run = jax.jit(
            lambda p, model=model: model.apply(
                {"params": p}, input_ids=ids, attention_mask=mask, deterministic=False, rngs=rngs
            )["lm_logits"]
        )
        logits.append(run(params))
    np.testing.assert_allclose(logits[1], logits[0], atol=TOL)


def test_remat_and_a_padded_vocabulary_keep_the_gradients(reference):
    """remat "dots" recomputes the same activations; vocab_multiple pads the LM head's matmul with
    rows whose logits are cut off: the same loss and gradients."""
    _, _, config, params = reference
    ids, mask = _batch(6, batch=4, seq=16)
    results = []
    for changes in ({}, {"remat": "dots", "vocab_multiple": 128}):
        model = Gpt2LMHeadModel(dataclasses.replace(config, **changes))

        def loss(p, model=model):
            return _next_word_loss(
                model.apply({"params": p}, input_ids=ids, attention_mask=mask)["lm_logits"], ids, mask
            )

        results.append(jax.jit(jax.value_and_grad(loss))(params))
    (value, grads), (other_value, other_grads) = results
    assert abs(float(other_value) - float(value)) <= TOL
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(other_grads), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5 * float(np.max(np.abs(a))) + 1e-7)


def test_configs_transformers_would_compute_differently_are_refused_in_one_line():
    with raises_one_line("reorder_and_upcast_attn"):
        Gpt2Config.from_hf(_hf_config(reorder_and_upcast_attn=True).to_dict())
    without_width = {k: v for k, v in _hf_config().to_dict().items() if k != "n_embd"}
    with raises_one_line("lacks n_embd"):
        Gpt2Config.from_hf(without_width)
    with raises_one_line("n_embd 48 is not divisible by n_head 5"):
        Gpt2Config(n_embd=48, n_head=5)
    with raises_one_line("set attn_pdrop=0"):
        Gpt2Config(attention_impl="splash")
    assert family_of_hf(tiny_hf_config().to_dict()).name == "bert"
    assert family_of_hf(_hf_config().to_dict()).name == "gpt2"
    tiny = Gpt2Config.preset("tiny", vocab_size=VOCAB, pad_token_id=7)
    assert Gpt2Config.from_hf(tiny.to_hf()) == tiny


def test_an_untied_lm_head_is_refused(reference):
    model, _, config, _ = reference
    tensors = {name: value.numpy() for name, value in model.state_dict().items()}
    FAMILY.weights_from_hf(tensors, "torch", config, "model.safetensors")  # tied: the copy is dropped
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1.0
    with pytest.raises(JftError, match="differs from its token embeddings"):
        FAMILY.weights_from_hf(tensors, "torch", config, "model.safetensors")


def test_init_writes_a_gpt2_and_a_bert_config_turned_gpt2_is_refused_in_one_line(tmp_path):
    from jft import cli
    from jft.models.bert import BertConfig

    assert cli.main(["init", "--config", "init:gpt2_tiny", "--out", str(tmp_path / "gpt2")]) == 0
    config, params = hf.load(tmp_path / "gpt2")
    assert isinstance(config, Gpt2Config) and FAMILY.head_of(params).kind == "pretraining"
    bert_fields = {**dataclasses.asdict(BertConfig.preset("tiny")), "family": "gpt2"}
    with raises_one_line("model.family is gpt2, but the model group holds another family's fields"):
        config_of(bert_fields)

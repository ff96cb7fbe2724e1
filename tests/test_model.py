"""The model's own behaviour: attention paths, dropout, bf16 compute, sparse MLM logits."""

import dataclasses

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_batch, masked_positions, tiny_hf_config
from jft.models.bert import BertConfig, BertForPreTraining, BertModel, init_params
from jft.models.family import Head
from jft.models.layers import Dropout, Embed, attention, attention_mask_4d, batch_rows, fused_attention, kept
from jft.models.registry import get


def _config(**overrides):
    return BertConfig.from_hf(tiny_hf_config(**overrides).to_dict())


def test_attention_with_dropout_path_equals_fused_path_when_nothing_is_dropped():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 4, 8)), jnp.float32) for _ in range(3))
    mask = attention_mask_4d(jnp.asarray(make_batch(0, batch=2, seq=7)["attention_mask"]))
    fused = attention(q, k, v, mask, implementation="xla", dropout_rate=0.0, dropout_rng=None)
    spelled_out = attention(q, k, v, mask, implementation="xla", dropout_rate=1e-9, dropout_rng=jax.random.key(0))
    assert np.max(np.abs(fused - spelled_out)) < 1e-6


@pytest.mark.parametrize("packed", [False, True], ids=["padded rows", "packed rows"])
def test_the_fused_kernels_masks_give_the_spelled_out_attention_on_every_real_token(packed):
    """What jft hands jax.nn.dot_product_attention's kernels (cuDNN on a GPU): a key-padding mask as
    each row's key count, a packed one as the full [batch, 1, q, k] mask. Run here through the same
    call with implementation "xla", which honours both as the kernel does."""
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 16, 2, 8)), jnp.float32) for _ in range(3))
    lengths = np.array([16, 5, 9])
    real = np.arange(16)[None] < lengths[:, None]
    segments = jnp.asarray(np.where(real, 1 + (np.arange(16)[None] >= lengths[:, None] // 2), 0)) if packed else None
    mask = attention_mask_4d(jnp.asarray(real.astype(np.int32)), segments)
    fused = fused_attention(q, k, v, mask, "xla")
    spelled_out = attention(q, k, v, mask, implementation="xla", dropout_rate=0.0, dropout_rng=None)
    assert np.max(np.abs(np.asarray(fused - spelled_out))[real]) < 1e-5


def test_attention_dropout_rescales_kept_probabilities():
    q, k = jnp.zeros((1, 1, 1, 4)), jnp.zeros((1, 64, 1, 4))
    v = jnp.ones((1, 64, 1, 4))
    mask = jnp.ones((1, 1, 1, 64), bool)
    out = attention(q, k, v, mask, implementation="xla", dropout_rate=0.5, dropout_rng=jax.random.key(3))
    # Uniform attention over 64 ones: each kept weight becomes 2/64, so the output is 2 * kept / 64.
    count = kept(jax.random.key(3), 0.5, (1, 1, 1, 64)).sum()
    assert 0 < count < 64 and np.allclose(out, 2 * count / 64)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keeps_one_minus_rate_and_scales_what_it_keeps(rate):
    """16 random bits a value: the kept fraction is 1 - rate within 4 standard errors; kept values are
    x / (1 - rate), the others 0, as flax's nn.Dropout; deterministic or rate 0 is the identity."""
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, size=(64, 1000)), jnp.float32)
    out = Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    fraction = float(jnp.mean(out != 0))
    assert abs(fraction - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / x.size)
    assert np.allclose(np.where(out != 0, out, x / (1 - rate)), x / (1 - rate), rtol=1e-6)
    assert np.array_equal(Dropout(rate).apply({}, x, deterministic=True), x)
    assert np.array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)
    assert bool(kept(jax.random.key(0), 1e-9, (8,)).all())


def test_a_rows_dropout_mask_is_its_place_in_the_batchs_not_its_devices():
    """kept draws each row's mask by the row's place in the whole batch (batch_rows): a device's or
    a micro-batch's rows get the whole batch's masks for them, whatever the key's kind; rows and
    values within a row draw independently (the 2 x 2 cross-table of adjacent values is 1 - rate's)."""
    shape, rate = (12, 3, 7, 5), 0.3  # 105 values a row: not a multiple of a hash's 4
    for key in (jax.random.key(5), jax.random.PRNGKey(5), jax.random.key(5, impl="rbg")):
        whole = np.asarray(kept(key, rate, shape))
        for rows in (np.arange(4, 8), np.array([11, 0, 6])):
            with batch_rows(jnp.asarray(rows)):
                np.testing.assert_array_equal(np.asarray(kept(key, rate, (len(rows), *shape[1:]))), whole[rows])
        assert len({row.tobytes() for row in whole}) == len(whole)
    many = np.asarray(kept(jax.random.key(1), rate, (64, 4096))).reshape(-1, 2)
    both = np.mean(many[:, 0] & many[:, 1])
    assert abs(both - (1 - rate) ** 2) < 4 * np.sqrt(0.49 * 0.51 / len(many))
    with pytest.raises(ValueError, match="not the batch's 3"), batch_rows(jnp.arange(3)):
        kept(jax.random.key(0), rate, (4, 2))


@pytest.mark.parametrize("packed", [False, True], ids=["padded rows", "packed rows"])
def test_the_tpu_splash_kernel_gives_xla_attention_on_every_real_token(packed, monkeypatch):
    """attention_impl 'splash' (Pallas's TPU kernel, run by its interpreter here): the same hidden
    states and gradients on real tokens, for rows not a multiple of its 128-token blocks."""
    from jft.models import layers

    monkeypatch.setattr(layers, "SPLASH_INTERPRET", True)
    xla = _config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = _packed_batch() if packed else {k: jnp.asarray(v) for k, v in make_batch(4, batch=2, seq=40).items()}
    real = np.asarray(batch["attention_mask"], bool)
    params = init_params(BertModel(xla), jax.random.key(0))
    results = {}
    for impl in ("xla", "splash"):
        model = BertModel(dataclasses.replace(xla, attention_impl=impl))

        def loss(p, model=model):
            hidden, _ = model.apply({"params": p}, **batch)
            return jnp.sum(jnp.where(real[..., None], hidden, 0.0) ** 2), hidden

        results[impl] = jax.value_and_grad(loss, has_aux=True)(params)
    (_, hidden), grads = results["xla"]
    (_, hidden_splash), grads_splash = results["splash"]
    np.testing.assert_allclose(np.asarray(hidden_splash)[real], np.asarray(hidden)[real], atol=2e-5)
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_splash), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5 * scale)  # the key bias's is 0 up to rounding


def _packed_batch() -> dict:
    """Two packed rows of 40 tokens: row 0 holds examples of 15 and 20 tokens, row 1 of 10, 10 and 12."""
    batch = {name: jnp.asarray(value) for name, value in make_batch(4, batch=2, seq=40).items()}
    ends = [[15, 35], [10, 20, 32]]
    segments = np.zeros((2, 40), np.int32)
    for row, row_ends in enumerate(ends):
        for example, (start, end) in enumerate(zip([0, *row_ends], row_ends)):
            segments[row, start:end] = example + 1
    batch["attention_mask"] = jnp.asarray((segments > 0).astype(np.int32))
    batch["segment_ids"] = jnp.asarray(segments)
    batch["cls_positions"] = jnp.asarray([[0, 15, 0], [0, 10, 20]])  # row 0's third is an empty slot
    return batch


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_the_last_layer_computes_only_the_rows_asked_for(impl, monkeypatch):
    """output_positions: the hidden states there and the pooled [CLS] states equal the full
    model's, gradients too, on packed rows (splash's segments become XLA's mask in the last
    layer); the compiled forward pass counts fewer FLOPs."""
    from jft.models import layers

    monkeypatch.setattr(layers, "SPLASH_INTERPRET", True)
    config = _config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attention_impl=impl)
    model = BertModel(config)
    batch = _packed_batch()
    positions = jnp.asarray([[3, 20, 20, 0], [11, 31, 5, 39]])  # repeats, and row 1's padding token
    params = init_params(BertModel(_config()), jax.random.key(0))

    def loss(p, wanted):
        hidden, pooled = model.apply({"params": p}, **batch, output_positions=wanted)
        at = hidden if wanted is not None else jnp.take_along_axis(hidden, positions[..., None], 1)
        return jnp.sum(at**2) + jnp.sum(jnp.sin(pooled)), (at, pooled)

    (_, (full_at, full_pooled)), full_grads = jax.value_and_grad(loss, has_aux=True)(params, None)
    (_, (at, pooled)), grads = jax.value_and_grad(loss, has_aux=True)(params, positions)
    assert at.shape == (2, 4, config.hidden_size) and pooled.shape == (2, 3, config.hidden_size)
    np.testing.assert_allclose(at, full_at, atol=2e-5)
    np.testing.assert_allclose(pooled, full_pooled, atol=2e-5)
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(full_grads))
    for a, b in zip(jax.tree.leaves(full_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(b, a, atol=2e-5 * scale)
    if impl == "xla":  # counted unrolled: XLA's cost analysis counts a loop's body once
        model = BertModel(dataclasses.replace(config, scan_layers=False))
        flops = {
            name: jax.jit(lambda p, w=wanted: loss(p, w)[0]).lower(params).compile().cost_analysis()["flops"]
            for name, wanted in (("full", None), ("rows", positions))
        }
        assert flops["rows"] < 0.8 * flops["full"], flops


def test_padding_does_not_change_real_tokens():
    config = _config(hidden_dropout_prob=0.0)
    model = BertModel(config)
    params = init_params(model, jax.random.key(0))
    batch = make_batch(1, batch=1, seq=10, padded=False)
    short = {k: v[:, :6] for k, v in batch.items()}
    padded = {k: np.concatenate([v[:, :6], np.zeros((1, 4), np.int32)], 1) for k, v in batch.items()}
    hidden_short, pooled_short = model.apply({"params": params}, **short)
    hidden_padded, pooled_padded = model.apply({"params": params}, **padded)
    assert np.max(np.abs(hidden_short - hidden_padded[:, :6])) < 1e-5
    assert np.max(np.abs(pooled_short - pooled_padded)) < 1e-5


def test_segment_ids_keep_packed_examples_apart():
    config = _config()
    model = BertModel(config, add_pooling_layer=False)
    params = init_params(model, jax.random.key(0))
    ids = jnp.asarray(make_batch(2, batch=1, seq=10, padded=False)["input_ids"])
    segments = jnp.asarray([[1] * 4 + [2] * 6])
    positions = jnp.asarray([list(range(4)) + list(range(6))])
    packed, _ = model.apply({"params": params}, ids, segment_ids=segments, position_ids=positions)
    second, _ = model.apply({"params": params}, ids[:, 4:])
    assert np.max(np.abs(packed[:, 4:] - second)) < 1e-5


def test_dropout_is_on_only_when_not_deterministic():
    config = _config()
    model = BertForPreTraining(config)
    params = init_params(model, jax.random.key(0))
    batch = make_batch(3)

    def run(seed, deterministic):
        return model.apply(
            {"params": params}, **batch, deterministic=deterministic, rngs={"dropout": jax.random.key(seed)}
        )["nsp_logits"]

    assert np.array_equal(run(0, True), run(1, True))
    assert np.array_equal(run(0, False), run(0, False))  # a key draws the same masks each time
    assert not np.allclose(run(0, False), run(1, False))
    assert not np.allclose(run(0, True), run(0, False))


def test_sparse_mlm_logits_equal_dense_logits_gathered():
    config = _config()
    model = BertForPreTraining(config)
    params = init_params(model, jax.random.key(0))
    batch = make_batch(4)
    positions = masked_positions(4, 3, 12, 6)
    sparse = model.apply({"params": params}, **batch, masked_positions=positions)["mlm_logits"]
    dense = model.apply({"params": params}, **batch)["mlm_logits"]
    assert sparse.shape == (3, 6, config.vocab_size)
    assert np.max(np.abs(sparse - np.take_along_axis(np.asarray(dense), positions[..., None], 1))) < 1e-5


def test_remat_keeps_the_gradients_and_lowers_the_memory():
    """Rematerialised layers recompute the same activations (dropout masks too) and keep fewer.

    Each choice recomputes more matmuls than the one before (counted in the compiled gradient):
    "none" none of them, and in the layer loop it keeps the matmuls' outputs only, so it needs
    less memory than the same layers unrolled (XLA's count on a CPU: 0.71 of it; 1.03 when the
    loop kept every value the backward pass reads)."""
    base = _config(num_hidden_layers=4, max_position_embeddings=128)
    ids = jnp.asarray(make_batch(5, batch=8, seq=128)["input_ids"])
    params = init_params(BertModel(base), jax.random.key(0))
    gradients, memory, matmuls = {}, {}, {}
    for remat, scan in (("none", True), ("dots", True), ("full", True), ("none", False), ("dots", False)):
        model = BertModel(dataclasses.replace(base, remat=remat, scan_layers=scan))

        def loss(p, model=model):
            hidden, pooled = model.apply({"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
            return jnp.sum(hidden**2) + jnp.sum(pooled)

        grad = jax.jit(jax.grad(loss))
        compiled = grad.lower(params).compile()
        memory[remat, scan] = compiled.memory_analysis().temp_size_in_bytes
        matmuls[remat, scan] = compiled.as_text().count(" dot(")
        gradients[remat, scan] = grad(params)
    for choice in (("dots", True), ("full", True), ("none", False), ("dots", False)):
        for a, b in zip(jax.tree.leaves(gradients["none", True]), jax.tree.leaves(gradients[choice]), strict=True):
            # float32 sums in another order: seen 1.1e-5 of the largest gradient on this CPU
            np.testing.assert_allclose(b, a, atol=3e-5 * float(np.max(np.abs(a))) + 1e-7)
    assert memory["full", True] < memory["dots", True] < memory["none", True] < 0.8 * memory["none", False]
    assert matmuls["none", True] < matmuls["dots", True] < matmuls["full", True]
    # unrolled, the recomputation stays in the program (CSE would merge it with the forward pass's)
    assert matmuls["none", False] < matmuls["dots", False]


def test_layers_are_scanned_with_a_leading_layer_axis():
    config = _config(num_hidden_layers=5)
    params = init_params(BertModel(config), jax.random.key(0))
    assert params["encoder"]["layer"]["attention"]["self"]["query"]["kernel"].shape == (5, 32, 32)
    layer0, layer1 = (params["encoder"]["layer"]["output"]["dense"]["kernel"][i] for i in (0, 1))
    assert not np.allclose(layer0, layer1)  # each layer initialised on its own


def test_unrolled_layers_give_the_scanned_outputs_and_gradients_from_the_same_parameters():
    """scan_layers=False unrolls the loop over the same stacked weights: same parameter tree, same
    function (dropout masks included), and no loop in the program."""
    base = _config(num_hidden_layers=3, remat="dots")
    ids = jnp.asarray(make_batch(6, batch=4, seq=16)["input_ids"])
    scanned, unrolled = BertModel(base), BertModel(dataclasses.replace(base, scan_layers=False))
    params = init_params(scanned, jax.random.key(0))
    assert jax.tree.structure(init_params(unrolled, jax.random.key(0))) == jax.tree.structure(params)
    results = {}
    for name, model in (("scan", scanned), ("unrolled", unrolled)):

        def loss(p, model=model):
            hidden, pooled = model.apply({"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
            return jnp.sum(hidden**2) + jnp.sum(pooled), hidden

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        forward = jax.jit(lambda p, model=model: model.apply({"params": p}, ids)[0]).lower(params).as_text()
        results[name] = (step(params), forward.count("stablehlo.while"))
    (value, hidden), grads = results["scan"][0]
    (value2, hidden2), grads2 = results["unrolled"][0]
    np.testing.assert_allclose(hidden2, hidden, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2), strict=True):
        np.testing.assert_allclose(b, a, atol=3e-5 * float(np.max(np.abs(a))) + 1e-7)
    assert (results["scan"][1], results["unrolled"][1]) == (1, 0)  # a loop over the layers, or none


@pytest.mark.parametrize("dtype", ["bfloat16"])  # float16 attention runs on GPUs only
def test_half_precision_compute_keeps_float32_params_and_logits(dtype):
    config32 = _config()
    config16 = dataclasses.replace(config32, dtype=dtype)
    params = init_params(BertForPreTraining(config16), jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    batch = make_batch(5)
    out16 = BertForPreTraining(config16).apply({"params": params}, **batch)
    out32 = BertForPreTraining(config32).apply({"params": params}, **batch)
    hidden16, _ = BertModel(config16).apply({"params": params["bert"]}, **batch)
    assert hidden16.dtype == jnp.dtype(dtype)
    assert out16["mlm_logits"].dtype == jnp.float32 and out16["nsp_logits"].dtype == jnp.float32
    assert np.max(np.abs(out16["mlm_logits"] - out32["mlm_logits"])) < 0.1


def test_auto_dtype_is_float32_on_cpu():
    expected = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    assert dataclasses.replace(_config(), dtype="auto").compute_dtype == expected


def _scatters(jaxpr) -> list:
    """Every scatter-add of a jaxpr and the jaxprs inside it (loops, remat, custom rules)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scatter-add":
            found.append(eqn.outvars[0].aval)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _scatters(sub)
    return found


@pytest.mark.parametrize("family_name", ["bert", "roberta", "gpt2", "modernbert"])
def test_bfloat16_embedding_gradients_are_float32_scatters(family_name):
    """A bfloat16 table's scatter-add serialised an H100's BERT-base step (149 of 224 ms):
    every embedding's gradient is a float32 scatter, the lookups' values unchanged."""
    family = get(family_name)
    config = family.preset("tiny", vocab_size=101, dtype="bfloat16")
    module = family.module(config, Head("classification", num_labels=3))
    params = family.init(config, Head("classification", num_labels=3), jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (4, 16), 0, 101)
    inputs = {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}

    def loss(params):
        return module.apply({"params": params}, **inputs)["logits"].sum()

    scatters = _scatters(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    tables = {leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params) if "embed" in str(path)}
    into_tables = [aval for aval in scatters if aval.shape in tables]
    assert into_tables and all(aval.dtype == jnp.float32 for aval in into_tables), scatters


@pytest.mark.parametrize("rows", [1, 5])
def test_embed_gives_flax_embeds_values_for_any_table(rows):
    """jft's Embed (rows taken in float32, then cast) against flax's nn.Embed: the same parameter and
    values; a one-row table (RoBERTa's token types) broadcasts its row whatever the ids."""
    ids = jnp.array([[0, 1, 2], [4, 3, 0]]) % rows
    ours, flax_embed = (cls(rows, 8, dtype=jnp.bfloat16) for cls in (Embed, nn.Embed))
    params = flax_embed.init(jax.random.key(0), ids)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), ids)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_array_equal(ours.apply(params, ids), flax_embed.apply(params, ids))
    np.testing.assert_array_equal(ours.apply(params, ids + 1 if rows == 1 else ids), flax_embed.apply(params, ids))

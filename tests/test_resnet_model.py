"""ResNet: the same logits and BatchNorm statistics as Hugging Face's PyTorch and Flax models (4.57),
in training and inference mode, checkpoints in and out, row masks, devices, and the config's refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import perturbed
from jft import params as ptree
from jft.errors import JftError
from jft.models import Head, hf
from jft.models.batch_norm import STATS, variables
from jft.models.resnet import FAMILY, ResNetConfig, build, flops

TOL = 1e-5
# Odd sizes: a stage that keeps the resolution (downsample_in_first_stage False), shortcuts where
# the channels change and where only the stride does, three labels.
SHAPES = {
    "basic": dict(embedding_size=6, hidden_sizes=[8, 12, 12], depths=[2, 1, 2], layer_type="basic"),
    "bottleneck": dict(embedding_size=8, hidden_sizes=[12, 20], depths=[1, 2], layer_type="bottleneck"),
    "bottleneck_strides": dict(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[2, 1],
        layer_type="bottleneck",
        downsample_in_first_stage=True,
        downsample_in_bottleneck=True,
    ),
}


def _torch_model(shape: str, seed: int = 0):
    config = transformers.ResNetConfig(num_labels=3, **SHAPES[shape])
    torch.manual_seed(seed)
    model = perturbed(transformers.ResNetForImageClassification(config), seed)
    with torch.no_grad():  # statistics other than 0 and 1, so that a misplaced one shows
        generator = torch.Generator().manual_seed(seed + 1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return config, model


def _ours(torch_model):
    tensors = {name: value.detach().numpy().copy() for name, value in torch_model.state_dict().items()}
    config = ResNetConfig.from_hf(torch_model.config.to_dict())
    return config, FAMILY.weights_from_hf(tensors, "torch", config, "test")


def _pixels(seed: int, batch: int = 4, side: int = 29) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, side, side, 3)).astype(np.float32)


def _apply(config, params, pixels, train: bool, row_mask=None):
    module = build(config, Head("classification", 3))
    return module.apply(
        variables(params), jnp.asarray(pixels), row_mask, deterministic=not train, mutable=[STATS] if train else False
    )


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_and_statistics_match_pytorch_in_both_modes(shape):
    _, model = _torch_model(shape)
    config, params = _ours(model)
    pixels = _pixels(1)
    with torch.no_grad():
        expected_eval = model(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).logits.numpy()
    np.testing.assert_allclose(np.asarray(_apply(config, params, pixels, False)["logits"]), expected_eval, atol=TOL)

    model.train()
    with torch.no_grad():
        expected_train = model(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).logits.numpy()
    out, updated = _apply(config, params, pixels, True)
    np.testing.assert_allclose(np.asarray(out["logits"]), expected_train, atol=TOL)
    # the running statistics moved as PyTorch's did (momentum 0.1, the variance unbiased)
    theirs = FAMILY.weights_from_hf({k: v.numpy() for k, v in model.state_dict().items()}, "torch", config, "test")
    for path, value in ptree.flatten(updated[STATS]).items():
        np.testing.assert_allclose(np.asarray(value), ptree.flatten(theirs[STATS])[path], atol=TOL, err_msg=path)
    assert not np.allclose(ptree.flatten(updated[STATS])[path], ptree.flatten(params[STATS])[path])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_training_loss_and_its_gradients_match_pytorch(shape):
    """In training mode (each BatchNorm normalises by the batch's own statistics, whose gradient
    flows back through them): the cross-entropy and its gradient for every weight, as PyTorch's."""
    _, model = _torch_model(shape, seed=3)
    config, params = _ours(model)
    pixels, labels = _pixels(2), np.array([2, 0, 1, 2])
    model.train()
    loss = torch.nn.functional.cross_entropy(
        model(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).logits, torch.from_numpy(labels)
    )
    loss.backward()

    def our_loss(weights):
        out, _ = _apply(config, {**weights, STATS: params[STATS]}, pixels, True)
        return -jnp.mean(jax.nn.log_softmax(out["logits"])[jnp.arange(4), labels])

    weights = {name: tree for name, tree in params.items() if name != STATS}
    value, grads = jax.value_and_grad(our_loss)(weights)
    np.testing.assert_allclose(float(value), loss.item(), atol=TOL)
    tensors = {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}
    tensors |= {name: p.grad.numpy() for name, p in model.named_parameters()}  # the gradients where the weights were
    expected = ptree.flatten(FAMILY.weights_from_hf(tensors, "torch", config, "gradients"))
    flat = ptree.flatten(grads)
    assert flat and set(flat) <= set(expected)
    scale = max(float(np.max(np.abs(expected[path]))) for path in flat)  # float32 sums: seen 1.2e-6 of it
    for path, grad in flat.items():
        np.testing.assert_allclose(np.asarray(grad), expected[path], atol=TOL * scale, err_msg=path)


def test_logits_match_flax_resnet_and_its_statistics_but_the_variance_convention():
    """Hugging Face's Flax ResNet (flax's BatchNorm) gives the same logits in both modes and the same
    running means; its running variance takes the biased batch variance, where PyTorch (and jft,
    whose checkpoints are PyTorch's) take the unbiased one."""
    hf_config, model = _torch_model("basic", seed=3)
    config, params = _ours(model)
    flax_model = transformers.FlaxResNetForImageClassification(hf_config)
    theirs = FAMILY.weights_to_hf(params, "flax")
    flax_vars = ptree.unflatten(theirs)
    pixels = _pixels(4, batch=5, side=33)
    nchw = jnp.asarray(pixels.transpose(0, 3, 1, 2))
    expected = flax_model(nchw, params=flax_vars, train=False).logits
    np.testing.assert_allclose(np.asarray(_apply(config, params, pixels, False)["logits"]), expected, atol=TOL)

    module = flax_model.module
    expected, updates = module.apply(flax_vars, jnp.asarray(pixels), deterministic=False, mutable=["batch_stats"])
    out, ours = _apply(config, params, pixels, True)
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(expected.logits), atol=TOL)
    theirs = FAMILY.weights_from_hf(ptree.flatten({"batch_stats": updates["batch_stats"]}), "flax", config, "t")
    count = 5 * 17 * 17  # the stem's outputs: 5 images of 17 × 17
    for path, value in ptree.flatten(ours[STATS]).items():
        if not path.startswith("resnet/embedder"):
            continue
        mine, flax_value = np.asarray(value), ptree.flatten(theirs[STATS])[path]
        if path.endswith("mean"):
            np.testing.assert_allclose(mine, flax_value, atol=TOL)
        else:  # 0.9 · old + 0.1 · var · n / (n − 1), against 0.9 · old + 0.1 · var
            old = ptree.flatten(params[STATS])[path]
            np.testing.assert_allclose((mine - 0.9 * old) * (count - 1) / count, flax_value - 0.9 * old, atol=TOL)


def test_rows_left_out_by_the_mask_change_nothing():
    _, model = _torch_model("bottleneck")
    config, params = _ours(model)
    pixels = _pixels(2, batch=3)
    filler = np.concatenate([pixels, 100 * _pixels(9, batch=2)])
    out, stats = _apply(config, params, pixels, True)
    out_masked, stats_masked = _apply(config, params, filler, True, jnp.array([1, 1, 1, 0, 0]))
    np.testing.assert_allclose(np.asarray(out_masked["logits"])[:3], np.asarray(out["logits"]), atol=TOL)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_masked), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL)


def test_statistics_over_devices_are_the_whole_batch():
    """Under shard_map over 8 devices, each with its own rows (and a different count of real ones),
    BatchNorm normalises with the whole batch's statistics: one device's result."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    _, model = _torch_model("basic")
    config, params = _ours(model)
    pixels = _pixels(5, batch=16, side=21)
    mask = jnp.asarray(np.arange(16) % 3 != 0)
    module = build(config, Head("classification", 3)).clone(axis_name="batch")
    single = _apply(config, params, pixels, True, mask)

    def step(pixels, mask):
        return module.apply(variables(params), pixels, mask, deterministic=False, mutable=[STATS])

    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P("batch"), P("batch")), out_specs=(P("batch"), P())))
    out, stats = sharded(jnp.asarray(pixels), mask)
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(single[0]["logits"]), atol=TOL)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(single[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL)


@pytest.mark.parametrize("format", ["safetensors", "msgpack"])
def test_checkpoint_round_trip_loads_in_pytorch(tmp_path, format):
    _, model = _torch_model("bottleneck_strides", seed=5)
    config, params = _ours(model)
    hf.save(tmp_path, config, params, format=format)
    loaded_config, loaded = hf.load(tmp_path)
    assert loaded_config == ResNetConfig.from_hf(model.config.to_dict())
    for path, value in ptree.flatten(params).items():
        np.testing.assert_array_equal(np.asarray(value), ptree.flatten(loaded)[path], err_msg=path)
    if format == "safetensors":
        back, info = transformers.ResNetForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        pixels = _pixels(6)
        with torch.no_grad():
            logits = back.eval()(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).logits.numpy()
        np.testing.assert_allclose(np.asarray(_apply(config, params, pixels, False)["logits"]), logits, atol=TOL)


@pytest.mark.parametrize("shape", ["basic", "bottleneck"])
def test_flops_count_the_convolutions_as_xla_does(shape):
    """Within 3% of XLA's count at 96 pixels (XLA leaves out the taps on the zero padding, which
    weigh more at small sides: 7% at 32)."""
    # ResNet-50 at 224: 4.1 billion multiply-adds forward (He et al.'s "3.8 billion FLOPs")
    assert 4.0e9 < flops(ResNetConfig.preset("resnet50"), 1, 224) / 3 / 2 < 4.2e9
    config = ResNetConfig(**SHAPES[shape])
    params = FAMILY.init(config, Head("classification", 3), jax.random.key(0))
    forward = jax.jit(lambda p, x: _apply(config, p, x, False)["logits"])
    counted = forward.lower(params, jnp.zeros((2, 96, 96, 3))).compile().cost_analysis()["flops"]
    assert abs(flops(config, 2, 96, num_labels=3) / 3 / counted - 1) < 0.03


def test_bad_configs_are_refused():
    with pytest.raises(JftError, match="differ in length"):
        ResNetConfig(hidden_sizes=(8, 16), depths=(1,))
    with pytest.raises(JftError, match="layer_type 'wide'"):
        ResNetConfig(layer_type="wide")
    with pytest.raises(JftError, match="image_mean must hold one number a channel"):
        ResNetConfig(image_mean=(0.5,))
    with pytest.raises(JftError, match="does not have: resnet.encoder.stages.9"):
        FAMILY.weights_from_hf({"resnet.encoder.stages.9.extra.weight": np.zeros(3)}, "torch", None, "x")

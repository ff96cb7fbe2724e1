"""BatchNorm as PyTorch computes it, across devices, and where its statistics are kept.

Image models keep running means and variances besides their weights. jft keeps them in the
parameter tree under STATS ("batch_stats"), a top-level entry beside the model's own, so that
every path that moves weights (checkpoints, best/, init_from, θ_ref, sweeps' populations, export)
moves them too. They are no weights: the optimizer never changes them (their gradient is stopped
and weight decay masked), the L2 penalty leaves them out, and a training step writes the batch's
statistics into them after the update (jft.train.steps).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

STATS = "batch_stats"


def is_statistic(path: str) -> bool:
    """Whether a '/'-joined parameter path is a BatchNorm statistic, not a weight."""
    return path == STATS or path.startswith(STATS + "/")


def variables(params: dict) -> dict:
    """Flax's variables of a parameter tree: {"params": the weights, STATS: the statistics (their
    gradient stopped)} when it holds statistics, else {"params": params}."""
    if STATS not in params:
        return {"params": params}
    weights = {name: tree for name, tree in params.items() if name != STATS}
    return {"params": weights, STATS: jax.lax.stop_gradient(params[STATS])}


def trains_statistics(config, deterministic: bool, row_mask=None) -> tuple[bool, jax.Array | None]:
    """(whether BatchNorm normalises with the batch's statistics and updates the running ones:
    in training unless config.freeze_batch_norm; the row mask as booleans, or None)."""
    train = not deterministic and not config.freeze_batch_norm
    return train, None if row_mask is None else row_mask.astype(bool)


def init_image_model(module: nn.Module, rng: jax.Array) -> dict:
    """Fresh parameters of an image model from one blank image of its side, with the BatchNorm
    statistics under STATS when it has BatchNorm."""
    cfg = module.config
    pixels = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
    initial = module.init({"params": rng}, pixels)
    return {**initial["params"], **({STATS: initial[STATS]} if STATS in initial else {})}


class BatchNorm(nn.Module):
    """Batch normalisation over every axis but the last, as torch.nn.BatchNorm2d: in training the
    batch's mean and (biased) variance normalise, and the running statistics move by `momentum`
    toward them, the variance unbiased (n / (n - 1)); in inference the running ones normalise.

    The statistics are sums over all devices of axis_name (psum of the sums and of the count of
    real rows), so n devices compute what one device computes with the whole batch, whatever rows
    each holds; mask [batch] leaves out rows that only fill a batch. Two passes (the mean, then
    the squared deviations from it), as PyTorch, not E[x²] − E[x]²."""

    momentum: float = 0.1
    epsilon: float = 1e-5
    axis_name: str | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        running_mean = self.variable(STATS, "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable(STATS, "var", jnp.ones, (features,), jnp.float32)
        if train:
            values = x.astype(jnp.float32)
            weight = jnp.ones(x.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
            weight = weight.reshape((-1,) + (1,) * (x.ndim - 1))
            count = self._sum(weight.sum() * (values.size // (x.shape[0] * features)))
            mean = self._sum((values * weight).sum(range(x.ndim - 1))) / jnp.maximum(count, 1)
            var = self._sum((jnp.square(values - mean) * weight).sum(range(x.ndim - 1))) / jnp.maximum(count, 1)
            if not self.is_initializing():
                unbiased = var * count / jnp.maximum(count - 1, 1)
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        multiplier = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        shift = bias.astype(jnp.float32) - mean * multiplier
        return (x * multiplier.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)

    def _sum(self, value):
        return value if self.axis_name is None else jax.lax.psum(value, self.axis_name)

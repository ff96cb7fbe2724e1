"""Losses and accuracies: arrays in, float32 sums out. Nothing here knows about files or devices.

Each function returns sums and counts rather than means, so that a step can divide by the count
over all devices and get the same value as one device with the whole batch.
"""

import jax
import jax.numpy as jnp
import optax

from jft.params import flatten


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, smoothing: float = 0.0, mixed=None
) -> dict[str, jax.Array]:
    """logits: [..., classes], labels: [...] int, weights: [...] -> {loss_sum, correct, count}, float32.

    smoothing: label smoothing's ε, the target (1 − ε) on the label and ε spread evenly over every
    class. mixed: (other_labels, share) [...] of mixup's rows: the loss is (1 − share) · the loss
    on labels + share · the loss on other_labels (hits count against labels)."""
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)

    def losses(targets):
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        if not smoothing:
            return nll
        return (1 - smoothing) * nll - smoothing * jax.nn.log_softmax(logits).mean(-1)

    loss = losses(labels)
    if mixed is not None:
        other, share = mixed
        loss = (1 - share) * loss + share * losses(other)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss_sum": (loss * weights).sum(), "correct": (correct * weights).sum(), "count": weights.sum()}


def squared_error(predictions: jax.Array, targets: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """predictions, targets, weights: [...] -> {loss_sum, count}, float32 (regression)."""
    errors = (predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2
    weights = weights.astype(jnp.float32)
    return {"loss_sum": (errors * weights).sum(), "count": weights.sum()}


def means(sums: dict) -> dict:
    """Mean loss (and accuracy, where there are hits) of the sums above: {loss[, accuracy]}."""
    count = jnp.maximum(sums["count"], 1)
    out = {"loss": sums["loss_sum"] / count}
    if "correct" in sums:
        out["accuracy"] = sums["correct"] / count
    return out


def l2_penalty(params, reference, mask) -> jax.Array:
    """Σ ‖θ − θ_ref‖² over the leaves where mask is True; reference None means θ_ref = 0.

    reference may hold only some of the leaves (the ones loaded from a checkpoint); the others
    are pulled toward 0.
    """
    theta, where = flatten(params), flatten(mask)
    ref = flatten(reference) if reference is not None else {}
    total = jnp.zeros((), jnp.float32)
    for path, value in theta.items():
        if where[path]:
            difference = value.astype(jnp.float32) - (ref[path].astype(jnp.float32) if path in ref else 0.0)
            total = total + jnp.sum(difference * difference)
    return total

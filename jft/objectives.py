"""Losses and accuracies: arrays in, float32 sums out. Nothing here knows about files or devices.

Each function returns sums and counts rather than means, so that a step can divide by the count
over all devices and get the same value as one device with the whole batch.
"""

import jax
import jax.numpy as jnp
import optax


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """logits: [..., classes], labels: [...] int, weights: [...] -> {loss_sum, correct, count}, float32."""
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss_sum": (losses * weights).sum(), "correct": (correct * weights).sum(), "count": weights.sum()}

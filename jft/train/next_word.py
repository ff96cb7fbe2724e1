"""The next-word objective's inputs, on the device, inside the compiled step (the causal
counterpart of jft.train.masking): which documents a row holds, their positions, and each token's
target, the token after it in the same document.

A row of next-word pretraining is a piece of the token stream "doc <|endoftext|> doc
<|endoftext|> ..." (jft.data.prepare, mode "causal"), with `starts` True where a document (or the
row) begins. Each document is a segment of its own: its tokens attend within it, its positions
start at 0, and its last token (the end-of-text) predicts nothing, since the next document's first
token does not follow from it. No row is padded but the last of a window, whose tail has
attention_mask 0.
"""

import jax
import jax.numpy as jnp


def segments(starts: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """starts, attention_mask: [batch, seq] -> segment_ids (1, 2, ... a document; 0 on padding)
    and position_ids (from 0 at each document's start), [batch, seq] int32."""
    starts = jnp.asarray(starts, bool).at[:, 0].set(True)  # a row begins a segment whatever it holds
    segment_ids = jnp.cumsum(starts, axis=1, dtype=jnp.int32) * attention_mask.astype(jnp.int32)
    index = jnp.arange(starts.shape[1], dtype=jnp.int32)
    last_start = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    return segment_ids, index - last_start


def next_tokens(input_ids: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """input_ids, segment_ids: [batch, seq] -> targets [batch, seq] int32 (the token after each
    one) and weights [batch, seq] float32 (1 where that token is real and of the same segment;
    0 at the row's end, at a segment's end and on padding)."""
    following = jnp.pad(input_ids[:, 1:], ((0, 0), (0, 1)))
    following_segment = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
    weights = (segment_ids > 0) & (following_segment == segment_ids)
    return following.astype(jnp.int32), weights.astype(jnp.float32)


def causal_inputs(batch: dict) -> dict:
    """A pretraining batch (input_ids, attention_mask, word_start as the documents' starts) with
    segment_ids, position_ids, next_labels and next_weights added, all [batch, seq]."""
    segment_ids, position_ids = segments(batch["word_start"], batch["attention_mask"])
    targets, weights = next_tokens(batch["input_ids"], segment_ids)
    return {
        **batch,
        "segment_ids": segment_ids,
        "position_ids": position_ids,
        "next_labels": targets,
        "next_weights": weights,
    }


def task_next_tokens(batch: dict) -> tuple[jax.Array, jax.Array]:
    """The next-word targets and weights of a fine-tuning batch's own text (the joint objective):
    within each packed example (segment_ids), or each row."""
    segment_ids = batch.get("segment_ids")
    if segment_ids is None:
        segment_ids = batch["attention_mask"].astype(jnp.int32)
    return next_tokens(batch["input_ids"], segment_ids)

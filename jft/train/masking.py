"""Dynamic masked-LM masking, on the device, inside the compiled step.

Each row draws its own key from (step key, global row index), so a row gets a new mask every
time it is seen and the masks do not depend on how the batch is split over devices.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jft.errors import JftError


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """BERT's recipe: 15% of the maskable tokens; of those 80% [MASK], 10% random, 10% unchanged."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]  # never masked ([CLS], [SEP], [PAD], ...)
    max_predictions: int = 20
    rate: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    whole_word: bool = False

    @classmethod
    def for_vocabulary(cls, special_ids: dict[str, int], vocab_size: int, **options) -> "MaskingConfig":
        """BERT's masking for a vocabulary with special_ids {pad, cls, sep, mask, ...}; options: the other fields."""
        never = tuple(special_ids[name] for name in ("pad", "cls", "sep", "mask"))
        return cls(mask_id=special_ids["mask"], vocab_size=vocab_size, special_ids=never, **options)


def mask_row(
    config: MaskingConfig, key: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, word_start: jax.Array
) -> dict[str, jax.Array]:
    """Masks one row. input_ids, attention_mask, word_start: [seq].

    Returns input_ids (masked), masked_positions and masked_labels ([max_predictions] int32),
    masked_weights ([max_predictions] float32, 1 for a real prediction, 0 for padding).
    """
    seq_len = input_ids.shape[0]
    if config.max_predictions > seq_len:
        raise JftError(
            f"masking.max_predictions {config.max_predictions} is larger than the rows ({seq_len} tokens); "
            f"use at most {seq_len} (BERT uses 20 for 128 tokens, 80 for 512)."
        )
    select_key, action_key, random_key = jax.random.split(key, 3)
    special = jnp.isin(input_ids, jnp.asarray(config.special_ids, input_ids.dtype))
    maskable = attention_mask.astype(bool) & ~special
    num_maskable = maskable.sum()
    budget = jnp.round(num_maskable * config.rate).astype(jnp.int32)
    budget = jnp.clip(budget, jnp.minimum(num_maskable, 1), config.max_predictions)

    if config.whole_word:
        # Words in random order; a word is taken whole if its maskable pieces still fit in the
        # budget, else skipped (as in BERT's create_pretraining_data), and the scan goes on.
        word_id = jnp.maximum(jnp.cumsum(word_start.astype(jnp.int32)) - 1, 0)
        word_size = jax.ops.segment_sum(maskable.astype(jnp.int32), word_id, num_segments=seq_len)
        word_order = jnp.argsort(jax.random.uniform(select_key, (seq_len,)))

        def take_word(count, word):
            take = (word_size[word] > 0) & (count + word_size[word] <= budget)
            return count + jnp.where(take, word_size[word], 0), take

        _, taken_in_order = jax.lax.scan(take_word, jnp.zeros((), jnp.int32), word_order)
        taken = jnp.zeros(seq_len, bool).at[word_order].set(taken_in_order)
        chosen = maskable & taken[word_id]
        scores = jnp.where(chosen, jax.random.uniform(select_key, (seq_len,)), -1.0)
    else:
        scores = jnp.where(maskable, jax.random.uniform(select_key, (seq_len,)), -1.0)
        chosen = maskable & (jnp.argsort(jnp.argsort(-scores)) < budget)

    top_scores, positions = jax.lax.top_k(jnp.where(chosen, scores, -1.0), config.max_predictions)
    weights = (top_scores >= 0.0).astype(jnp.float32)
    labels = input_ids[positions]
    action = jax.random.uniform(action_key, (config.max_predictions,))
    random_tokens = jax.random.randint(random_key, (config.max_predictions,), 0, config.vocab_size, input_ids.dtype)
    replacement = jnp.where(
        action < config.mask_fraction,
        jnp.asarray(config.mask_id, input_ids.dtype),
        jnp.where(action < config.mask_fraction + config.random_fraction, random_tokens, labels),
    )
    # top_k returns distinct positions, so the scatter writes each token at most once.
    masked_ids = input_ids.at[positions].set(jnp.where(weights > 0, replacement, labels))
    return {
        "input_ids": masked_ids,
        "masked_positions": positions.astype(jnp.int32),
        "masked_labels": labels.astype(jnp.int32),
        "masked_weights": weights,
    }


def mask_batch(
    config: MaskingConfig,
    key: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    word_start: jax.Array,
    row_ids: jax.Array,
) -> dict[str, jax.Array]:
    """mask_row over a batch; row_ids: [batch] global indices that pick each row's key."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(row_ids)
    return jax.vmap(lambda k, i, a, w: mask_row(config, k, i, a, w))(keys, input_ids, attention_mask, word_start)

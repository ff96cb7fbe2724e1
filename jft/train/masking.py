"""Dynamic masked-LM masking, on the device, inside the compiled step.

Each row draws its own key from (step key, global row index), so a row gets a new mask every
time it is seen and the masks do not depend on how the batch is split over devices. A row's
random numbers are jax.random's (`row_draws`); for threefry keys, JAX's default, the batch's are
hashed together (`threefry_draws`: the same bits, four threefry loops for the whole batch instead
of seven, which XLA compiles in a third less time).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

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


class Draws(NamedTuple):
    """A row's random numbers: select [seq] uniforms that order the candidates; action
    [max_predictions] uniforms that pick [MASK], a random token or the token itself; random_tokens
    [max_predictions] ids in [0, vocab_size)."""

    select: jax.Array
    action: jax.Array
    random_tokens: jax.Array


def row_draws(config: MaskingConfig, key: jax.Array, seq_len: int, dtype) -> Draws:
    """One row's draws by jax.random from its key: what `threefry_draws` computes for a batch."""
    select_key, action_key, random_key = jax.random.split(key, 3)
    return Draws(
        select=jax.random.uniform(select_key, (seq_len,)),
        action=jax.random.uniform(action_key, (config.max_predictions,)),
        random_tokens=jax.random.randint(random_key, (config.max_predictions,), 0, config.vocab_size, dtype),
    )


def fold_in_draws(config: MaskingConfig, key: jax.Array, row_ids: jax.Array, seq_len: int, dtype) -> Draws:
    """Each row's draws by jax.random from fold_in(key, row id) ([batch, ...]): the definition that
    `threefry_draws` computes faster, and the draws of other random generators."""
    return jax.vmap(lambda i: row_draws(config, jax.random.fold_in(key, i), seq_len, dtype))(row_ids)


def _threefry(requests: list[tuple[jax.Array, str, int]]) -> list[jax.Array]:
    """One threefry2x32 hash over the counters of several requests (key [batch, 2] uint32, kind, n):
    "bits" gives what jax.random.bits(key, (n,), uint32) gives for each row's key ([batch, n]),
    "split" what jax.random.split(key, n) does ([batch, n, 2]), in the current threefry mode
    (jax_threefry_partitionable or the classic counters, jax's threefry2x32.py)."""
    partitionable = jax.config.jax_threefry_partitionable
    counters, widths = [], []
    for _, kind, n in requests:
        if partitionable:  # counter i as the 64-bit (0, i)
            counters.append((np.zeros(n, np.uint32), np.arange(n, dtype=np.uint32)))
        else:  # counters 0..m-1 (m = 2n for keys), a zero appended to an odd count, in two halves
            m = 2 * n if kind == "split" else n
            counters.append(tuple(np.split(np.append(np.arange(m), [0] * (m % 2)).astype(np.uint32), 2)))
        widths.append(len(counters[-1][0]))
    batch = requests[0][0].shape[0]
    k1, k2 = (
        jnp.concatenate(
            [jnp.broadcast_to(key[:, i : i + 1], (batch, w)) for (key, _, _), w in zip(requests, widths)], 1
        )
        for i in (0, 1)
    )
    x0, x1 = (jnp.broadcast_to(np.concatenate([c[i] for c in counters]), k1.shape) for i in (0, 1))
    y0, y1 = threefry2x32_p.bind(k1, k2, x0, x1)
    outputs, start = [], 0
    for (_, kind, n), width in zip(requests, widths):
        h0, h1 = y0[:, start : start + width], y1[:, start : start + width]
        start += width
        if partitionable:
            outputs.append(h0 ^ h1 if kind == "bits" else jnp.stack([h0, h1], -1))
        else:
            flat = jnp.concatenate([h0, h1], 1)
            outputs.append(flat[:, :n] if kind == "bits" else flat[:, : 2 * n].reshape(batch, n, 2))
    return outputs


def _uniform(bits: jax.Array) -> jax.Array:
    """jax.random.uniform's float32 in [0, 1) from 32 random bits: 23 of them as the mantissa."""
    return jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - 1.0


def _randint(higher: jax.Array, lower: jax.Array, maxval: int, dtype) -> jax.Array:
    """jax.random.randint's value in [0, maxval) from its two 32-bit draws (uint32 arithmetic, wrapping as jax's)."""
    span, multiplier = np.uint32(maxval), np.uint32((2**16 % maxval) ** 2 % 2**32 % maxval)
    return (((higher % span) * multiplier + lower % span) % span).astype(dtype)


def threefry_draws(config: MaskingConfig, key: jax.Array, row_ids: jax.Array, seq_len: int, dtype) -> Draws:
    """row_draws(config, fold_in(key, row id), ...) for every row ([batch, ...]), bit for bit, by four
    threefry hashes for the whole batch: the rows' keys, their three keys each, then the two
    uniforms and randint's two keys in one hash, then randint's two draws in one."""
    key = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    batch = row_ids.shape[0]
    row_keys = jnp.stack(
        threefry2x32_p.bind(
            jnp.full(batch, key[0]), jnp.full(batch, key[1]), jnp.zeros(batch, jnp.uint32), row_ids.astype(jnp.uint32)
        ),
        -1,
    )
    (keys,) = _threefry([(row_keys, "split", 3)])
    p = config.max_predictions
    select, action, randint_keys = _threefry(
        [(keys[:, 0], "bits", seq_len), (keys[:, 1], "bits", p), (keys[:, 2], "split", 2)]
    )
    higher, lower = _threefry([(randint_keys[:, 0], "bits", p), (randint_keys[:, 1], "bits", p)])
    return Draws(_uniform(select), _uniform(action), _randint(higher, lower, config.vocab_size, dtype))


def mask_row(
    config: MaskingConfig, draws: Draws, input_ids: jax.Array, attention_mask: jax.Array, word_start: jax.Array
) -> dict[str, jax.Array]:
    """Masks one row by its draws. input_ids, attention_mask, word_start: [seq].

    Returns input_ids (masked), masked_positions and masked_labels ([max_predictions] int32),
    masked_weights ([max_predictions] float32, 1 for a real prediction, 0 for padding).
    """
    seq_len = input_ids.shape[0]
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
        word_order = jnp.argsort(draws.select)

        def take_word(count, word):
            take = (word_size[word] > 0) & (count + word_size[word] <= budget)
            return count + jnp.where(take, word_size[word], 0), take

        _, taken_in_order = jax.lax.scan(take_word, jnp.zeros((), jnp.int32), word_order)
        taken = jnp.zeros(seq_len, bool).at[word_order].set(taken_in_order)
        chosen = maskable & taken[word_id]
        scores = jnp.where(chosen, draws.select, -1.0)
    else:
        scores = jnp.where(maskable, draws.select, -1.0)
        chosen = maskable & (jnp.argsort(jnp.argsort(-scores)) < budget)

    top_scores, positions = jax.lax.top_k(jnp.where(chosen, scores, -1.0), config.max_predictions)
    weights = (top_scores >= 0.0).astype(jnp.float32)
    labels = input_ids[positions]
    replacement = jnp.where(
        draws.action < config.mask_fraction,
        jnp.asarray(config.mask_id, input_ids.dtype),
        jnp.where(draws.action < config.mask_fraction + config.random_fraction, draws.random_tokens, labels),
    )
    # top_k returns distinct positions, so the scatter writes each token at most once.
    masked_ids = input_ids.at[positions].set(jnp.where(weights > 0, replacement, labels))
    return {
        "input_ids": masked_ids,
        "masked_positions": positions.astype(jnp.int32),
        "masked_labels": labels.astype(jnp.int32),
        "masked_weights": weights,
    }


def check_max_predictions(max_predictions: int, seq_len: int) -> None:
    """A JftError when rows of seq_len tokens cannot hold max_predictions masked positions."""
    if max_predictions > seq_len:
        raise JftError(
            f"masking.max_predictions {max_predictions} is larger than the rows ({seq_len} tokens); "
            f"use at most {seq_len} (BERT uses 20 for 128 tokens, 80 for 512)."
        )


def mask_batch(
    config: MaskingConfig,
    key: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    word_start: jax.Array,
    row_ids: jax.Array,
) -> dict[str, jax.Array]:
    """mask_row over a batch; row_ids: [batch] global indices that pick each row's key (fold_in)."""
    seq_len = input_ids.shape[1]
    check_max_predictions(config.max_predictions, seq_len)
    one_threefry_key = str(jax.random.key_impl(key)) == "threefry2x32" and jnp.shape(key) in ((), (2,))
    if one_threefry_key and not jax.config.jax_enable_x64:  # (64-bit draws are jax.random's alone)
        draws = threefry_draws(config, key, row_ids, seq_len, input_ids.dtype)
    else:
        draws = fold_in_draws(config, key, row_ids, seq_len, input_ids.dtype)
    return jax.vmap(lambda d, i, a, w: mask_row(config, d, i, a, w))(draws, input_ids, attention_mask, word_start)

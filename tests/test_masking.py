"""Masking statistics: rates, the 80/10/10 split, special tokens, the cap, whole words, fresh masks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jft.errors import JftError
from jft.train.masking import MaskingConfig, mask_batch, mask_row, row_draws, threefry_draws

PAD, CLS, SEP, MASK, VOCAB = 0, 2, 3, 4, 1000
CONFIG = MaskingConfig(mask_id=MASK, vocab_size=VOCAB, special_ids=(PAD, CLS, SEP, MASK), max_predictions=40)


def _rows(batch=512, seq=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, VOCAB, (batch, seq)).astype(np.int32)
    lengths = rng.integers(seq // 3, seq + 1, batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = CLS
    ids[np.arange(batch), lengths - 1] = SEP
    ids[np.arange(batch), lengths // 2] = SEP
    ids = np.where(mask == 1, ids, PAD)
    return ids, mask


def _mask(config, ids, mask, key=0, word_start=None):
    word_start = np.ones_like(ids, bool) if word_start is None else word_start
    out = jax.jit(lambda k: mask_batch(config, k, ids, mask, word_start, jnp.arange(len(ids))))(jax.random.key(key))
    return jax.tree.map(np.asarray, out)


def test_rates_and_replacement_split():
    ids, mask = _rows()
    out = _mask(CONFIG, ids, mask)
    weights = out["masked_weights"].astype(bool)
    maskable = (mask == 1) & ~np.isin(ids, CONFIG.special_ids)
    expected = np.clip(np.round(maskable.sum(1) * 0.15), 1, 40)
    assert np.array_equal(weights.sum(1), expected)  # 15% of the maskable tokens, per row
    positions, labels = out["masked_positions"], out["masked_labels"]
    rows = np.arange(len(ids))[:, None]
    assert np.array_equal(labels[weights], ids[rows, positions][weights])  # labels are the original tokens
    new_tokens = out["input_ids"][rows, positions][weights]
    as_mask = np.mean(new_tokens == MASK)
    unchanged = np.mean(new_tokens == labels[weights])
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015  # (random may equal the original: ~0.1%)
    changed = out["input_ids"] != ids
    assert changed.sum() == (new_tokens != labels[weights]).sum()  # only the chosen positions change


def test_special_tokens_and_padding_are_never_masked():
    ids, mask = _rows(seed=1)
    out = _mask(CONFIG, ids, mask, key=1)
    picked = ids[np.arange(len(ids))[:, None], out["masked_positions"]][out["masked_weights"] > 0]
    assert not np.isin(picked, CONFIG.special_ids).any()
    assert np.array_equal(out["input_ids"][mask == 0], ids[mask == 0])


def test_cap_on_predictions_is_respected():
    ids, mask = _rows(seed=2)
    config = MaskingConfig(mask_id=MASK, vocab_size=VOCAB, special_ids=(PAD, CLS, SEP), max_predictions=5)
    out = _mask(config, ids, mask)
    assert out["masked_positions"].shape == (len(ids), 5)
    assert out["masked_weights"].sum(1).max() == 5


def test_positions_are_distinct_and_padding_slots_weigh_zero():
    ids, mask = _rows(batch=64, seq=64, seed=3)
    out = _mask(CONFIG, ids, mask)
    for positions, weights in zip(out["masked_positions"], out["masked_weights"]):
        real = positions[weights > 0]
        assert len(set(real.tolist())) == len(real)
    assert (out["masked_weights"] == 0).any()  # short rows pad their 40 slots


def test_new_masks_each_step_same_mask_for_same_key():
    ids, mask = _rows(batch=8)
    a, b, c = _mask(CONFIG, ids, mask, key=5), _mask(CONFIG, ids, mask, key=5), _mask(CONFIG, ids, mask, key=6)
    assert np.array_equal(a["masked_positions"], b["masked_positions"])
    assert not np.array_equal(a["masked_positions"], c["masked_positions"])


def _jax_random_draws(config, key, row_ids, seq_len):
    """Each row's draws by jax.random from fold_in(key, row id): what masking drew before its hashes were joined."""
    return jax.vmap(lambda i: row_draws(config, jax.random.fold_in(key, i), seq_len, jnp.int32))(row_ids)


@pytest.mark.parametrize("partitionable", [False, True])
@pytest.mark.parametrize(
    ("seq", "predictions", "vocab"), [(128, 20, 30522), (127, 19, 250002), (9, 3, 5)], ids=["bert", "odd", "tiny"]
)
def test_joined_threefry_hashes_draw_jax_randoms_bits(partitionable, seq, predictions, vocab):
    """Bit for bit, in both of jax's threefry counter layouts, for odd sizes and XLM-R's vocabulary
    (its randint multiplies past 32 bits and wraps), with raw and typed keys."""
    config = MaskingConfig(mask_id=MASK, vocab_size=vocab, special_ids=(PAD,), max_predictions=predictions)
    rows = jnp.arange(3, 19)
    with jax.threefry_partitionable(partitionable):
        for key in (jax.random.PRNGKey(3), jax.random.key(7)):
            joined = jax.jit(lambda k: threefry_draws(config, k, rows, seq, jnp.int32))(key)
            alone = jax.jit(lambda k: _jax_random_draws(config, k, rows, seq))(key)
            for name, a, b in zip(joined._fields, joined, alone):
                assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.mark.parametrize("whole_word", [False, True])
def test_masks_are_those_of_each_rows_jax_random_draws(whole_word):
    ids, mask = _rows(batch=32, seed=6)
    word_start = np.random.default_rng(1).random(ids.shape) < 0.6
    config = dataclasses.replace(CONFIG, whole_word=whole_word)
    rows = jnp.arange(100, 132)
    with jax.threefry_partitionable(False):  # as the steps draw (jft.train.steps.classic_threefry)
        out = jax.jit(lambda k: mask_batch(config, k, ids, mask, word_start, rows))(jax.random.key(2))
        draws = _jax_random_draws(config, jax.random.key(2), rows, ids.shape[1])
    expected = jax.vmap(lambda d, i, a, w: mask_row(config, d, i, a, w))(draws, ids, mask, word_start)
    for name in expected:
        assert np.array_equal(out[name], expected[name]), name


def test_other_random_generators_mask_by_jax_random():
    ids, mask = _rows(batch=16, seed=7)
    out = _mask(CONFIG, ids, mask)
    rbg = jax.tree.map(
        np.asarray,
        mask_batch(CONFIG, jax.random.key(0, impl="rbg"), ids, mask, np.ones_like(ids, bool), jnp.arange(16)),
    )
    assert np.array_equal(rbg["masked_weights"].sum(1), out["masked_weights"].sum(1))  # the same budgets
    assert not np.array_equal(rbg["masked_positions"], out["masked_positions"])  # other bits


def test_masks_do_not_depend_on_batch_split():
    ids, mask = _rows(batch=8)
    word_start = np.ones_like(ids, bool)
    whole = mask_batch(CONFIG, jax.random.key(0), ids, mask, word_start, jnp.arange(8))
    half = mask_batch(CONFIG, jax.random.key(0), ids[4:], mask[4:], word_start[4:], jnp.arange(4, 8))
    assert np.array_equal(whole["masked_positions"][4:], half["masked_positions"])


def test_whole_word_masking_takes_every_piece_of_a_word():
    ids, mask = _rows(batch=256, seed=4)
    rng = np.random.default_rng(0)
    word_start = rng.random(ids.shape) < 0.6  # 40% of tokens continue a word
    word_start[:, 0] = True
    word_start |= np.isin(ids, CONFIG.special_ids)
    config = MaskingConfig(
        mask_id=MASK, vocab_size=VOCAB, special_ids=(PAD, CLS, SEP, MASK), max_predictions=40, whole_word=True
    )
    out = _mask(config, ids, mask, word_start=word_start)
    word_id = np.cumsum(word_start, axis=1)
    maskable = (mask == 1) & ~np.isin(ids, config.special_ids)
    for row in range(len(ids)):
        chosen = out["masked_positions"][row][out["masked_weights"][row] > 0]
        words = set(word_id[row, chosen].tolist())
        pieces = {i for i in range(ids.shape[1]) if word_id[row, i] in words and maskable[row, i]}
        assert set(chosen.tolist()) == pieces  # whole words only
        assert len(chosen) <= max(1, round(maskable[row].sum() * 0.15))
    budgets = np.clip(np.round(maskable.sum(1) * 0.15), 1, 40)
    # A word that does not fit is skipped and smaller ones after it still come in: budgets fill up.
    assert out["masked_weights"].sum() / budgets.sum() > 0.97


def test_more_predictions_than_tokens_is_an_error():
    ids, mask = _rows(batch=2, seq=16)
    with pytest.raises(JftError, match="max_predictions 40 is larger than the rows \\(16 tokens\\)"):
        _mask(CONFIG, ids, mask)

"""Packed fine-tuning batches: the packer, the batch arrays, and that packing changes no number:
per-example logits and the training update equal those of the same examples unpacked."""

import functools

import jax
import numpy as np
import optax
import pytest

from conftest import TINY_MODEL
from jft.errors import JftError
from jft.models.bert import BertConfig, BertForSequenceClassification, BertForTokenClassification, init_params
from jft.params import flatten
from jft.tasks.batches import TaskBatches, fill_rows, pack, step_inputs
from jft.tasks.records import IGNORE, Encoded
from jft.train.optim import weight_decay_mask
from jft.train.steps import FinetuneSetup, create_finetune_state, finetune_step, predict_step

VOCAB = 120


def _data(count=60, mean=8, seq=32, kind="classification", seed=0) -> Encoded:
    """Random examples with skewed lengths ([CLS] ... [SEP] shaped: 2 to seq tokens)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.gamma(2.5, mean / 2.5, count)), 2, seq).astype(int)
    ids = [rng.integers(5, VOCAB, n).astype(np.int32) for n in lengths]
    types = [(np.arange(n) >= n // 2).astype(np.int32) for n in lengths]
    if kind == "token_classification":
        labels = [np.where(rng.random(n) < 0.7, rng.integers(0, 3, n), IGNORE).astype(np.int32) for n in lengths]
    elif kind == "regression":
        labels = rng.normal(size=count).tolist()
    else:
        labels = rng.integers(0, 3, count).tolist()
    return Encoded(ids, types, labels)


def test_pack_places_every_example_once_within_width_and_segment_cap():
    rng = np.random.default_rng(1)
    lengths = np.clip(np.round(rng.gamma(2.5, 10, 3000)), 3, 128).astype(int)
    for cap in (4, 16):
        rows = pack(lengths, rng.permutation(len(lengths)), width=128, max_segments=cap)
        placed = np.concatenate(rows)
        assert sorted(placed.tolist()) == list(range(len(lengths)))
        assert max(lengths[row].sum() for row in rows) <= 128
        assert max(len(row) for row in rows) == cap
    # Best fit decreasing leaves little room: the rows are over 95% tokens (padding every example
    # to 128 would give about 20%).
    assert lengths.sum() / (128 * len(rows)) > 0.95


def test_packed_batches_hold_each_example_intact_once_an_epoch():
    data = _data()
    batches = TaskBatches(data, "classification", batch_size=16, seed=3, layout="packed", max_len=32)
    assert batches.rows < 16  # fewer rows than examples a step, whatever the devices
    filled = fill_rows(next(batches.epoch(0)), 8)  # out to what 8 devices divide: empty rows, no example
    assert len(filled["input_ids"]) % 8 == 0 and (filled["example_ids"][batches.rows :] == -1).all()
    assert not filled["weights"][batches.rows :].any() and not filled["attention_mask"][batches.rows :].any()
    seen = []
    epoch_examples = []
    for batch in batches.epoch(0):
        assert batch["input_ids"].shape == (batches.rows, 32) and batch["labels"].shape == (batches.rows, 16)
        examples, inputs = step_inputs(batch)  # what the step gets and its examples/s counts
        assert "example_ids" not in inputs and set(inputs) | {"example_ids"} == set(batch)
        epoch_examples.append(examples)
        for row, slot in zip(*np.nonzero(batch["example_ids"] >= 0)):
            example = batch["example_ids"][row, slot]
            start, n = batch["cls_positions"][row, slot], len(data.input_ids[example])
            tokens = slice(start, start + n)
            np.testing.assert_array_equal(batch["input_ids"][row, tokens], data.input_ids[example])
            np.testing.assert_array_equal(batch["token_type_ids"][row, tokens], data.token_type_ids[example])
            np.testing.assert_array_equal(batch["position_ids"][row, tokens], np.arange(n))
            assert (batch["segment_ids"][row, tokens] == slot + 1).all() and batch["attention_mask"][row, tokens].all()
            assert batch["labels"][row, slot] == data.labels[example] and batch["weights"][row, slot] == 1
            seen.append(int(example))
        # Tokens outside every example are padding: segment 0, mask 0.
        assert ((batch["segment_ids"] > 0) == (batch["attention_mask"] == 1)).all()
        assert (batch["weights"] == (batch["example_ids"] >= 0)).all()
    assert sorted(seen) == list(range(len(data))) and sum(epoch_examples) == len(data)
    assert np.mean(epoch_examples) >= 16 * (len(batches) - 1) / len(batches)  # batch_size examples a step on average
    # A function of (seed, epoch): the same again, the rows shuffled in another epoch.
    again = [b["example_ids"] for b in TaskBatches(data, "classification", 16, 3, layout="packed", max_len=32).epoch(0)]
    assert all((a == b["example_ids"]).all() for a, b in zip(again, batches.epoch(0)))
    assert any((a != b["example_ids"]).any() for a, b in zip(again, batches.epoch(1)))


def test_layouts_are_checked():
    with pytest.raises(JftError, match="is not one of"):
        TaskBatches(_data(), "classification", 8, layout="packd", max_len=32)
    with pytest.raises(JftError, match="needs max_len"):
        TaskBatches(_data(), "classification", 8, layout="packed")


def _unpacked_and_packed(kind, data, batch_size=8):
    unpacked = next(TaskBatches(data, kind, len(data), shuffle=False, layout="padded", max_len=32).epoch(0))
    packed = list(TaskBatches(data, kind, batch_size, shuffle=False, layout="packed", max_len=32).epoch(0))
    return unpacked, packed


@pytest.mark.parametrize("kind", ["classification", "token_classification"])
def test_packed_logits_equal_each_example_alone(kind):
    """Segment masks, restarted positions and per-example pooling: an example's logits do not
    depend on what shares its row."""
    config = BertConfig(vocab_size=VOCAB, **TINY_MODEL)
    model = (BertForTokenClassification if kind == "token_classification" else BertForSequenceClassification)(config, 3)
    params = init_params(model, jax.random.PRNGKey(0))
    data = _data(count=24, kind=kind)
    unpacked, packed = _unpacked_and_packed(kind, data)
    setup = FinetuneSetup(model, None, None, kind, 0.0, None)
    predict = jax.jit(functools.partial(predict_step, setup=setup, axis_name=None))
    alone = np.asarray(predict(params, unpacked, None))
    compared = 0
    for batch in packed:
        logits = np.asarray(predict(params, batch, None))
        for row, slot in zip(*np.nonzero(batch["example_ids"] >= 0)):
            example = batch["example_ids"][row, slot]
            if kind == "token_classification":
                n, start = len(data.input_ids[example]), int(np.argmax(batch["segment_ids"][row] == slot + 1))
                np.testing.assert_allclose(logits[row, start : start + n], alone[example, :n], atol=1e-5)
            else:
                np.testing.assert_allclose(logits[row, slot], alone[example], atol=1e-5)
            compared += 1
    assert compared == len(data)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_a_packed_step_equals_the_unpacked_step_on_the_same_examples(kind):
    """One SGD step on task loss + λ‖θ‖² from a packed batch and from the same examples padded."""
    config = BertConfig(vocab_size=VOCAB, **TINY_MODEL)
    model = BertForSequenceClassification(config, 1 if kind == "regression" else 3)
    params = init_params(model, jax.random.PRNGKey(0))
    data = _data(count=24, kind=kind, seed=2)
    _, packed = _unpacked_and_packed(kind, data, batch_size=24)
    assert len(packed) == 1  # every example in one packed batch
    unpacked = next(TaskBatches(data, kind, 24, shuffle=False, layout="padded", max_len=32).epoch(0))
    setup = FinetuneSetup(model, optax.sgd(1.0), optax.constant_schedule(1.0), kind, 0.01, weight_decay_mask(params))
    step = jax.jit(functools.partial(finetune_step, setup=setup, axis_name=None))
    rng = jax.random.PRNGKey(1)
    results = [step(create_finetune_state(params, setup.tx), batch, rng) for batch in (unpacked, packed[0])]
    (state_a, metrics_a), (state_b, metrics_b) = results
    assert float(metrics_a["task_loss"]) == pytest.approx(float(metrics_b["task_loss"]), rel=1e-5)
    for path, value in flatten(state_a.params).items():
        np.testing.assert_allclose(flatten(state_b.params)[path], value, atol=2e-6, err_msg=path)

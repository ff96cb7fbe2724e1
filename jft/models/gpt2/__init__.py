"""GPT-2 behind jft's model interface: its config, Flax modules, Hugging Face names and FLOPs."""

from jft.models.family import Family
from jft.models.gpt2.config import (
    CHANGEABLE_FIELDS,
    FIELD_MEANINGS,
    PRESETS,
    SIZE_FIELDS,
    Gpt2Config,
)
from jft.models.gpt2.modules import (
    Gpt2EncoderOnly,
    Gpt2ForSequenceClassification,
    Gpt2ForTokenClassification,
    Gpt2LMHeadModel,
    Gpt2Model,
    build,
    init_cache,
    init_params,
)
from jft.models.gpt2.weights import architecture, head_of, weights_from_hf, weights_to_hf
from jft.models.options import COMPUTE_FIELDS

# GPT-2's one special token: the end of a document, which also begins and pads.
END_OF_TEXT = "<|endoftext|>"


def token_fields(tokenizer) -> dict[str, int]:
    """bos_token_id and eos_token_id of a model from scratch: its vocabulary's <|endoftext|>."""
    end = tokenizer.token_to_id(END_OF_TEXT)
    return {} if end is None else {"bos_token_id": end, "eos_token_id": end}


def flops(
    cfg: Gpt2Config, batch: int, seq: int, *, predictions: int = 0, num_labels: int = 0, pooled_per_row: int = 1
) -> float:
    """Training FLOPs of one step: 3 × the forward matmul FLOPs (backward = 2 × forward).

    Forward, per token and layer: 2·(4h² + 2hi) for the projections and the MLP, plus 4·s·h for
    QKᵀ and AV over a row of s tokens, counted over the full s × s products although the causal
    mask leaves half of them unused (XLA computes them all; the kernels skip about half).
    predictions: the tokens a row predicts through the tied LM head, 2·h·V each (V padded to
    vocab_multiple, as the matmul runs): seq for next-word pretraining. num_labels: a task head
    of 2·h·num_labels per output, pooled_per_row outputs a row (seq for token classification).
    Counted on the shapes the step computes, padding included; embedding lookups, softmax,
    LayerNorm and the optimizer are left out (a few percent).
    """
    h, i = cfg.n_embd, cfg.intermediate_size
    forward = batch * seq * cfg.n_layer * (2 * (4 * h * h + 2 * h * i) + 4 * seq * h)
    if predictions:
        forward += batch * predictions * 2 * h * cfg.padded_vocab_size
    if num_labels:
        forward += batch * pooled_per_row * 2 * h * num_labels
    return 3.0 * forward


FAMILY = Family(
    name="gpt2",
    config_type=Gpt2Config,
    presets=PRESETS,
    size_fields=SIZE_FIELDS,
    changeable_fields=CHANGEABLE_FIELDS,
    compute_fields=COMPUTE_FIELDS,
    field_meanings=FIELD_MEANINGS,
    objectives=("next_word",),
    inputs=("input_ids", "attention_mask", "position_ids", "segment_ids", "cls_positions"),
    hf_model_types=("gpt2",),
    module=build,
    init_params=init_params,
    head_of=head_of,
    architecture=architecture,
    config_from_hf=Gpt2Config.from_hf,
    config_to_hf=Gpt2Config.to_hf,
    weights_from_hf=weights_from_hf,
    weights_to_hf=weights_to_hf,
    flops=flops,
    vocabulary="bytelevel",
    init_cache=init_cache,
    token_fields=token_fields,
    joint_head=None,
    label_heads=("score", "classifier"),
)

__all__ = [
    "FAMILY",
    "Gpt2Config",
    "Gpt2EncoderOnly",
    "Gpt2ForSequenceClassification",
    "Gpt2ForTokenClassification",
    "Gpt2LMHeadModel",
    "Gpt2Model",
    "build",
    "flops",
    "init_cache",
    "init_params",
]

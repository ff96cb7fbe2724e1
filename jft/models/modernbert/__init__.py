"""ModernBERT behind jft's model interface: its config, Flax modules, Hugging Face names and FLOPs."""

from jft.models.family import Family
from jft.models.modernbert.config import (
    CHANGEABLE_FIELDS,
    FIELD_MEANINGS,
    PRESETS,
    SIZE_FIELDS,
    ModernBertConfig,
)
from jft.models.modernbert.modules import (
    ModernBertEncoderOnly,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
    build,
    init_params,
)
from jft.models.modernbert.weights import architecture, head_of, weights_from_hf, weights_to_hf
from jft.models.options import COMPUTE_FIELDS


def token_fields(tokenizer) -> dict[str, int]:
    """The special ids of a model from scratch: its vocabulary's [PAD], [CLS], [SEP] (or RoBERTa's
    <pad>, <s>, </s>) as pad, cls and bos, sep and eos; none where it has neither."""
    for names in (("[PAD]", "[CLS]", "[SEP]"), ("<pad>", "<s>", "</s>")):
        pad, cls, sep = (tokenizer.token_to_id(name) for name in names)
        if None not in (pad, cls, sep):
            return dict(pad_token_id=pad, cls_token_id=cls, bos_token_id=cls, sep_token_id=sep, eos_token_id=sep)
    return {}


def flops(
    cfg: ModernBertConfig, batch: int, seq: int, *, predictions: int = 0, num_labels: int = 0, pooled_per_row: int = 1
) -> float:
    """Training FLOPs of one step: 3 × the forward matmul FLOPs (backward = 2 × forward).

    Forward, per token and layer: 2·(4h² + 3hi) for Wqkv, Wo and the GeGLU block (Wi to 2i, Wo
    back), plus 4·s'·h for QKᵀ and AV, where s' is the row (global layers) or the keys the window
    holds, min(s, local_attention + 1) (local layers; what the kernels compute, XLA computes the
    whole row). Pretraining adds 2·(h² + hV) per masked prediction (the head and the tied
    decoder), fine-tuning 2·(h² + h·num_labels) per pooled output. Counted on the shapes the step
    computes, padding included; embeddings, rotary turns, softmax, LayerNorm and the optimizer left out.
    """
    h, i = cfg.hidden_size, cfg.intermediate_size
    window = min(seq, cfg.local_attention + 1)
    layers = [seq if cfg.is_global(layer) else window for layer in range(cfg.num_hidden_layers)]
    forward = batch * seq * sum(2 * (4 * h * h + 3 * h * i) + 4 * keys * h for keys in layers)
    if predictions:
        forward += batch * predictions * 2 * (h * h + h * cfg.padded_vocab_size)
    if num_labels:
        forward += batch * pooled_per_row * 2 * (h * h + h * num_labels)
    return 3.0 * forward


FAMILY = Family(
    name="modernbert",
    config_type=ModernBertConfig,
    presets=PRESETS,
    size_fields=SIZE_FIELDS,
    changeable_fields=CHANGEABLE_FIELDS,
    compute_fields=COMPUTE_FIELDS,
    field_meanings=FIELD_MEANINGS,
    objectives=("mlm",),
    inputs=("input_ids", "attention_mask", "position_ids", "segment_ids", "cls_positions"),
    hf_model_types=("modernbert",),
    module=build,
    init_params=init_params,
    head_of=head_of,
    architecture=architecture,
    config_from_hf=ModernBertConfig.from_hf,
    config_to_hf=ModernBertConfig.to_hf,
    weights_from_hf=weights_from_hf,
    weights_to_hf=weights_to_hf,
    flops=flops,
    vocabulary="roberta",
    token_fields=token_fields,
    joint_head="decoder",
    label_heads=("classifier", "token_classifier"),
    hf_classifier_scopes={"ForTokenClassification": "token_classifier", "ForQuestionAnswering": "qa_outputs"},
    task_heads=("classification", "token_classification", "question_answering", "multiple_choice"),
)

__all__ = [
    "FAMILY",
    "ModernBertConfig",
    "ModernBertEncoderOnly",
    "ModernBertForMaskedLM",
    "ModernBertForSequenceClassification",
    "ModernBertForTokenClassification",
    "ModernBertModel",
    "build",
    "flops",
    "init_params",
]

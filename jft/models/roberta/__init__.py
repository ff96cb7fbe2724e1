"""RoBERTa and XLM-R behind jft's model interface: BERT's encoder with RoBERTa's positions and heads."""

from jft.models.bert import flops as bert_flops
from jft.models.family import Family
from jft.models.options import COMPUTE_FIELDS
from jft.models.roberta.config import CHANGEABLE_FIELDS, FIELD_MEANINGS, PRESETS, SIZE_FIELDS, RobertaConfig
from jft.models.roberta.modules import (
    RobertaEncoderOnly,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    build,
    init_params,
)
from jft.models.roberta.weights import architecture, head_of, weights_from_hf, weights_to_hf


def token_fields(tokenizer) -> dict[str, int]:
    """pad, bos and eos ids of a model from scratch: its vocabulary's <pad>, <s> and </s> (or
    BERT's [PAD], [CLS] and [SEP]); none where it has neither (the data's checks say so)."""
    for names in (("<pad>", "<s>", "</s>"), ("[PAD]", "[CLS]", "[SEP]")):
        ids = [tokenizer.token_to_id(name) for name in names]
        if None not in ids:
            return dict(zip(("pad_token_id", "bos_token_id", "eos_token_id"), ids, strict=True))
    return {}


def flops(cfg: RobertaConfig, batch: int, seq: int, **counts) -> float:
    """Training FLOPs of one step, as BERT's (jft.models.bert.flops) without the next-sentence head:
    RoBERTa's MLM head is BERT's transform and tied decoder, its classifier BERT's pooler and
    classifier on the <s> state."""
    return bert_flops(cfg, batch, seq, nsp=False, **counts)


FAMILY = Family(
    name="roberta",
    config_type=RobertaConfig,
    presets=PRESETS,
    size_fields=SIZE_FIELDS,
    changeable_fields=CHANGEABLE_FIELDS,
    compute_fields=COMPUTE_FIELDS,
    field_meanings=FIELD_MEANINGS,
    objectives=("mlm",),
    inputs=("input_ids", "attention_mask", "position_ids", "segment_ids", "cls_positions"),
    hf_model_types=RobertaConfig.model_types,
    module=build,
    init_params=init_params,
    head_of=head_of,
    architecture=architecture,
    config_from_hf=RobertaConfig.from_hf,
    config_to_hf=RobertaConfig.to_hf,
    weights_from_hf=weights_from_hf,
    weights_to_hf=weights_to_hf,
    flops=flops,
    vocabulary="roberta",
    token_fields=token_fields,
    joint_head="lm_head",
    task_heads=("classification", "token_classification", "question_answering", "multiple_choice"),
)

__all__ = [
    "FAMILY",
    "RobertaConfig",
    "RobertaEncoderOnly",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "build",
    "flops",
    "init_params",
]

"""BERT behind jft's model interface: its config, Flax modules, Hugging Face names and FLOPs."""

from jft.models.bert.config import (
    CHANGEABLE_FIELDS,
    FIELD_MEANINGS,
    PRESETS,
    SIZE_FIELDS,
    BertConfig,
)
from jft.models.bert.modules import (
    BertEncoderOnly,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    build,
    init_params,
)
from jft.models.bert.weights import architecture, head_of, weights_from_hf, weights_to_hf
from jft.models.family import TEXT_INPUTS, Family
from jft.models.options import COMPUTE_FIELDS


def flops(
    cfg: BertConfig,
    batch: int,
    seq: int,
    *,
    predictions: int = 0,
    num_labels: int = 0,
    pooled_per_row: int = 1,
    nsp: bool = True,
) -> float:
    """Training FLOPs of one step: 3 × the forward matmul FLOPs (backward = 2 × forward).

    Forward, per token and layer: 2·(4h² + 2hi) for the projections and the MLP, plus 4·s·h for
    QKᵀ and AV over a row of s tokens. The last layer computes only the rows the heads read (its
    keys and values still span the row): the masked predictions and the [CLS] row in pretraining,
    the pooled [CLS] rows in fine-tuning (one a row, or max_segments a packed row). Pretraining adds
    2·(h² + hV) per masked prediction (transform and tied decoder) and, with `nsp`, the pooler +
    NSP head per row; fine-tuning the pooler and the classifier per pooled output. Counted on the shapes the
    step computes, padding included; embedding lookups, softmax, LayerNorm and the optimizer are
    left out (a few percent).
    """
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers

    def layer(queries: int) -> int:  # one row's layer, asked for `queries` of its seq rows
        return queries * 2 * (2 * h * h + 2 * h * i) + seq * 2 * (2 * h * h) + queries * 4 * seq * h

    asked = predictions + 1 if predictions else pooled_per_row if num_labels else seq
    forward = batch * ((layers - 1) * layer(seq) + layer(asked))
    if predictions:
        forward += batch * predictions * 2 * (h * h + h * cfg.vocab_size) + nsp * batch * 2 * (h * h + 2 * h)
    if num_labels:
        forward += batch * pooled_per_row * 2 * (h * h + h * num_labels)
    return 3.0 * forward


FAMILY = Family(
    name="bert",
    config_type=BertConfig,
    presets=PRESETS,
    size_fields=SIZE_FIELDS,
    changeable_fields=CHANGEABLE_FIELDS,
    compute_fields=COMPUTE_FIELDS,
    field_meanings=FIELD_MEANINGS,
    objectives=("mlm", "mlm+nsp"),
    inputs=TEXT_INPUTS,
    hf_model_types=("bert",),
    module=build,
    init_params=init_params,
    head_of=head_of,
    architecture=architecture,
    config_from_hf=BertConfig.from_hf,
    config_to_hf=BertConfig.to_hf,
    weights_from_hf=weights_from_hf,
    weights_to_hf=weights_to_hf,
    flops=flops,
    task_heads=("classification", "token_classification", "question_answering", "multiple_choice"),
)

__all__ = [
    "FAMILY",
    "BertConfig",
    "BertEncoderOnly",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "build",
    "flops",
    "init_params",
]

"""BERT models and their config."""

from jft.models.bert import (
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    init_params,
)
from jft.models.config import BertConfig

__all__ = [
    "BertConfig",
    "BertModel",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "init_params",
]

"""RobertaConfig: BERT's fields with RoBERTa's defaults and its three more (bos, eos, model_type).

RoBERTa and XLM-R are BERT's architecture with another position numbering (the table's rows for
the tokens begin after padding_idx, pad_token_id + 1), one token type, and an MLM head of its own;
XLM-R is RoBERTa with a SentencePiece vocabulary of 250,002 tokens ("xlm-roberta" in config.json).
"""

import dataclasses

from jft.errors import JftError, choices
from jft.models.bert.config import CHANGEABLE_FIELDS, SIZE_FIELDS, BertConfig
from jft.models.bert.config import FIELD_MEANINGS as BERT_MEANINGS

__all__ = ["CHANGEABLE_FIELDS", "FIELD_MEANINGS", "PRESETS", "SIZE_FIELDS", "RobertaConfig"]

FIELD_MEANINGS = {
    **BERT_MEANINGS,
    "max_position_embeddings": "position table: the longest row the model takes is this minus pad_token_id + 1",
    "type_vocab_size": "token types (1: RoBERTa has none)",
    "pad_token_id": "id of <pad>, also the padding row of the position table",
    "bos_token_id": "id of <s>, which begins every text",
    "eos_token_id": "id of </s>, which ends every text",
    "model_type": "roberta or xlm-roberta: the same model, Hugging Face's classes by either name",
}

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """Model hyper-parameters; names and defaults follow roberta-base's config.json."""

    presets = PRESETS
    model_types = ("roberta", "xlm-roberta")

    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    model_type: str = "roberta"

    def __post_init__(self):
        super().__post_init__()
        problems = []
        if self.model_type not in self.model_types:
            problems.append(f"model_type '{self.model_type}' is not one of {choices(self.model_types)}")
        if self.max_position_embeddings <= self.position_offset:
            problems.append(
                f"max_position_embeddings {self.max_position_embeddings} leaves no position for a token after "
                f"pad_token_id + 1 = {self.position_offset}"
            )
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")

    @property
    def position_offset(self) -> int:
        """RoBERTa's positions begin after its padding row: at pad_token_id + 1."""
        return self.pad_token_id + 1

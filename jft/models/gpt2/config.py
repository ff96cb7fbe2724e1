"""Gpt2Config: the fields of Hugging Face's GPT2Config plus jft's precision and attention choices.

jft's own fields (dtype, param_dtype, attention_impl, remat, scan_layers, vocab_multiple) mean what
they mean for BERT (jft.models.bert.config), and are checked by the same rules.
"""

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from jft.errors import JftError, choices
from jft.models.options import (
    ACTIVATIONS,
    JFT_FIELD_MEANINGS,
    JFT_FIELDS,
    ConfigOptions,
    type_problems,
)

# What a run may set differently from the checkpoint it starts from (regularisation, the new heads'
# initialisation, how the same function is computed, the padding id a classifier reads past).
CHANGEABLE_FIELDS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "classifier_dropout",
    "initializer_range",
    "dtype",
    "attention_impl",
    "remat",
    "scan_layers",
    "vocab_multiple",
    "pad_token_id",
)
# What a run from scratch must know: a preset names them all.
SIZE_FIELDS = ("vocab_size", "n_embd", "n_layer", "n_head")

# What each field means, for `jft config` and docs/config.md (as model.FIELD).
FIELD_MEANINGS = {
    "vocab_size": "tokens in the embedding table, also the LM head's outputs (unset: the vocabulary's size)",
    "n_positions": "position table: the longest row the model takes",
    "n_embd": "width of the decoder",
    "n_layer": "decoder layers",
    "n_head": "attention heads a layer",
    "n_inner": "width of each layer's feed-forward block (unset: 4 * n_embd)",
    "activation_function": "activation of the feed-forward block (gelu_new, gelu, relu, ...)",
    "resid_pdrop": "dropout on each block's output before the residual sum (may differ from init_from's)",
    "embd_pdrop": "dropout on the token + position embeddings",
    "attn_pdrop": "dropout on attention weights (0 for attention_impl cudnn or splash)",
    "layer_norm_epsilon": "LayerNorm epsilon",
    "initializer_range": "standard deviation of new weights",
    "bos_token_id": "id of the beginning-of-text token",
    "eos_token_id": "id of the end-of-text token (<|endoftext|>)",
    "pad_token_id": "id of the padding token (GPT-2 has none; transformers' sequence classifier needs one)",
    "classifier_dropout": "dropout before the token classifier (unset: 0.1, as transformers' GPT-2)",
    **JFT_FIELD_MEANINGS,
    "vocab_multiple": "pad the LM head's vocabulary to a multiple of this (e.g. 128); never exported",
}

# Sizes by name; every other field keeps its default. "small" is GPT-2's 124M; "tiny" is for tests.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=4),
    "small": dict(n_embd=768, n_layer=12, n_head=12),
    "medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "large": dict(n_embd=1280, n_layer=36, n_head=20),
}

# transformers' GPT-2 options jft does not implement, with the value that it does: a config.json
# setting another is refused, since its weights would compute another function here.
_HF_FIXED = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


@dataclasses.dataclass(frozen=True)
class Gpt2Config(ConfigOptions):
    """Model hyper-parameters. Field names and defaults follow transformers.GPT2Config (GPT-2 124M)."""

    presets = PRESETS

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: int | None = None
    # transformers' GPT2ForTokenClassification reads it from config.json (not one of GPT2Config's
    # arguments); unset, it drops 0.1.
    classifier_dropout: float | None = None
    # jft's own fields: as BertConfig's.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"
    remat: str = "none"
    scan_layers: bool = True
    vocab_multiple: int = 1

    def __post_init__(self):
        problems = type_problems(self)
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")
        for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "vocab_multiple"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.n_inner is not None and self.n_inner < 1:
            problems.append(f"n_inner must be at least 1 (or unset: 4 * n_embd), got {self.n_inner}")
        if problems:  # the rest divides by these
            raise JftError("invalid model config: " + "; ".join(problems) + ".")
        if self.n_embd % self.n_head:
            problems.append(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.activation_function not in ACTIVATIONS:
            problems.append(f"activation_function '{self.activation_function}' is not one of {choices(ACTIVATIONS)}")
        problems += self.option_problems("attn_pdrop")
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")

    # The names generic jft code reads from any family's config.
    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def max_length(self) -> int:
        """The longest row the model takes."""
        return self.n_positions

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def intermediate_size(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], source: str = "config.json") -> "Gpt2Config":
        """Reads the fields jft uses from a Hugging Face config.json mapping; the sizes must be there
        (transformers would fill in GPT-2 124M's, which do not fit other weights), and options that
        change the function jft computes (scale_attn_by_inverse_layer_idx, ...) are refused."""
        model_type = hf_config.get("model_type")
        if model_type != "gpt2":
            raise JftError(f"{source} describes a '{model_type}' model; jft's GPT-2 family loads 'gpt2' models only.")
        missing = [name for name in SIZE_FIELDS if name not in hf_config]
        if missing:
            raise JftError(
                f"{source} lacks {', '.join(missing)}; jft does not guess a model's sizes. Use the config.json "
                "that came with the weights."
            )
        for name, supported in _HF_FIXED.items():
            if hf_config.get(name, supported) != supported:
                raise JftError(
                    f"{source} sets {name}: {json.dumps(hf_config[name])}; jft's GPT-2 implements only "
                    f"{name}: {json.dumps(supported)}, so these weights would compute another function here."
                )
        hf_names = [f.name for f in dataclasses.fields(cls) if f.name not in JFT_FIELDS]
        try:
            return cls(**{name: hf_config[name] for name in hf_names if name in hf_config})
        except JftError as error:
            raise JftError(f"{source}: {error}") from None

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config.json fields of this config (jft's own fields left out). Without a
        pad_token_id, the end-of-text token pads (as GPT-2's users set it): transformers'
        GPT2ForSequenceClassification finds each row's last token by it, and refuses batches without it."""
        hf = self.hf_fields()
        if hf["pad_token_id"] is None:
            hf["pad_token_id"] = self.eos_token_id
        return {"model_type": "gpt2", **hf}

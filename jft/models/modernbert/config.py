"""ModernBertConfig: the fields of Hugging Face's ModernBertConfig plus jft's precision and attention choices.

ModernBERT (Warner et al., 2024) is an encoder built for throughput: rotary positions (one theta
for the global layers, another for the local ones), GeGLU feed-forward blocks, pre-norm layers
without biases, global attention every `global_attn_every_n_layers` layers and a sliding window of
`local_attention` tokens in the others, masked-LM at a 30% rate, rows of up to 8,192 tokens.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from jft.errors import JftError, choices
from jft.models.options import ACTIVATIONS, JFT_FIELD_MEANINGS, JFT_FIELDS, ConfigOptions, type_problems

# What a run may set differently from the checkpoint it starts from (as BERT's: regularisation,
# the new heads, how the same function is computed).
CHANGEABLE_FIELDS = (
    "attention_dropout",
    "embedding_dropout",
    "mlp_dropout",
    "classifier_dropout",
    "classifier_pooling",
    "initializer_range",
    "dtype",
    "attention_impl",
    "remat",
    "scan_layers",
    "vocab_multiple",
)
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
POOLINGS = ("cls", "mean")
# Hugging Face's runtime switches, no part of the function: read and ignored, never written.
_HF_RUNTIME = ("deterministic_flash_attn", "sparse_prediction", "sparse_pred_ignore_index", "reference_compile")

FIELD_MEANINGS = {
    "vocab_size": "tokens in the embedding table (unset: the vocabulary's size)",
    "hidden_size": "width of the encoder",
    "intermediate_size": "width of each GeGLU block (its input projection is twice as wide)",
    "num_hidden_layers": "encoder layers",
    "num_attention_heads": "attention heads a layer",
    "hidden_activation": "activation of the GeGLU blocks (gelu, ...)",
    "max_position_embeddings": "the longest row the model takes (rotary positions: no table)",
    "initializer_range": "standard deviation of new weights",
    "initializer_cutoff_factor": "new weights are cut at this many standard deviations",
    "norm_eps": "LayerNorm epsilon",
    "norm_bias": "LayerNorms with a bias",
    "pad_token_id": "id of [PAD]",
    "eos_token_id": "id of [SEP]",
    "bos_token_id": "id of [CLS]",
    "cls_token_id": "id of [CLS], which begins every text",
    "sep_token_id": "id of [SEP], which ends every text",
    "global_rope_theta": "rotary base of the global-attention layers",
    "attention_bias": "biases in the attention projections",
    "attention_dropout": "dropout on attention weights and outputs (0 for attention_impl cudnn or splash)",
    "global_attn_every_n_layers": "layer i attends globally when i is a multiple of this, else in a window",
    "local_attention": "the sliding window of the local layers: this many tokens (half before, half after)",
    "local_rope_theta": "rotary base of the local-attention layers",
    "embedding_dropout": "dropout on the embeddings",
    "mlp_bias": "biases in the GeGLU blocks",
    "mlp_dropout": "dropout inside the GeGLU blocks",
    "decoder_bias": "a bias on the masked-LM decoder",
    "classifier_pooling": "what a sequence classifier reads: cls (the first token) or mean (of the real tokens)",
    "classifier_dropout": "dropout before the task head",
    "classifier_bias": "a bias in the prediction head's dense layer",
    "classifier_activation": "activation of the prediction head",
    **JFT_FIELD_MEANINGS,
    "vocab_multiple": "pad the masked-LM decoder's vocabulary to a multiple of this (e.g. 128); never exported",
}

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96),
    "base": dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152),
    "large": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624),
}


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(ConfigOptions):
    """Model hyper-parameters. Field names and defaults follow transformers.ModernBertConfig (base)."""

    presets = PRESETS

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int = 50283
    eos_token_id: int = 50282
    bos_token_id: int = 50281
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    global_rope_theta: float = 160000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    local_rope_theta: float = 10000.0
    embedding_dropout: float = 0.0
    mlp_bias: bool = False
    mlp_dropout: float = 0.0
    decoder_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    # jft's own fields (jft.models.options).
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
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_multiple"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be at least 1, got {getattr(self, field)}")
        for field in ("max_position_embeddings", "global_attn_every_n_layers", "local_attention"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be at least 1, got {getattr(self, field)}")
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            problems.append(
                f"hidden_size {self.hidden_size} is not num_attention_heads {self.num_attention_heads} heads of an "
                "even width (rotary positions turn pairs of a head's features)"
            )
        for field in ("hidden_activation", "classifier_activation"):
            if getattr(self, field) not in ACTIVATIONS:
                problems.append(f"{field} '{getattr(self, field)}' is not one of {choices(ACTIVATIONS)}")
        if self.classifier_pooling not in POOLINGS:
            problems.append(f"classifier_pooling '{self.classifier_pooling}' is not one of {choices(POOLINGS)}")
        problems += self.option_problems("attention_dropout")
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        """The longest row the model takes."""
        return self.max_position_embeddings

    @property
    def window(self) -> int:
        """How far a local layer's token sees: local_attention // 2 tokens before and after."""
        return self.local_attention // 2

    def is_global(self, layer: int) -> bool:
        """Whether layer `layer` (from 0) attends over the whole row."""
        return layer % self.global_attn_every_n_layers == 0

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], source: str = "config.json") -> "ModernBertConfig":
        """Reads the fields jft uses from a Hugging Face config.json mapping; the sizes must be there."""
        model_type = hf_config.get("model_type")
        if model_type != "modernbert":
            raise JftError(f"{source} describes a '{model_type}' model, not one of modernbert.")
        missing = [name for name in SIZE_FIELDS if name not in hf_config]
        if missing:
            raise JftError(
                f"{source} lacks {', '.join(missing)}; jft does not guess a model's sizes. Use the config.json "
                "that came with the weights."
            )
        scaling = hf_config.get("rope_scaling")
        if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
            raise JftError(f"{source} scales its rotary positions ({scaling}); jft implements unscaled ones only.")
        hf_names = [f.name for f in dataclasses.fields(cls) if f.name not in JFT_FIELDS]
        values = {name: hf_config[name] for name in hf_names if name in hf_config}
        if values.get("local_rope_theta") is None and "global_rope_theta" in values:
            values["local_rope_theta"] = values["global_rope_theta"]  # transformers' rule for an unset one
        try:
            return cls(**values)
        except JftError as error:
            raise JftError(f"{source}: {error}") from None

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config.json fields of this config (jft's own fields left out)."""
        return {"model_type": "modernbert", "tie_word_embeddings": True, **self.hf_fields()}

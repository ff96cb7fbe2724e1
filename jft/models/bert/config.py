"""BertConfig: the fields of Hugging Face's BertConfig plus jft's precision and attention choices."""

import dataclasses
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

# What a run may set differently from the checkpoint it starts from: regularisation, the new
# heads' initialisation, and how the same function is computed. Every other field is the
# checkpoint's architecture (sizes, activation, LayerNorm eps, vocabulary, ...) and comes with it.
CHANGEABLE_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "initializer_range",
    "dtype",
    "attention_impl",
    "remat",
    "scan_layers",
    "vocab_multiple",
)
# What a run from scratch must know: a preset names them all.
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

# What each field means, for `jft config` and docs/config.md (as model.FIELD).
FIELD_MEANINGS = {
    "vocab_size": "tokens in the embedding table (unset: the vocabulary's size)",
    "hidden_size": "width of the encoder",
    "num_hidden_layers": "encoder layers",
    "num_attention_heads": "attention heads a layer",
    "intermediate_size": "width of each layer's feed-forward block",
    "hidden_act": "activation of the feed-forward block (gelu, relu, ...)",
    "hidden_dropout_prob": "dropout on hidden states (may differ from init_from's)",
    "attention_probs_dropout_prob": "dropout on attention weights (0 for attention_impl cudnn or splash)",
    "max_position_embeddings": "position table: the longest row the model takes",
    "type_vocab_size": "token types (segments A and B)",
    "initializer_range": "standard deviation of new weights",
    "layer_norm_eps": "LayerNorm epsilon",
    "pad_token_id": "id of [PAD]",
    "classifier_dropout": "dropout before the task head (unset: hidden_dropout_prob)",
    **JFT_FIELD_MEANINGS,
    "vocab_multiple": "pad the masked-LM decoder's vocabulary to a multiple of this (e.g. 128); never exported",
}

# Sizes by name; every other field keeps its default. "tiny" is for tests and CPU runs.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


@dataclasses.dataclass(frozen=True)
class BertConfig(ConfigOptions):
    """Model hyper-parameters. Field names and defaults follow transformers.BertConfig (BERT-base)."""

    presets = PRESETS
    model_types = ("bert",)  # config.json's model_type of this architecture

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    # jft's own fields.
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 | float16 | auto (bf16 on GPU/TPU)
    param_dtype: str = "float32"  # master weights; keep float32 when training in bf16
    # "xla": attention spelled out for XLA, heads first, with attention dropout when training.
    # "cudnn": cuDNN's fused kernel (GPU, bf16/fp16). "splash": Pallas's splash kernel (TPU; packed
    # examples kept apart by segment ids). Neither has dropout, so they require
    # attention_probs_dropout_prob == 0: jft never drops the dropout silently.
    attention_impl: str = "xla"
    # Rematerialisation of each encoder layer in the backward pass, for memory: "none" keeps every
    # activation; "dots" keeps the matmul outputs and recomputes the rest (GELU, softmax,
    # LayerNorm, dropout masks); "full" keeps only each layer's input. Use it when a batch does
    # not fit otherwise: it costs up to one more forward pass.
    remat: str = "none"
    # The encoder's layers as one loop over stacked weights (lax.scan): the program holds one layer,
    # so compile time stays flat with depth. False unrolls the same loop (same parameters, same
    # outputs): XLA then schedules and fuses across layers, and on a CPU a step runs faster.
    scan_layers: bool = True
    # The masked-LM decoder's matmul runs over the vocabulary padded with zero rows to a multiple
    # of this (128 suits GPU tensor cores and TPU lanes); its logits are cut back to vocab_size,
    # so the padding is never predicted, never stored in a checkpoint and never exported.
    vocab_multiple: int = 1

    def __post_init__(self):
        problems = type_problems(self)
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act '{self.hidden_act}' is not one of {choices(ACTIVATIONS)}")
        problems += self.option_problems("attention_probs_dropout_prob")
        for field in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "vocab_multiple",
        ):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be at least 1, got {getattr(self, field)}")
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """Where the position table's rows for the tokens begin: BERT's at 0."""
        return 0

    @property
    def max_length(self) -> int:
        """The longest row the model takes: the position table's rows from position_offset on."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], source: str = "config.json") -> "BertConfig":
        """Reads the fields jft uses from a Hugging Face config.json mapping; the sizes must be there
        (transformers would fill in BERT-base's, which do not fit other weights)."""
        missing = [name for name in SIZE_FIELDS if name not in hf_config]
        if missing:
            raise JftError(
                f"{source} lacks {', '.join(missing)}; jft does not guess a model's sizes. Use the config.json "
                "that came with the weights."
            )
        model_type = hf_config.get("model_type", cls.model_types[0])
        if model_type not in cls.model_types:
            raise JftError(f"{source} describes a '{model_type}' model, not one of {choices(cls.model_types)}.")
        position_type = hf_config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise JftError(
                f"position_embedding_type '{position_type}' is not supported; jft implements 'absolute' only."
            )
        hf_names = [f.name for f in dataclasses.fields(cls) if f.name not in JFT_FIELDS]
        try:
            return cls(**{name: hf_config[name] for name in hf_names if name in hf_config})
        except JftError as error:
            raise JftError(f"{source}: {error}") from None

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config.json fields of this config (jft's own fields left out)."""
        return {"model_type": self.model_types[0], "position_embedding_type": "absolute", **self.hf_fields()}

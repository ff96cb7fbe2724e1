"""The model interface: what every family of models gives the rest of jft.

A family (bert, gpt2, roberta, modernbert, resnet, vgg) names its config (to and from a Hugging
Face config.json), builds its Flax module with a head, says which pretraining objectives it trains
with, maps its weights to and from Hugging Face's names, and counts its FLOPs. Stages, steps, the
run directory, export, bench and the TPU compile speak only to this interface, never to a
family's own classes.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from jft.errors import JftError, choices

HEADS = (
    "encoder",
    "pretraining",
    "classification",
    "token_classification",
    "question_answering",
    "multiple_choice",
)
# What a text model takes, by name, as batches carry it: tokens, their mask and types, and for
# packed rows the positions restarting at each example, the example ids and where each starts.
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "segment_ids", "cls_positions")
# What an image model takes: normalised pixels [batch, height, width, channels] and which rows are
# real (BatchNorm's statistics leave out the rows that only fill a batch).
IMAGE_INPUTS = ("pixel_values", "row_mask")


@dataclasses.dataclass(frozen=True)
class Head:
    """What sits on the backbone. kind: one of HEADS. num_labels: a task head's outputs (1 for
    regression). nsp: pretraining with next-sentence prediction. mlm: a task model that also keeps
    the masked-LM head (the joint objective's). pooler: an encoder with its pooled output.
    joint_labels: an image task model's second classifier, over the pretraining classes (the joint
    objective's μ·L_pre)."""

    kind: str
    num_labels: int = 0
    nsp: bool = False
    mlm: bool = False
    pooler: bool = True
    joint_labels: int = 0

    def __post_init__(self):
        if self.kind not in HEADS:
            raise JftError(f"head '{self.kind}' is not one of {choices(HEADS)}.")


@dataclasses.dataclass(frozen=True, repr=False)
class Family:
    """One family of models behind the interface (see the module docstring).

    Every module takes its inputs by name (`inputs`, as batches carry them) and `deterministic`,
    and returns a dict of float32 outputs: "logits" for a task head, "mlm_logits" (at the
    masked_positions it is given) and "nsp_logits" for pretraining; "hidden" and "pooled" for
    a bare encoder.
    """

    name: str
    config_type: type
    presets: Mapping[str, Mapping[str, Any]]
    # What a run from scratch must know (a preset names them all); what a run may set
    # differently from its checkpoint; what may change even on resume (how the same function is
    # computed).
    size_fields: tuple[str, ...]
    changeable_fields: tuple[str, ...]
    compute_fields: tuple[str, ...]
    field_meanings: Mapping[str, str]
    objectives: tuple[str, ...]  # the pretraining losses it trains with: "mlm", "mlm+nsp", "next_word", "classify"
    inputs: tuple[str, ...]
    hf_model_types: tuple[str, ...]
    module: Callable[[Any, Head], nn.Module]
    init_params: Callable[[nn.Module, jax.Array], dict]
    head_of: Callable[[Mapping[str, Any]], Head]
    architecture: Callable[[Any, Head], str]  # (config, head) -> transformers' class name
    config_from_hf: Callable[[Mapping[str, Any], str], Any]
    config_to_hf: Callable[[Any], dict[str, Any]]
    weights_from_hf: Callable[[Mapping[str, Any], str], dict[str, Any]]
    weights_to_hf: Callable[[Mapping[str, Any]], dict[str, Any]]
    flops: Callable[..., float]
    vocabulary: str = "wordpiece"  # the kind of vocabulary a run trains on its corpus (jft.data.tokenizer.KINDS)
    # A next-word family's empty key/value cache for generation: (config, batch, max_len, dtype) -> cache.
    init_cache: Callable[..., Any] | None = None
    # The fields a model from scratch takes from its vocabulary (a tokenizers.Tokenizer): GPT-2's
    # end-of-text id as bos_token_id and eos_token_id.
    token_fields: Callable[[Any], dict[str, Any]] | None = None
    # The top-level scope of the masked-LM head a task model carries for the joint objective (BERT's
    # "cls"), which the fine-tuned model leaves out; None where that head has no weights (GPT-2's).
    joint_head: str | None = "cls"
    # The top-level scopes of the heads whose outputs are a task's labels: init_from keeps them only
    # for the same task and labels.
    label_heads: tuple[str, ...] = ("classifier",)
    # Where a Hugging Face head's `classifier` weights go in jft's tree where jft names that head
    # otherwise: {the architecture's suffix: scope} (ModernBERT's token classifier and span head).
    hf_classifier_scopes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # What the family reads: "text" (tokens) or "image" (pixels: no vocabulary, image data, the
    # step's augmentation; jft.data.images).
    modality: str = "text"
    # The task heads it has (of HEADS): question answering's span head and multiple choice's scorer
    # (one score a candidate row, the rows of a question side by side) are an encoder's.
    task_heads: tuple[str, ...] = ("classification", "token_classification")
    # How a user loads what jft exports, in words: (config, head) -> "torchvision.models.vgg16(...)";
    # None: transformers' from_pretrained.
    loaded_by: Callable[[Any, Head], str] | None = None

    def __repr__(self) -> str:
        return f"Family({self.name!r})"

    def config(self, values: Mapping[str, Any]):
        """The family's config from a mapping of its fields (run.json's "model"); an unknown field
        is an error naming the closest."""
        return self.config_type.from_dict(values)

    def preset(self, name: str, **overrides: Any):
        """A named size with field overrides."""
        return self.config_type.preset(name, **overrides)

    def init(self, config, head: Head, rng: jax.Array) -> dict:
        """Fresh parameters of the family's model with `head`."""
        return self.init_params(self.module(config, head), rng)

    def how_to_load(self, config, head: Head) -> str:
        """What loads this family's export (transformers' from_pretrained unless loaded_by says)."""
        return self.loaded_by(config, head) if self.loaded_by else "transformers loads it with from_pretrained"

    def task_params(self, params: dict) -> dict:
        """A fine-tuned model's parameters: without the joint objective's head (joint_head)."""
        return {name: tree for name, tree in params.items() if name != self.joint_head}

    def shapes(self, config, head: Head) -> dict:
        """The parameters' shapes and dtypes (jax.ShapeDtypeStruct), computing nothing."""
        return jax.eval_shape(lambda: self.init(config, head, jax.random.key(0)))

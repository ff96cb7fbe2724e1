"""GPT-2's weights under Hugging Face's names: PyTorch state-dict names (safetensors) and Flax
paths (msgpack), in and out of jft's tree.

jft's tree is {"transformer": decoder, and the head it has: "score" (sequence classifier) or
"classifier" (token classifier)}, with the layers stacked on a leading axis; Hugging Face numbers
them (transformer.h.0, ...). The LM head is tied to wte and has no weights of its own, so a tree
with the decoder alone is GPT2LMHeadModel's (which also loads as GPT2Model).

Kernels: jft's are [in, out]. Hugging Face's PyTorch GPT-2 stores its decoder's linear layers as
Conv1D, weight [in, out] as well, and its heads as nn.Linear, weight [out, in]; its FlaxConv1D
stores kernel [out, in] (transposed when called), and the Flax heads would be Dense, [in, out].
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jft.errors import JftError, choices
from jft.models.bert.weights import check_layer_count, stack_layers, unstack_layers
from jft.models.family import Head
from jft.models.gpt2.modules import build

_LAYERS = "transformer/h"
# PyTorch buffers (the causal mask and its fill value), no weights
_BUFFERS = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")
_HEADS = ("score", "classifier")


def head_of(params: Mapping[str, Any]) -> Head:
    """The head a GPT-2 tree carries; the decoder alone is the LM model (its head has no weights).
    A task head's joint LM head is tied and weightless too, so the tree does not say `mlm`."""
    if "transformer" not in params:
        raise JftError(f"a GPT-2 tree holds the decoder under 'transformer' (found {choices(sorted(params))}).")
    if "score" in params:
        return Head("classification", int(np.shape(params["score"]["kernel"])[1]))
    if "classifier" in params:
        return Head("token_classification", int(np.shape(params["classifier"]["bias"])[0]))
    return Head("pretraining")


def architecture(config, head: Head) -> str:
    """transformers' class for a GPT-2 with `head` (config.json's "architectures")."""
    return {
        "pretraining": "GPT2LMHeadModel",
        "classification": "GPT2ForSequenceClassification",
        "token_classification": "GPT2ForTokenClassification",
    }.get(head.kind, "GPT2Model")


def weights_from_hf(tensors: Mapping[str, np.ndarray], layout: str, config, source: str) -> dict[str, Any]:
    """jft's tree from a checkpoint's tensors: layout "torch" (PyTorch state-dict names) or "flax"
    ('/'-joined Flax paths); GPT2Model's, without the "transformer" level, too. A separate LM head
    (lm_head) must equal wte: jft ties the two, as GPT-2 does."""
    flat = {}
    for name, value in tensors.items():
        if layout == "torch" and _BUFFERS.match(name):
            continue
        parts = name.split("." if layout == "torch" else "/")
        if parts[0] not in ("transformer", "lm_head", *_HEADS):
            parts = ["transformer", *parts]  # GPT2Model's names
        if layout == "torch":
            parts[-1] = _torch_leaf(parts)
        if parts[-1] == "kernel" and _transposed(parts[0], layout):
            value = np.swapaxes(value, -1, -2)
        flat["/".join(parts)] = value
    _check_tied_lm_head(flat, source)
    params = stack_layers(flat, source, _LAYERS, "layers")
    check_layer_count(params, config, source, _LAYERS, "layers", "n_layer", build, head_of)
    return params


def weights_to_hf(params: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The tensors of jft's tree under Hugging Face's names: layout "torch" or "flax" (see
    weights_from_hf), as GPT2LMHeadModel (or the classifier with its head) saves them: the tied LM
    head is not written."""
    tensors = {}
    for path, value in unstack_layers(params, _LAYERS).items():
        parts = path.split("/")
        value = np.asarray(value)
        if parts[-1] == "kernel" and _transposed(parts[0], layout):
            value = np.swapaxes(value, -1, -2)
        if layout == "torch":
            parts[-1] = "weight" if parts[-1] in ("kernel", "scale", "embedding") else parts[-1]
        tensors[("." if layout == "torch" else "/").join(parts)] = np.ascontiguousarray(value)
    return tensors


def _torch_leaf(parts: list[str]) -> str:
    """jft's leaf name of a PyTorch tensor named parts (weight: embedding, scale or kernel)."""
    parent, leaf = parts[-2], parts[-1]
    if leaf != "weight":
        return leaf
    if parent in ("wte", "wpe"):
        return "embedding"
    return "scale" if parent.startswith("ln_") else "kernel"


def _transposed(top: str, layout: str) -> bool:
    """Whether a kernel under `top` is stored [out, in] in `layout`: PyTorch's nn.Linear heads (and
    lm_head), Flax's FlaxConv1D decoder layers."""
    return (top != "transformer") if layout == "torch" else (top == "transformer")


def _check_tied_lm_head(flat: dict[str, np.ndarray], source: str) -> None:
    """Drops lm_head (read as a kernel [n_embd, vocab]) when it is wte's transpose; refuses it otherwise."""
    lm_head = flat.pop("lm_head/kernel", None)
    wte = flat.get("transformer/wte/embedding")
    if lm_head is not None and wte is not None and not np.array_equal(lm_head, np.transpose(wte)):
        raise JftError(
            f"{source} has an LM head (lm_head) that differs from its token embeddings (wte); jft ties the two, "
            "as GPT-2 does. To use its decoder, remove the lm_head.* tensors from its weights file (e.g. safetensors' "
            "load_file, drop those keys, save_file)."
        )

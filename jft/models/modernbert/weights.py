"""ModernBERT's weights under Hugging Face's names (PyTorch state-dict names), in and out of jft's tree.

jft's tree is {"model": encoder (embeddings, the stacked "layers", final_norm), and the heads it
has: "head" (the prediction head every head reads through), "decoder" (the masked-LM decoder's
bias; its weight is the token embeddings), "classifier" (a sequence classifier),
"token_classifier" (a token classifier) or "qa_outputs" (question answering's span head): the last
two are "classifier" in Hugging Face's names}. Layer 0 has no
attn_norm in Hugging Face's checkpoints (an Identity); jft's stack holds one, unused: ones and
zeros on the way in, left out on the way out. There is no Flax ModernBERT; the "flax" layout is
jft's own tree with the layers numbered.
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jft.errors import JftError, choices
from jft.models.bert.weights import OTHER_SCOPES, check_layer_count, stack_layers, to_torch_names, unstack_layers
from jft.models.family import Head
from jft.models.modernbert.modules import build

_LAYERS = "model/layers"
_NORMS = ("norm", "attn_norm", "mlp_norm", "final_norm")
_SCOPES = ("model", "head", "decoder", "classifier", "token_classifier", "qa_outputs")
_DECODER = "decoder.weight"  # tied to model.embeddings.tok_embeddings.weight


def head_of(params: Mapping[str, Any]) -> Head:
    """The head a ModernBERT tree carries."""
    if "model" not in params:
        raise JftError(f"a ModernBERT tree holds the encoder under 'model' (found {choices(sorted(params))}).")
    mlm = "decoder" in params
    if "classifier" in params:
        return Head("classification", int(np.shape(params["classifier"]["kernel"])[-1]), mlm=mlm)
    if "token_classifier" in params:
        return Head("token_classification", int(np.shape(params["token_classifier"]["kernel"])[-1]), mlm=mlm)
    if "qa_outputs" in params:
        return Head("question_answering", 2, mlm=mlm)
    if "head" in params:
        return Head("pretraining")
    return Head("encoder", pooler=False)


def architecture(config, head: Head) -> str:
    """transformers' class for a ModernBERT with `head`."""
    return {
        "classification": "ModernBertForSequenceClassification",
        "token_classification": "ModernBertForTokenClassification",
        "question_answering": "ModernBertForQuestionAnswering",
        "multiple_choice": "ModernBertForMultipleChoice",
        "pretraining": "ModernBertForMaskedLM",
    }.get(head.kind, "ModernBertModel")


def weights_from_hf(tensors: Mapping[str, np.ndarray], layout: str, config, source: str) -> dict[str, Any]:
    """jft's tree from a checkpoint's tensors: layout "torch" (PyTorch names, kernels [out, in]) or
    "flax" (jft's tree, '/'-joined, layers numbered). A classifier read here is a sequence
    classifier's (its weights do not say which); jft.models.hf.load renames a token classifier's and
    a span head's by config.json's architectures (FAMILY.hf_classifier_scopes)."""
    separator = "." if layout == "torch" else "/"
    tops = {name.split(separator)[0] for name in tensors}
    other = sorted(tops & (OTHER_SCOPES - {"model"}))
    if other and "model" not in tops:
        raise JftError(
            f"{source} holds a {other[0]}'s weights ({other[0]}.*), not a ModernBERT's (model.*): its config.json's "
            "model_type does not match them. Use the config.json that came with the weights."
        )
    flat = _from_torch_names(tensors) if layout == "torch" else dict(tensors)
    # the bare ModernBertModel's names have no "model" prefix
    flat = {path if path.split("/")[0] in _SCOPES else f"model/{path}": value for path, value in flat.items()}
    layer_zero = {key.removeprefix(f"{_LAYERS}/1/") for key in flat if key.startswith(f"{_LAYERS}/1/attn_norm/")}
    for leaf in layer_zero:  # Hugging Face's Identity: a LayerNorm's weights that are never read
        if f"{_LAYERS}/0/{leaf}" not in flat:
            like = flat[f"{_LAYERS}/1/{leaf}"]
            flat[f"{_LAYERS}/0/{leaf}"] = (np.ones_like if leaf.endswith("scale") else np.zeros_like)(like)
    params = stack_layers(flat, source, _LAYERS, "layers")
    check_layer_count(params, config, source, _LAYERS, "layers", "num_hidden_layers", build, head_of)
    return params


def weights_to_hf(params: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The tensors of jft's tree under Hugging Face's names (see weights_from_hf); an encoder
    alone as ModernBertModel's (without the "model." prefix), layer 0's attn_norm left out."""
    flat = {
        path: np.asarray(value)
        for path, value in unstack_layers(params, _LAYERS).items()
        if not path.startswith(f"{_LAYERS}/0/attn_norm/")
    }
    if layout == "flax":
        return flat
    renamed = {re.sub(r"^(token_classifier|qa_outputs)/", "classifier/", path): value for path, value in flat.items()}
    return to_torch_names(renamed, strip_prefix=set(params) == {"model"})


def _from_torch_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch state-dict names (weight [out, in]) -> jft's paths (kernel [in, out]); the tied
    decoder weight is left out, checked to equal the token embeddings."""
    flat = {}
    for name, value in tensors.items():
        if name == _DECODER:
            continue
        parts = name.split(".")
        parent, leaf = parts[-2], parts[-1]
        if leaf == "weight":
            if parent in _NORMS:
                leaf = "scale"
            elif parent == "tok_embeddings":
                leaf = "embedding"
            else:
                leaf, value = "kernel", value.T
        flat["/".join([*parts[:-1], leaf])] = value
    decoder, embedding = tensors.get(_DECODER), flat.get("model/embeddings/tok_embeddings/embedding")
    if decoder is not None and embedding is not None and not np.array_equal(decoder, embedding):
        raise JftError(
            "this checkpoint's MLM decoder differs from its token embeddings; jft ties the two, as ModernBERT "
            "does. To use its encoder, remove the decoder.* tensors from its weights file (e.g. safetensors' "
            "load_file, drop those keys, save_file)."
        )
    return flat

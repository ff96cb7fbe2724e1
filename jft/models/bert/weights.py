"""BERT's weights under Hugging Face's names: PyTorch state-dict names (safetensors) and Flax
paths (msgpack), in and out of jft's tree.

jft's tree is {"bert": encoder, and the heads it has: "cls" (MLM, NSP) or "classifier"}, with the
encoder's layers stacked on a leading axis; Hugging Face numbers them (encoder.layer.0, ...).
"""

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jft import params as ptree
from jft.errors import JftError, choices, first_few
from jft.models.bert.modules import build, init_params
from jft.models.family import Head


@dataclasses.dataclass(frozen=True)
class Names:
    """How a family of BERT's shape names its weights: the encoder's scope, the heads' scopes, and
    the PyTorch names of the MLM decoder tied to the word embeddings and of its bias."""

    encoder: str
    heads: tuple[str, ...]
    decoder: str
    decoder_bias: str

    @property
    def layers(self) -> str:
        return f"{self.encoder}/encoder/layer"


BERT_NAMES = Names("bert", ("cls", "classifier", "qa_outputs"), "cls.predictions.decoder", "cls.predictions.bias")
# The scopes other families' encoders are stored under (a checkpoint whose config.json names another model)
OTHER_SCOPES = {"bert", "roberta", "transformer", "model"}
# PyTorch buffers, no weights
_BUFFERS = re.compile(r"^(\w+\.)?embeddings\.(position_ids|token_type_ids)$")


def head_of(params: Mapping[str, Any]) -> Head:
    """The head a BERT tree carries."""
    if "bert" not in params:
        raise JftError(f"a BERT tree holds the encoder under 'bert' (found {choices(sorted(params))}).")
    if "classifier" in params:
        num_labels = int(np.shape(params["classifier"]["bias"])[0])
        kind = "classification" if "pooler" in params["bert"] else "token_classification"
        return Head(kind, num_labels, mlm="cls" in params)
    if "qa_outputs" in params:
        return Head("question_answering", 2, mlm="cls" in params)
    if "cls" in params:
        return Head("pretraining", nsp="seq_relationship" in params["cls"])
    return Head("encoder", pooler="pooler" in params["bert"])


def architecture(config, head: Head) -> str:
    """transformers' class for a BERT with `head` (config.json's "architectures")."""
    return {
        "classification": "BertForSequenceClassification",
        "token_classification": "BertForTokenClassification",
        "question_answering": "BertForQuestionAnswering",
        "multiple_choice": "BertForMultipleChoice",
        "pretraining": "BertForPreTraining" if head.nsp else "BertForMaskedLM",
    }.get(head.kind, "BertModel")


def weights_from_hf(tensors: Mapping[str, np.ndarray], layout: str, config, source: str) -> dict[str, Any]:
    """jft's tree from a checkpoint's tensors: layout "torch" (PyTorch names, kernels [out, in]) or
    "flax" ('/'-joined Flax paths, FlaxBertModel's without the "bert" level)."""
    return encoder_weights_from_hf(tensors, layout, config, source, BERT_NAMES, build, head_of)


def weights_to_hf(params: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The tensors of jft's tree under Hugging Face's names: layout "torch" or "flax" (see
    weights_from_hf); an encoder alone is written as BertModel's, without the "bert" prefix."""
    return encoder_weights_to_hf(params, layout, BERT_NAMES)


def encoder_weights_from_hf(
    tensors: Mapping[str, np.ndarray],
    layout: str,
    config,
    source: str,
    names: Names,
    build_module: Callable,
    head_of_params: Callable,
) -> dict[str, Any]:
    """weights_from_hf of a family of BERT's shape that names its weights `names`."""
    tops = {name.split("." if layout == "torch" else "/")[0] for name in tensors}
    other = sorted(tops & (OTHER_SCOPES - {names.encoder}))
    if other and names.encoder not in tops:
        raise JftError(
            f"{source} holds a {other[0]}'s weights ({other[0]}.*), not a {names.encoder}'s: its config.json's "
            "model_type does not match them. Use the config.json that came with the weights."
        )
    if layout == "torch":
        flat = _from_torch_names(tensors, names)
    else:
        flat = dict(tensors)
        if not any(key.startswith(f"{names.encoder}/") for key in flat):  # the bare encoder's layout
            flat = {f"{names.encoder}/{key}": value for key, value in flat.items()}
    params = stack_layers(flat, source, names.layers, "encoder layers")
    check_layer_count(
        params, config, source, names.layers, "encoder layers", "num_hidden_layers", build_module, head_of_params
    )
    return params


def encoder_weights_to_hf(params: Mapping[str, Any], layout: str, names: Names) -> dict[str, np.ndarray]:
    """weights_to_hf of a family of BERT's shape that names its weights `names`."""
    flat = {k: np.asarray(v) for k, v in unstack_layers(params, names.layers).items()}
    encoder_only = set(params) == {names.encoder}
    if layout == "flax":
        return {k.removeprefix(f"{names.encoder}/"): v for k, v in flat.items()} if encoder_only else flat
    return to_torch_names(flat, strip_prefix=encoder_only)


def check_layer_count(
    params: Mapping[str, Any],
    config,
    source: str,
    prefix: str,
    what: str,
    field: str,
    build_module: Callable,
    head_of_params: Callable,
) -> None:
    """Raises when the stacked layers under `prefix` ('a/b/layers') are not as many as config's
    `field` says while every other shape fits: then the layer count is the one mistake, said plainly."""
    node = params
    for part in prefix.split("/"):
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
    found = None if not node else int(np.shape(jax.tree.leaves(node)[0])[0])
    expected = getattr(config, field)
    if found is None or found == expected:
        return
    module = build_module(dataclasses.replace(config, **{field: found}), head_of_params(params))
    try:
        ptree.check_shapes(jax.eval_shape(lambda: init_params(module, jax.random.key(0))), params, what="")
    except JftError:
        return  # other shapes differ too: the whole list of problems says more
    raise JftError(
        f"{source} has {found} {what}, but its config.json says {field}={expected}; the weights and the config "
        "must come from the same model."
    )


def _from_torch_names(tensors: Mapping[str, np.ndarray], names: Names) -> dict[str, np.ndarray]:
    """PyTorch state-dict names (weight [out, in]) -> Flax paths (kernel [in, out]). The tied
    decoder is left out (checked to equal the word embeddings); its bias is the head's bias."""
    flat = {}
    for name, value in tensors.items():
        if _BUFFERS.match(name) or name == f"{names.decoder}.weight":
            continue
        if name == f"{names.decoder}.bias":  # the same tensor as the head's bias, saved under both names
            name = names.decoder_bias
        parts = name.split(".")
        if parts[0] not in (names.encoder, *names.heads):
            parts = [names.encoder, *parts]  # the bare encoder's names have no prefix
        parent, leaf = parts[-2], {"gamma": "weight", "beta": "bias"}.get(parts[-1], parts[-1])
        if leaf == "weight":
            if parent in ("LayerNorm", "layer_norm"):
                leaf = "scale"
            elif parent.endswith("_embeddings"):
                leaf = "embedding"
            else:
                leaf, value = "kernel", value.T
        flat["/".join([*parts[:-1], leaf])] = value
    _check_tied_decoder(tensors.get(f"{names.decoder}.weight"), flat, names)
    return flat


def _check_tied_decoder(decoder, flat: Mapping[str, np.ndarray], names: Names) -> None:
    embedding = flat.get(f"{names.encoder}/embeddings/word_embeddings/embedding")
    if decoder is not None and embedding is not None and not np.array_equal(decoder, embedding):
        raise JftError(
            "this checkpoint's MLM decoder differs from its word embeddings; jft ties the two, as BERT does. "
            f"To use its encoder, remove the {names.decoder.split('.')[0]}.* tensors from its weights file (e.g. "
            "safetensors' load_file, drop those keys, save_file)."
        )


def to_torch_names(flat: Mapping[str, np.ndarray], *, strip_prefix: bool) -> dict[str, np.ndarray]:
    """jft's '/'-joined paths (kernel [in, out]) -> PyTorch state-dict names (weight [out, in]);
    strip_prefix: without the first level (a bare encoder's names)."""
    tensors = {}
    for path, value in flat.items():
        parts = path.split("/")
        if strip_prefix:
            parts = parts[1:]
        leaf = parts[-1]
        if leaf == "kernel":
            value = value.T
        if leaf in ("kernel", "scale", "embedding"):
            leaf = "weight"
        tensors[".".join([*parts[:-1], leaf])] = np.ascontiguousarray(value)
    return tensors


def stack_layers(flat: Mapping[str, np.ndarray], source: str, prefix: str, what: str) -> dict[str, Any]:
    """{prefix}/{i}/... (one entry a layer, '/'-joined paths) -> the tree with {prefix}/... stacked on
    axis 0; every layer must have every tensor the others have. what: the layers' name in errors."""
    layer_path = re.compile(rf"^{re.escape(prefix)}/(\d+)/(.+)$")
    per_layer: dict[str, dict[int, np.ndarray]] = {}
    rest = {}
    for path, value in flat.items():
        match = layer_path.match(path)
        if match:
            per_layer.setdefault(match.group(2), {})[int(match.group(1))] = value
        else:
            rest[path] = value
    found = sorted({i for layers in per_layer.values() for i in layers})
    if per_layer and found != list(range(len(found))):
        raise JftError(f"{source} has {what} {found}; they must be numbered 0, 1, 2, ... without gaps.")
    missing = [f"layer {i} has no {suffix}" for suffix, layers in per_layer.items() for i in found if i not in layers]
    if missing:
        raise JftError(f"{source} is incomplete: {first_few(missing, '; ')}.")
    for suffix, layers in per_layer.items():
        if len({np.shape(v) for v in layers.values()}) > 1:
            shapes = {i: np.shape(v) for i, v in sorted(layers.items())}
            raise JftError(f"{what} of '{suffix}' in {source} differ in shape: {shapes}.")
        rest[f"{prefix}/{suffix}"] = np.stack([layers[i] for i in range(len(layers))])
    return ptree.unflatten(rest)


def unstack_layers(params: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The flat '/'-joined paths of params, with each stacked array under `prefix` split into one
    entry a layer: {prefix}/{i}/..."""
    flat = {}
    for path, value in ptree.flatten(params).items():
        if path.startswith(f"{prefix}/"):
            suffix = path.removeprefix(f"{prefix}/")
            for i in range(np.shape(value)[0]):
                flat[f"{prefix}/{i}/{suffix}"] = value[i]
        else:
            flat[path] = value
    return flat

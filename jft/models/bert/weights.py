"""BERT's weights under Hugging Face's names: PyTorch state-dict names (safetensors) and Flax
paths (msgpack), in and out of jft's tree.

jft's tree is {"bert": encoder, and the heads it has: "cls" (MLM, NSP) or "classifier"}, with the
encoder's layers stacked on a leading axis; Hugging Face numbers them (encoder.layer.0, ...).
"""

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jft import params as ptree
from jft.errors import JftError
from jft.models.bert.modules import build, init_params
from jft.models.family import Head

# PyTorch buffers and tied copies that carry no weights of their own.
_TIED_DECODER = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_BUFFERS = re.compile(r"(bert\.)?embeddings\.position_ids$")
_LAYER = re.compile(r"^bert/encoder/layer/(\d+)/(.+)$")


def head_of(params: Mapping[str, Any]) -> Head:
    """The head a BERT tree carries."""
    if "bert" not in params:
        raise JftError(f"a BERT tree holds the encoder under 'bert' (found {sorted(params)}).")
    if "classifier" in params:
        num_labels = int(np.shape(params["classifier"]["bias"])[0])
        kind = "classification" if "pooler" in params["bert"] else "token_classification"
        return Head(kind, num_labels, mlm="cls" in params)
    if "cls" in params:
        return Head("pretraining", nsp="seq_relationship" in params["cls"])
    return Head("encoder", pooler="pooler" in params["bert"])


def architecture(head: Head) -> str:
    """transformers' class for a BERT with `head` (config.json's "architectures")."""
    return {
        "classification": "BertForSequenceClassification",
        "token_classification": "BertForTokenClassification",
        "pretraining": "BertForPreTraining" if head.nsp else "BertForMaskedLM",
    }.get(head.kind, "BertModel")


def weights_from_hf(tensors: Mapping[str, np.ndarray], layout: str, config, source: str) -> dict[str, Any]:
    """jft's tree from a checkpoint's tensors: layout "torch" (PyTorch names, kernels [out, in]) or
    "flax" ('/'-joined Flax paths, FlaxBertModel's without the "bert" level)."""
    if layout == "torch":
        flat = _from_torch_names(tensors)
    else:
        flat = dict(tensors)
        if not any(key.startswith("bert/") for key in flat):  # FlaxBertModel's layout
            flat = {f"bert/{key}": value for key, value in flat.items()}
    params = _stack_layers(flat, source)
    layers = params.get("bert", {}).get("encoder", {}).get("layer")
    found = None if not layers else int(np.shape(jax.tree.leaves(layers)[0])[0])
    if found is not None and found != config.num_hidden_layers and _fits(config, params, num_hidden_layers=found):
        raise JftError(
            f"{source} has {found} encoder layers, but its config.json says num_hidden_layers="
            f"{config.num_hidden_layers}; the weights and the config must come from the same model."
        )
    return params


def weights_to_hf(params: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The tensors of jft's tree under Hugging Face's names: layout "torch" or "flax" (see
    weights_from_hf); an encoder alone is written as BertModel's, without the "bert" prefix."""
    flat = {k: np.asarray(v) for k, v in _unstack_layers(params).items()}
    encoder_only = set(params) == {"bert"}
    if layout == "flax":
        return {k.removeprefix("bert/"): v for k, v in flat.items()} if encoder_only else flat
    return _to_torch_names(flat, strip_prefix=encoder_only)


def _fits(config, params: Mapping[str, Any], **changes: Any) -> bool:
    """Whether params have the shapes of config's model with `changes` (then only those differ)."""
    module = build(dataclasses.replace(config, **changes), head_of(params))
    expected = jax.eval_shape(lambda: init_params(module, jax.random.key(0)))
    try:
        ptree.check_shapes(expected, params, what="")
    except JftError:
        return False
    return True


def _from_torch_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch state-dict names (weight [out, in]) -> Flax paths (kernel [in, out])."""
    flat = {}
    for name, value in tensors.items():
        if _BUFFERS.match(name) or name in _TIED_DECODER:
            continue
        parts = name.split(".")
        if parts[0] not in ("bert", "cls", "classifier"):
            parts = ["bert", *parts]  # BertModel's names have no prefix
        parent, leaf = parts[-2], {"gamma": "weight", "beta": "bias"}.get(parts[-1], parts[-1])
        if leaf == "weight":
            if parent == "LayerNorm":
                leaf = "scale"
            elif parent.endswith("_embeddings"):
                leaf = "embedding"
            else:
                leaf, value = "kernel", value.T
        flat["/".join([*parts[:-1], leaf])] = value
    _check_tied_decoder(tensors, flat)
    return flat


def _check_tied_decoder(tensors: Mapping[str, np.ndarray], flat: Mapping[str, np.ndarray]) -> None:
    decoder = tensors.get("cls.predictions.decoder.weight")
    embedding = flat.get("bert/embeddings/word_embeddings/embedding")
    if decoder is not None and embedding is not None and not np.array_equal(decoder, embedding):
        raise JftError(
            "this checkpoint's MLM decoder differs from its word embeddings; jft ties the two, as BERT does. "
            "Load it without the MLM head (drop the cls.* tensors) to use its encoder."
        )


def _to_torch_names(flat: Mapping[str, np.ndarray], *, strip_prefix: bool) -> dict[str, np.ndarray]:
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


def _stack_layers(flat: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
    """bert/encoder/layer/{i}/... (one entry a layer) -> bert/encoder/layer/... stacked on axis 0;
    every layer must have every tensor the others have."""
    per_layer: dict[str, dict[int, np.ndarray]] = {}
    rest = {}
    for path, value in flat.items():
        match = _LAYER.match(path)
        if match:
            per_layer.setdefault(match.group(2), {})[int(match.group(1))] = value
        else:
            rest[path] = value
    found = sorted({i for layers in per_layer.values() for i in layers})
    if per_layer and found != list(range(len(found))):
        raise JftError(f"{source} has encoder layers {found}; they must be numbered 0, 1, 2, ... without gaps.")
    missing = [f"layer {i} has no {suffix}" for suffix, layers in per_layer.items() for i in found if i not in layers]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise JftError(f"{source} is incomplete: {'; '.join(missing[:5])}{more}.")
    for suffix, layers in per_layer.items():
        if len({np.shape(v) for v in layers.values()}) > 1:
            shapes = {i: np.shape(v) for i, v in sorted(layers.items())}
            raise JftError(f"encoder layers of '{suffix}' in {source} differ in shape: {shapes}.")
        rest[f"bert/encoder/layer/{suffix}"] = np.stack([layers[i] for i in range(len(layers))])
    return ptree.unflatten(rest)


def _unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    flat = {}
    for path, value in ptree.flatten(params).items():
        if path.startswith("bert/encoder/layer/"):
            suffix = path.removeprefix("bert/encoder/layer/")
            for i in range(np.shape(value)[0]):
                flat[f"bert/encoder/layer/{i}/{suffix}"] = value[i]
        else:
            flat[path] = value
    return flat

"""ResNet's weights under Hugging Face's names: PyTorch state-dict names (safetensors) and Flax
paths (msgpack), in and out of jft's tree.

jft's paths are Hugging Face's with the stage and layer numbers folded into module names:
resnet/stages_1_layers_0/layer_2/convolution/kernel is PyTorch's
resnet.encoder.stages.1.layers.0.layer.2.convolution.weight and Flax's
resnet/encoder/stages/1/layers/0/layer/layer_2/convolution/kernel; the stem is resnet/embedder
(Hugging Face's resnet.embedder.embedder) and the head classifier (classifier.1). BatchNorm's
running_mean and running_var go to the STATS tree (mean, var); num_batches_tracked is read and
dropped (momentum is fixed), and written as 0. Kernels: PyTorch's convolutions are [out, in, h, w]
and its Linear [out, in]; jft's (and Flax's) [h, w, in, out] and [in, out].
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jft.errors import JftError, choices, first_few
from jft.models.batch_norm import STATS
from jft.models.family import Head
from jft.params import flatten, unflatten

_TORCH_LAYER = re.compile(r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(layer\.(\d+)|shortcut)\.(.+)$")
_FLAX_LAYER = re.compile(r"^resnet/encoder/stages/(\d+)/layers/(\d+)/(layer/layer_(\d+)|shortcut)/(.+)$")
_JFT_LAYER = re.compile(r"^resnet/stages_(\d+)_layers_(\d+)/(layer_(\d+)|shortcut)/(.+)$")
_TORCH_LEAVES = {"weight": "kernel or scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def head_of(params: Mapping[str, Any]) -> Head:
    """The head a ResNet tree carries: a classifier, or the backbone alone."""
    if "resnet" not in params:
        raise JftError(f"a ResNet tree holds the backbone under 'resnet' (found {choices(sorted(params))}).")
    if "classifier" in params:
        joint = int(np.shape(params["joint_classifier"]["kernel"])[1]) if "joint_classifier" in params else 0
        return Head("classification", int(np.shape(params["classifier"]["kernel"])[1]), joint_labels=joint)
    return Head("encoder", pooler=False)


def architecture(config, head: Head) -> str:
    """transformers' class for a ResNet with `head` (config.json's "architectures")."""
    del config
    return "ResNetForImageClassification" if head.kind == "classification" else "ResNetModel"


def _module_to_jft(name: str, sep: str) -> str:
    """jft's module path of a Hugging Face module name (sep: '.' PyTorch, '/' Flax), leaf excluded."""
    match = (_TORCH_LAYER if sep == "." else _FLAX_LAYER).match(name)
    if match:
        stage, layer, _, index, rest = match.groups()
        block = "shortcut" if index is None else f"layer_{index}"
        return f"resnet/stages_{stage}_layers_{layer}/{block}/{rest.replace(sep, '/')}"
    for hf, ours in (
        (f"resnet{sep}embedder{sep}embedder{sep}", "resnet/embedder/"),
        (f"classifier{sep}1{sep}", "classifier/"),
    ):
        if name.startswith(hf):
            return ours + name[len(hf) :].replace(sep, "/")
    return ""


def _module_to_hf(path: str, sep: str) -> str:
    """Hugging Face's module name of a jft path (sep: '.' PyTorch, '/' Flax)."""
    match = _JFT_LAYER.match(path)
    if match:
        stage, layer, block, index, rest = match.groups()
        inner = "shortcut" if index is None else (f"layer{sep}{index}" if sep == "." else f"layer/layer_{index}")
        return sep.join(["resnet", "encoder", "stages", stage, "layers", layer, inner, rest.replace("/", sep)])
    if path.startswith("resnet/embedder/"):
        return sep.join(["resnet", "embedder", "embedder", path.removeprefix("resnet/embedder/").replace("/", sep)])
    if path.startswith("classifier/"):
        return sep.join(["classifier", "1", path.removeprefix("classifier/").replace("/", sep)])
    raise JftError(f"no Hugging Face name for the ResNet weight {path}.")


def weights_from_hf(tensors: Mapping[str, np.ndarray], layout: str, config, source: str) -> dict[str, Any]:
    """jft's tree (the statistics under STATS) from a checkpoint's tensors: layout "torch" (PyTorch
    state-dict names) or "flax" ('/'-joined paths under params/ and batch_stats/); ResNetModel's
    names (without "resnet.") too. A tensor jft has no place for is an error naming it."""
    del config
    flat, unknown = {}, []
    for name, value in tensors.items():
        value = np.asarray(value)
        if layout == "torch":
            if not name.startswith(("resnet.", "classifier.")):
                name = "resnet." + name  # ResNetModel's names
            module, _, leaf = name.rpartition(".")
            if leaf == "num_batches_tracked":
                continue
            path = _module_to_jft(module + ".", ".")
            if not path or leaf not in _TORCH_LEAVES:
                unknown.append(name)
                continue
            statistic = leaf in ("running_mean", "running_var")
            if leaf == "weight":
                leaf = "kernel" if module.endswith(("convolution", "classifier.1")) else "scale"
                if value.ndim == 4:
                    value = value.transpose(2, 3, 1, 0)
                elif value.ndim == 2:
                    value = value.T
            else:
                leaf = _TORCH_LEAVES[leaf]
        else:
            collection, _, name = name.partition("/")
            if collection not in ("params", STATS):
                collection, name = "params", f"{collection}/{name}"
            if not name.startswith(("resnet/", "classifier/")):
                name = "resnet/" + name
            module, _, leaf = name.rpartition("/")
            path = _module_to_jft(module + "/", "/")
            statistic = collection == STATS
            if not path:
                unknown.append(name)
                continue
        flat[(f"{STATS}/" if statistic else "") + path + leaf] = value
    if unknown:
        raise JftError(f"{source} holds weights a ResNet does not have: {first_few(unknown)}.")
    return unflatten(flat)


def weights_to_hf(params: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The tensors of jft's tree under Hugging Face's names (layout "torch" or "flax"), as
    ResNetForImageClassification (or ResNetModel) saves them."""
    tensors = {}
    for path, value in flatten(params).items():
        value = np.asarray(value)
        statistic = path.startswith(STATS + "/")
        module, _, leaf = path.removeprefix(STATS + "/").rpartition("/")
        name = _module_to_hf(module + "/", "." if layout == "torch" else "/").rstrip("./")
        if layout == "flax":
            tensors[f"{STATS if statistic else 'params'}/{name}/{leaf}"] = np.ascontiguousarray(value)
            continue
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        torch_leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}.get(
            leaf, leaf
        )
        tensors[f"{name}.{torch_leaf}"] = np.ascontiguousarray(value)
        if leaf == "var":
            tensors[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
    return tensors

"""VGG's weights under torchvision's state-dict names, in and out of jft's tree.

features.{i}.weight / .bias: the Sequential's i-th layer, a convolution ([out, in, h, w]; jft's
kernel [h, w, in, out]) or a BatchNorm (weight is jft's scale; running_mean and running_var go to
the STATS tree as mean and var; num_batches_tracked is read and dropped, written as 0);
classifier.0 and classifier.3 the hidden linear layers, classifier.6 the classifier ([out, in];
jft's [in, out]). torchvision.models.vgg16(num_classes=N).load_state_dict takes what
weights_to_hf writes, and a VGG has no Flax layout on Hugging Face: safetensors only.
"""

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jft.errors import JftError, choices, first_few
from jft.models.batch_norm import STATS
from jft.models.family import Head
from jft.params import flatten, unflatten

_TORCH = re.compile(r"^(features|classifier)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_LEAVES = {"bias": "bias", "running_mean": "mean", "running_var": "var"}
_TORCH_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
HEAD_INDEX = 6  # torchvision's classifier.6


def head_of(params: Mapping[str, Any]) -> Head:
    """The head a VGG tree carries: a classifier, or the backbone alone."""
    if "vgg" not in params:
        raise JftError(f"a VGG tree holds the backbone under 'vgg' (found {choices(sorted(params))}).")
    if "classifier" in params:
        joint = int(np.shape(params["joint_classifier"]["kernel"])[1]) if "joint_classifier" in params else 0
        return Head("classification", int(np.shape(params["classifier"]["kernel"])[1]), joint_labels=joint)
    return Head("encoder", pooler=False)


def architecture(config, head: Head) -> str:
    """What config.json's "architectures" names: torchvision's constructor (vgg16_bn, ...), or VGG
    for another size (torchvision.models.VGG with the same layers)."""
    del head
    return config.torchvision_name or "VGG"


def loaded_by(config, head: Head) -> str:
    """The torchvision call that loads an exported VGG."""
    if config.torchvision_name and head.kind == "classification":
        model = f"torchvision.models.{config.torchvision_name}(num_classes={head.num_labels})"
        return f"{model}.load_state_dict(safetensors.torch.load_file('model.safetensors')) loads it"
    return "a torchvision VGG with these layers loads model.safetensors with load_state_dict"


def weights_from_hf(tensors: Mapping[str, np.ndarray], layout: str, config, source: str) -> dict[str, Any]:
    """jft's tree (the statistics under STATS) from a torchvision state dict's tensors; a tensor jft
    has no place for is an error naming it."""
    del config
    if layout != "torch":
        raise JftError(f"{source}: a VGG's weights are a torchvision state dict in safetensors, not Flax msgpack.")
    flat, unknown = {}, []
    for name, value in tensors.items():
        match = _TORCH.match(name)
        if not match:
            unknown.append(name)
            continue
        group, index, leaf = match.groups()
        if leaf == "num_batches_tracked":
            continue
        value = np.asarray(value)
        module = "classifier" if (group, int(index)) == ("classifier", HEAD_INDEX) else f"vgg/{group}_{index}"
        if leaf == "weight":
            leaf = {4: "kernel", 2: "kernel", 1: "scale"}.get(value.ndim)
            if leaf is None:
                unknown.append(name)
                continue
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value
        else:
            leaf = _LEAVES[leaf]
        flat[(f"{STATS}/" if leaf in ("mean", "var") else "") + f"{module}/{leaf}"] = value
    if unknown:
        raise JftError(f"{source} holds weights a VGG does not have: {first_few(unknown)}.")
    return unflatten(flat)


def weights_to_hf(params: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The tensors of jft's tree under torchvision's state-dict names."""
    if layout != "torch":
        raise JftError("a VGG exports as a torchvision state dict (safetensors); it has no Flax msgpack layout.")
    tensors = {}
    for path, value in flatten(params).items():
        value = np.asarray(value)
        module, _, leaf = path.removeprefix(STATS + "/").rpartition("/")
        name = f"classifier.{HEAD_INDEX}" if module == "classifier" else module.removeprefix("vgg/").replace("_", ".")
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        tensors[f"{name}.{_TORCH_LEAVES[leaf]}"] = np.ascontiguousarray(value)
        if leaf == "var":
            tensors[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
    return tensors

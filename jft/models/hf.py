"""Hugging Face checkpoints in and out: config.json with model.safetensors or flax_model.msgpack.

    config, params = jft.models.hf.load("path/to/bert")   # a directory, or its weights file
    jft.models.hf.save("out/", config, params, format="safetensors")   # or "msgpack", "both"

`config` is the family's config (jft.models.family_of(config) is the family) and `params` its
tree (BERT: {"bert": encoder, and the heads the checkpoint has: "cls" (MLM, NSP) or
"classifier"}). config.json's model_type picks the family; the family maps its names. Both
formats, sharded or not, are read and written; transformers loads what `save` writes. Pickled
PyTorch files are refused.
"""

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import serialization

from jft import params as ptree
from jft.errors import JftError, choices
from jft.files import atomic_write, read_json_object, usual_permissions, write_json, write_text
from jft.models.family import Head
from jft.models.registry import family_of, family_of_hf

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"  # an image model's processor
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
MSGPACK, MSGPACK_INDEX = "flax_model.msgpack", "flax_model.msgpack.index.json"
FORMATS = ("safetensors", "msgpack")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5")


def load(path: str | Path, *, format: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Reads a Hugging Face directory (or its weights file) into (config, params).

    format: "safetensors" or "msgpack"; by default whichever the directory holds (safetensors first).
    The weights are checked against the shapes config.json implies; every mismatch is reported.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not path.exists():
        raise JftError(f"no such file or directory: {path}")
    config_file = directory / CONFIG
    if not config_file.is_file():
        raise JftError(f"{directory} has no {CONFIG}; a Hugging Face model directory holds config.json and weights.")
    hf_config = read_json_object(config_file)
    family = family_of_hf(hf_config, str(config_file))
    config = family.config_from_hf(hf_config, str(config_file))
    weights_file = path if path.is_file() else _find_weights(directory, format)
    if _format_of(weights_file) == "safetensors":
        params = family.weights_from_hf(_read_safetensors(weights_file), "torch", config, str(weights_file))
    else:
        params = family.weights_from_hf(_read_msgpack(weights_file), "flax", config, str(weights_file))
    architecture = _architecture(hf_config)
    for suffix, scope in family.hf_classifier_scopes.items():
        if architecture.endswith(suffix) and "classifier" in params:
            params[scope] = params.pop("classifier")
    ptree.check_shapes(family.shapes(config, family.head_of(params)), params, what=f"the weights in {weights_file}")
    ptree.check_finite(params, f"{weights_file}")
    dtype = config.params_dtype
    return config, jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), params)


def save(
    path: str | Path,
    config,
    params: Mapping[str, Any],
    *,
    format: str = "safetensors",
    max_shard_size: int | str | None = None,
    labels: list[str] | None = None,
    problem_type: str | None = None,
    head: Head | None = None,
) -> Path:
    """Writes config.json and the weights so that transformers' from_pretrained loads them.

    format: "safetensors" (PyTorch names), "msgpack" (Flax layout) or "both". max_shard_size: bytes
    (or "500MB", "2GB"); above it the weights are split into shards with an index.json.
    labels: names of a task head's outputs, written as id2label. problem_type: transformers'
    name of the loss of a sequence classifier ("single_label_classification", "regression").
    head: what the weights are for, where their shapes do not say (a multiple-choice scorer has a
    regression head's); by default the family's reading of them.
    """
    if format not in (*FORMATS, "both"):
        raise JftError(f"unknown format '{format}'; choose one of {choices((*FORMATS, 'both'))}.")
    family = family_of(config)
    head = head or family.head_of(params)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_config = {**family.config_to_hf(config), "architectures": [family.architecture(config, head)]}
    if head.num_labels:
        labels = labels or [f"LABEL_{i}" for i in range(head.num_labels)]
        if len(labels) != head.num_labels:
            raise JftError(f"{len(labels)} label names given for a head with {head.num_labels} outputs.")
        hf_config["id2label"] = dict(enumerate(labels))
        hf_config["label2id"] = {name: i for i, name in enumerate(labels)}
    if problem_type:
        hf_config["problem_type"] = problem_type
    for stale in (
        SAFETENSORS,
        SAFETENSORS_INDEX,
        MSGPACK,
        MSGPACK_INDEX,
        "model-*-of-*.safetensors",
        "flax_model-*-of-*.msgpack",
    ):
        for file in path.glob(stale):  # a previous save in either format would shadow this one
            file.unlink()
    if format in ("safetensors", "both"):
        tensors = family.weights_to_hf(params, "torch")
        _write_shards(path, SAFETENSORS, SAFETENSORS_INDEX, tensors, max_shard_size, _write_safetensors)
    if format in ("msgpack", "both"):
        flat = family.weights_to_hf(params, "flax")
        _write_shards(path, MSGPACK, MSGPACK_INDEX, flat, max_shard_size, _write_msgpack)
    write_text(path / CONFIG, json.dumps(hf_config, indent=2) + "\n")
    return path


def save_image_processor(config, out: Path) -> None:
    """preprocessor_config.json: a ViTImageProcessor that resizes to the model's side (bilinear, as
    jft.data.images), scales to [0, 1] and normalises with the model's mean and std, so that
    AutoImageProcessor gives the pixels jft predicts from."""
    side = config.image_size
    write_json(
        Path(out) / PROCESSOR,
        {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": side, "width": side},
            "resample": 2,  # PIL.Image.BILINEAR
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(config.image_mean),
            "image_std": list(config.image_std),
            "do_convert_rgb": True,
        },
    )


# transformers' heads whose outputs are a task's labels (the architecture's suffix), and their task
LABEL_HEADS = {
    "ForSequenceClassification": "classification",
    "ForImageClassification": "classification",
    "ForTokenClassification": "token_classification",
}


def _architecture(config: Mapping[str, Any]) -> str:
    return str((config.get("architectures") or [""])[0])


def read_task(directory: Path, head: str = "") -> dict | None:
    """The task of a Hugging Face directory's classifier head, as a jft run records it ({"kind",
    "labels"}: id2label's names in id order), from config.json's architecture, or where that does
    not name a head (torchvision's VGG) from `head`, the kind of head its weights hold; None for a
    model without one, or whose names repeat (no order to keep)."""
    config = read_json_object(directory / CONFIG)
    architecture = _architecture(config)
    kind = next((kind for suffix, kind in LABEL_HEADS.items() if architecture.endswith(suffix)), None)
    if kind is None and head in LABEL_HEADS.values():
        kind = head
    if kind is None:
        return None
    if kind == "classification" and config.get("problem_type") == "regression":
        return {"kind": "regression", "labels": []}
    names = config.get("id2label") or {}
    labels = [str(names[key]) for key in sorted(names, key=lambda key: int(key) if str(key).isdigit() else len(names))]
    return {"kind": kind, "labels": labels} if len(set(labels)) == len(labels) else None


def read_image_processor(directory: Path, config):
    """config with the image side, mean and std of a Hugging Face directory's preprocessor_config.json
    (the crop a ConvNextImageProcessor ends with, or the size a ViTImageProcessor resizes to); config
    as it is without one."""
    file = directory / PROCESSOR
    if not file.is_file():
        return config
    values = read_json_object(file)
    size = values.get("crop_size") or values.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    fields = {"image_size": side, "image_mean": values.get("image_mean"), "image_std": values.get("image_std")}
    fields = {name: tuple(v) if isinstance(v, list) else v for name, v in fields.items() if v is not None}
    return dataclasses.replace(config, **fields)


def model_for(config, params: Mapping[str, Any]) -> tuple[nn.Module, Head]:
    """The family's module matching the heads in `params`, and the Head."""
    family = family_of(config)
    head = family.head_of(params)
    return family.module(config, head), head


def _find_weights(directory: Path, format: str | None) -> Path:
    if format not in (None, *FORMATS):
        raise JftError(f"unknown format '{format}'; choose one of {choices(FORMATS)}.")
    candidates = {"safetensors": (SAFETENSORS, SAFETENSORS_INDEX), "msgpack": (MSGPACK, MSGPACK_INDEX)}
    for fmt in [format] if format else FORMATS:
        for name in candidates[fmt]:
            if (directory / name).is_file():
                return directory / name
    pickles = [name for name in _PICKLES if (directory / name).is_file()]
    if pickles:
        raise _pickle_error(directory / pickles[0])
    wanted = " or ".join(name for fmt in ([format] if format else FORMATS) for name in candidates[fmt])
    raise JftError(f"no weights in {directory}: expected {wanted}.")


def _format_of(weights_file: Path) -> str:
    if weights_file.suffix == ".safetensors" or weights_file.name == SAFETENSORS_INDEX:
        return "safetensors"
    if weights_file.suffix == ".msgpack" or weights_file.name == MSGPACK_INDEX:
        return "msgpack"
    if weights_file.suffix in (".bin", ".pt", ".pth", ".h5"):
        raise _pickle_error(weights_file)
    raise JftError(f"cannot tell the format of {weights_file}: expected *.safetensors, *.msgpack or an index.json.")


def _pickle_error(file: Path) -> JftError:
    return JftError(
        f"{file} is a pickle file; jft never unpickles (loading a pickle can run arbitrary code). "
        "Convert it to safetensors once, where you trust the file, with the class config.json's architectures "
        'names (its heads kept): `python -c "import json, transformers as t; '
        f"d = '{file.parent}'; a = json.load(open(d + '/config.json'))['architectures'][0]; "
        'getattr(t, a).from_pretrained(d).save_pretrained(d, safe_serialization=True)"`.'
    )


def _shard_files(weights_file: Path) -> list[Path]:
    """The files behind a weights path: itself, or the shards its index.json names."""
    if weights_file.suffix != ".json":
        return [weights_file]
    index = read_json_object(weights_file, "the shard index")
    if not isinstance(index.get("weight_map"), dict):
        raise JftError(f"the shard index {weights_file} has no weight_map {{tensor name: shard file}}.")
    shards = sorted({str(name) for name in index["weight_map"].values()})
    outside = [name for name in shards if Path(name).name != name or name in ("", ".", "..")]
    if outside:
        raise JftError(
            f"the shard index {weights_file} names files outside its directory ({', '.join(outside[:3])}); "
            "shards must be plain file names beside the index. Not read."
        )
    missing = [name for name in shards if not (weights_file.parent / name).is_file()]
    if missing:
        raise JftError(f"{weights_file} names shards that are missing: {', '.join(missing)}.")
    return [weights_file.parent / name for name in shards]


def _read_safetensors(weights_file: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for file in _shard_files(weights_file):
        try:
            tensors.update(safetensors.numpy.load_file(file))
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise JftError(
                f"{file} is not a readable safetensors file ({str(error).strip().splitlines()[0][:160]}); it is "
                "damaged or incomplete: copy or convert it again."
            ) from None
    return tensors


def _read_msgpack(weights_file: Path) -> dict[str, np.ndarray]:
    flat = {}
    for file in _shard_files(weights_file):
        try:
            state = serialization.msgpack_restore(file.read_bytes())
        except Exception as error:
            raise JftError(f"{file} is not a Flax msgpack file ({error}).") from error
        flat.update(ptree.flatten(state))
    return flat


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not match:
        raise JftError(f"cannot read the shard size '{size}'; write bytes as an integer or like '500MB', '2GB'.")
    return int(float(match.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match.group(2)])


def _write_shards(
    path: Path, name: str, index_name: str, flat: Mapping[str, np.ndarray], max_shard_size: int | str | None, write
) -> None:
    """Writes `flat` to `name`, or to numbered shards plus `index_name` when over max_shard_size."""
    limit = _parse_size(max_shard_size) if max_shard_size is not None else None
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, value in flat.items():
        if limit is not None and shards[-1] and size + value.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.nbytes
    if len(shards) == 1:
        write(path / name, shards[0])
        return
    stem, ext = name.split(".", 1)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        shard_name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
        write(path / shard_name, shard)
        weight_map.update(dict.fromkeys(shard, shard_name))
    total = sum(v.nbytes for v in flat.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    write_text(path / index_name, json.dumps(index, indent=2) + "\n")


def _write_safetensors(file: Path, tensors: Mapping[str, np.ndarray]) -> None:
    def write(path: Path) -> None:
        try:
            safetensors.numpy.save_file(dict(tensors), str(path), metadata={"format": "pt"})
        except safetensors.SafetensorError as error:  # an OS error inside: a full disk ("code: 28")
            code = re.search(r"code: (\d+)", str(error))
            if code is None:
                raise
            number = int(code.group(1))
            raise OSError(number, os.strerror(number), str(file)) from None

    atomic_write(file, write)
    usual_permissions(file)


def _write_msgpack(file: Path, flat: Mapping[str, np.ndarray]) -> None:
    atomic_write(file, lambda path: path.write_bytes(serialization.msgpack_serialize(ptree.unflatten(flat))))

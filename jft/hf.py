"""Hugging Face BERT checkpoints in and out: config.json with flax_model.msgpack or model.safetensors.

    config, params = jft.hf.load("path/to/bert")          # a directory, or its weights file
    jft.hf.save("out/", config, params, format="safetensors")   # or format="msgpack"

`params` is jft's tree: {"bert": encoder, and the heads the checkpoint has: "cls" (MLM, NSP) or
"classifier"}, with the encoder layers stacked on a leading axis. Both formats, sharded or not,
are read and written; transformers loads what `save` writes. Pickled PyTorch files are refused.
"""

import dataclasses
import functools
import json
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
from jft.errors import JftError
from jft.files import read_json_object, usual_permissions
from jft.models import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    init_params,
)

CONFIG = "config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
MSGPACK, MSGPACK_INDEX = "flax_model.msgpack", "flax_model.msgpack.index.json"
FORMATS = ("safetensors", "msgpack")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5")
# PyTorch buffers and tied copies that carry no weights of their own.
_TIED_DECODER = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
_BUFFERS = re.compile(r"(bert\.)?embeddings\.position_ids$")
_LAYER = re.compile(r"^bert/encoder/layer/(\d+)/(.+)$")


def load(path: str | Path, *, format: str | None = None) -> tuple[BertConfig, dict[str, Any]]:
    """Reads a Hugging Face BERT directory (or its weights file) into (BertConfig, params).

    format: "safetensors" or "msgpack"; by default whichever the directory holds (safetensors first).
    The weights are checked against the shapes config.json implies; every mismatch is reported.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not path.exists():
        raise JftError(f"no such file or directory: {path}")
    config_file = directory / CONFIG
    if not config_file.is_file():
        raise JftError(f"{directory} has no {CONFIG}; a Hugging Face BERT directory holds config.json and weights.")
    config = BertConfig.from_hf(read_json_object(config_file), source=str(config_file))
    weights_file = path if path.is_file() else _find_weights(directory, format)
    if _format_of(weights_file) == "safetensors":
        flat = _from_torch_names(_read_safetensors(weights_file))
    else:
        flat = _read_msgpack(weights_file)
    params = _stack_layers(flat, weights_file)
    layers = _layer_count(params)
    if layers is not None and layers != config.num_hidden_layers and _fits(config, params, num_hidden_layers=layers):
        raise JftError(
            f"{weights_file} has {layers} encoder layers, but its config.json says num_hidden_layers="
            f"{config.num_hidden_layers}; the weights and the config must come from the same model."
        )
    module, module_params = model_for(config, params)
    expected = jax.eval_shape(functools.partial(init_params, module), jax.random.key(0))
    ptree.check_shapes(expected, module_params, what=f"the weights in {weights_file}")
    ptree.check_finite(params, f"{weights_file}")
    dtype = config.params_dtype
    return config, jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), params)


def save(
    path: str | Path,
    config: BertConfig,
    params: Mapping[str, Any],
    *,
    format: str = "safetensors",
    max_shard_size: int | str | None = None,
    labels: list[str] | None = None,
    problem_type: str | None = None,
) -> Path:
    """Writes config.json and the weights so that transformers' from_pretrained loads them.

    format: "safetensors" (PyTorch names), "msgpack" (Flax layout) or "both". max_shard_size: bytes
    (or "500MB", "2GB"); above it the weights are split into shards with an index.json.
    labels: names of the classifier's outputs, written as id2label. problem_type: transformers'
    name of the loss of a sequence classifier ("single_label_classification", "regression").
    """
    if format not in (*FORMATS, "both"):
        raise JftError(f"unknown format '{format}'; choose one of {(*FORMATS, 'both')}.")
    if "bert" not in params:
        raise JftError("params must hold the encoder under 'bert' (the tree jft.hf.load returns).")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_config = {**config.to_hf(), "architectures": [_architecture(params)]}
    if "classifier" in params:
        num_labels = int(np.shape(params["classifier"]["bias"])[0])
        labels = labels or [f"LABEL_{i}" for i in range(num_labels)]
        if len(labels) != num_labels:
            raise JftError(f"{len(labels)} label names given for a classifier with {num_labels} outputs.")
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
    flat = {k: np.asarray(v) for k, v in _unstack_layers(params).items()}
    encoder_only = set(params) == {"bert"}
    if format in ("safetensors", "both"):
        tensors = _to_torch_names(flat, strip_prefix=encoder_only)
        _write_shards(path, SAFETENSORS, SAFETENSORS_INDEX, tensors, max_shard_size, _write_safetensors)
    if format in ("msgpack", "both"):
        if encoder_only:  # FlaxBertModel's layout has no "bert" level
            flat = {k.removeprefix("bert/"): v for k, v in flat.items()}
        _write_shards(path, MSGPACK, MSGPACK_INDEX, flat, max_shard_size, _write_msgpack)
    (path / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    return path


def model_for(config: BertConfig, params: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The jft module that matches the heads in `params`, and the `params` to apply it with."""
    if "classifier" in params:
        num_labels = int(np.shape(params["classifier"]["bias"])[0])
        if "pooler" in params["bert"]:
            return BertForSequenceClassification(config, num_labels), dict(params)
        return BertForTokenClassification(config, num_labels), dict(params)
    if "cls" in params:
        return BertForPreTraining(config, nsp="seq_relationship" in params["cls"]), dict(params)
    return BertModel(config, add_pooling_layer="pooler" in params["bert"]), dict(params["bert"])


def _architecture(params: Mapping[str, Any]) -> str:
    if "classifier" in params:
        return "BertForSequenceClassification" if "pooler" in params["bert"] else "BertForTokenClassification"
    if "cls" in params:
        return "BertForPreTraining" if "seq_relationship" in params["cls"] else "BertForMaskedLM"
    return "BertModel"


def _find_weights(directory: Path, format: str | None) -> Path:
    if format not in (None, *FORMATS):
        raise JftError(f"unknown format '{format}'; choose one of {FORMATS}.")
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
        'Convert it to safetensors once, where you trust the file: `python -c "import transformers as t; '
        f"t.AutoModel.from_pretrained('{file.parent}').save_pretrained('{file.parent}', safe_serialization=True)\"`."
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
    if not any(key.startswith("bert/") for key in flat):  # FlaxBertModel's layout
        flat = {f"bert/{key}": value for key, value in flat.items()}
    return flat


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


def _layer_count(params: Mapping[str, Any]) -> int | None:
    layers = params.get("bert", {}).get("encoder", {}).get("layer")
    return None if not layers else int(np.shape(jax.tree.leaves(layers)[0])[0])


def _fits(config: BertConfig, params: Mapping[str, Any], **changes: Any) -> bool:
    """Whether params have the shapes of config's model with changes."""
    module, module_params = model_for(dataclasses.replace(config, **changes), params)
    expected = jax.eval_shape(functools.partial(init_params, module), jax.random.key(0))
    try:
        ptree.check_shapes(expected, module_params, what="")
    except JftError:
        return False
    return True


def _stack_layers(flat: Mapping[str, np.ndarray], source: Path) -> dict[str, Any]:
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
    (path / index_name).write_text(json.dumps(index, indent=2) + "\n")


def _write_safetensors(file: Path, tensors: Mapping[str, np.ndarray]) -> None:
    safetensors.numpy.save_file(dict(tensors), str(file), metadata={"format": "pt"})
    usual_permissions(file)


def _write_msgpack(file: Path, flat: Mapping[str, np.ndarray]) -> None:
    file.write_bytes(serialization.msgpack_serialize(ptree.unflatten(flat)))

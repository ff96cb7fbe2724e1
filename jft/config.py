"""Run configs: Python files under configs/ whose get_config() returns an ml_collections ConfigDict.

Every key can be overridden from the command line as --config.a.b=value; an unknown key is an
error that names the closest valid key. Configs are locked after loading, so a typo in code fails too.
"""

import ast
import dataclasses
import importlib.resources
import importlib.util
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict, config_dict

from jft.errors import JftError, did_you_mean
from jft.models.config import CHANGEABLE_FIELDS, PRESETS, SIZE_FIELDS, BertConfig

OVERRIDE_PREFIX = "--config."


def model_config(size: str, **overrides: Any) -> ConfigDict:
    """All BertConfig fields of a named size ('tiny', 'mini', 'base', 'large') as a ConfigDict.

    The values are checked when the run builds its model (bert_config), so a config may hold a
    placeholder that the run fills in, such as vocab_size=0 for "the vocabulary's size".
    """
    return ConfigDict({**dataclasses.asdict(BertConfig.preset(size)), **overrides})


def model_group(preset: str = "", **fields: Any) -> ConfigDict:
    """The `model` group of a training config: a preset and every BertConfig field, unset (None)
    unless given. How a run turns it into its model is `resolve_model`."""
    group = ConfigDict({"preset": preset})
    for field in dataclasses.fields(BertConfig):
        kind = field.type if isinstance(field.type, type) else typing.get_args(field.type)[0]  # float | None: float
        group[field.name] = fields.pop(field.name) if field.name in fields else config_dict.placeholder(kind)
    if fields:
        raise JftError(f"unknown model fields {sorted(fields)}.")
    return group


def resolve_model(
    group: ConfigDict, *, checkpoint: BertConfig | None = None, source: str = "", vocab_size: int | None = None
) -> BertConfig:
    """The model of a run from its `model` group.

    Starting from a checkpoint (source names it), the checkpoint's architecture is used as is: a
    field the config sets must agree with it, except the CHANGEABLE_FIELDS (dropout, dtype,
    attention, remat, new heads' initialisation); every contradiction is listed in one error.
    From scratch: the preset's sizes, then the fields the config sets; vocab_size defaults to
    the vocabulary's.
    """
    values = {name: value for name, value in group.items() if name != "preset" and value is not None}
    if checkpoint is not None:
        theirs = dataclasses.asdict(checkpoint)
        clashes = [
            f"model.{name}={value!r} (it has {theirs[name]!r})"
            for name, value in values.items()
            if name not in CHANGEABLE_FIELDS and value != theirs[name]
        ]
        if clashes:
            raise JftError(
                f"the config contradicts the architecture of {source}: {'; '.join(clashes)}. A run keeps its "
                f"checkpoint's architecture; remove these settings (only {', '.join(CHANGEABLE_FIELDS)} may differ)."
            )
        return BertConfig.from_dict({**theirs, **values})
    if group.preset and group.preset not in PRESETS:
        raise JftError(f"unknown model.preset '{group.preset}'; choose one of {sorted(PRESETS)}.")
    values = {**PRESETS.get(group.preset, {}), **values}
    if vocab_size and "vocab_size" not in values:
        values["vocab_size"] = vocab_size
    missing = [name for name in SIZE_FIELDS if name not in values]
    if missing:
        raise JftError(
            f"a model from scratch needs its sizes: set model.preset ({', '.join(PRESETS)}) or "
            f"{', '.join(f'model.{name}' for name in missing)}; or start from a checkpoint with init_from."
        )
    return BertConfig.from_dict(values)


def bert_config(config: ConfigDict, **fill_in: Any) -> BertConfig:
    """The validated BertConfig of a run config's `model` group, with fill_in values for zero fields."""
    values = config.to_dict() if isinstance(config, ConfigDict) else dict(config)
    values.update({name: value for name, value in fill_in.items() if not values.get(name)})
    return BertConfig.from_dict(values)


def packaged_configs() -> list[str]:
    """The names of the configs that ship with jft: 'pretrain/tiny', 'finetune/glue', 'bench', ..."""
    root = importlib.resources.files("jft.configs")
    names = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("_"):
            names += [f"{entry.name}/{f.name[:-3]}" for f in sorted(entry.iterdir(), key=lambda f: f.name)]
        elif entry.name.endswith(".py"):
            names.append(entry.name[:-3])
    return [name for name in names if not name.rsplit("/", 1)[-1].startswith("_")]


def find_config(name: str, stage: str = "") -> Path:
    """A config file by path, or by the name of a packaged config: 'pretrain/tiny', 'jft:pretrain/tiny',
    or 'tiny' for the stage's own (stage: 'pretrain', 'finetune'; '' for bench and init)."""
    if Path(name).is_file():
        return Path(name)
    short = name.removeprefix("jft:").removesuffix(".py")
    root = importlib.resources.files("jft.configs")
    for candidate in ([f"{stage}/{short}"] if stage in ("pretrain", "finetune") else []) + [short]:
        path = Path(str(root / f"{candidate}.py"))
        if path.is_file():
            return path
    raise JftError(
        f"config file not found: {name}; give a path, or one of the configs that ship with jft: "
        f"{', '.join(packaged_configs())} (`jft config NAME` prints one)."
    )


def load_config(spec: str | Path, overrides: Sequence[str] = (), stage: str = "") -> ConfigDict:
    """Runs get_config() from a config file, locks the result, and applies 'a.b=value' overrides.

    spec: 'path/to/config.py', or 'path/to/config.py:ARG' to call get_config('ARG'); a path may
    itself hold ':' (the ARG is what follows the last ':' after a path that is not a file). Instead
    of a path, the name of a config that ships with jft (find_config): 'finetune/glue:sst2'.
    """
    spec = str(spec).removeprefix("jft:")
    path_text, arg = (spec, "") if Path(spec).is_file() else spec.rpartition(":")[::2]
    if not path_text:  # no ':' at all
        path_text, arg = spec, ""
    path = find_config(path_text, stage)
    module_spec = importlib.util.spec_from_file_location(f"jft_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise JftError(f"{path}:{error.lineno} is not valid Python ({error.msg}).") from None
    if not hasattr(module, "get_config"):
        raise JftError(f"{path} has no get_config(); a config file defines get_config() returning a ConfigDict.")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except (ValueError, TypeError, KeyError) as error:
        call = f"get_config({arg!r})" if arg else "get_config()"
        raise JftError(f"{path}: {call} failed: {error}") from None
    if not isinstance(config, ConfigDict):
        raise JftError(f"get_config() in {path} returned {type(config).__name__}, not an ml_collections ConfigDict.")
    return with_overrides(config, overrides)


def with_overrides(config: ConfigDict, overrides: Sequence[str] = ()) -> ConfigDict:
    """Locks config (no new keys) and applies 'a.b=value' overrides to it."""
    config.lock()
    apply_overrides(config, overrides)
    return config


def split_overrides(args: Sequence[str]) -> list[str]:
    """['--config.a.b=1', '--config.c', '2'] -> ['a.b=1', 'c=2']; anything else is an error."""
    overrides, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith(OVERRIDE_PREFIX):
            raise JftError(f"unrecognized argument '{arg}'; config keys are set as {OVERRIDE_PREFIX}KEY=VALUE.")
        body = arg.removeprefix(OVERRIDE_PREFIX)
        if "=" not in body:
            if i + 1 >= len(args):
                raise JftError(f"'{arg}' has no value; write {arg}=VALUE.")
            body, i = f"{body}={args[i + 1]}", i + 1
        overrides.append(body)
        i += 1
    return overrides


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> None:
    """Sets each 'a.b=value', parsing the value to the type of the key's current value."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise JftError(f"override '{override}' is not of the form KEY=VALUE.")
        names = key.split(".")
        node, depth = config, 0
        while depth < len(names) - 1 and not _free_form(node):
            node, depth = _child(node, names[depth], ".".join(names[: depth + 1]), config), depth + 1
        if _free_form(node):  # a mapping of dotted keys (sweep.grid): the rest of the key is one of them
            node[".".join(names[depth:])] = _parse(text, None, key)
            continue
        leaf = names[-1]
        current = _child(node, leaf, key, config)
        if _free_form(current):  # the whole mapping, as a dict literal
            value = _parse(text, None, key)
            if not isinstance(value, dict):
                example = "{'optim.lr': [1e-5, 3e-5]}"
                raise JftError(f"'{key}' takes a dict literal, e.g. {key}=\"{example}\"; got {text!r}.")
            setattr(node, leaf, value)
            continue
        if isinstance(current, ConfigDict):
            raise JftError(f"'{key}' is a group of keys ({', '.join(current)}); set one of them, e.g. {key}.KEY=VALUE.")
        if current is None and node.get_type(leaf) in (bool, int, float, str):  # an unset placeholder
            current = node.get_type(leaf)()
        try:
            # 'none' unsets a key, except where it is a word the key takes (model.remat=none)
            unset = text.lower() == "none" and not isinstance(current, str)
            setattr(node, leaf, None if unset else _parse(text, current, key))
        except TypeError as error:
            raise JftError(f"cannot set '{key}' to {text!r}: {error}") from error


def _free_form(node: Any) -> bool:
    """A plain dict in a config (a group made with convert_dict=False), whose keys are names of
    their own, dotted or not (sweep.grid): set as a whole, or one key at a time."""
    return isinstance(node, dict) and not isinstance(node, ConfigDict)


def leaf_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of the config that holds a value (not a group)."""
    keys = []
    for name, value in config.items():
        if isinstance(value, ConfigDict):
            keys += leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _child(node: ConfigDict, name: str, key: str, root: ConfigDict) -> Any:
    if not isinstance(node, ConfigDict) or name not in node:
        from jft.keys import synonym

        valid = leaf_keys(root)
        hint = synonym(key, valid) or did_you_mean(key, valid)
        raise JftError(f"unknown config key '{key}'.{hint} `jft config CONFIG` lists every key.")
    return node[name]


def _parse(text: str, current: Any, key: str) -> Any:
    """Reads a command-line value as the type of the key's current value."""
    try:
        if isinstance(current, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[type(current)]
        raise JftError(f"'{key}' takes {kind}; {text!r} is not one.") from None
    if text.lower() == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text

"""Run configs: Python files under configs/ whose get_config() returns an ml_collections ConfigDict.

Every key can be overridden from the command line as --config.a.b=value; an unknown key is an
error that names the closest valid key. Configs are locked after loading, so a typo in code fails too.
"""

import ast
import difflib
import importlib.resources
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict, FieldReference

from jft.errors import JftError, did_you_mean

OVERRIDE_PREFIX = "--config."


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
    named = [config for config in packaged_configs() if config.rpartition("/")[2] == short]
    if named:
        raise JftError(
            f"{name} names {len(named)} configs that ship with jft: {', '.join(named)}; give one of them, "
            f"e.g. `jft config {named[0]}`."
        )
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
    if path.suffix != ".py":
        raise JftError(f"{path} is not a config file: a config is a Python file (.py) that defines get_config().")
    module_spec = importlib.util.spec_from_file_location(f"jft_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        where = error.filename or path  # the config, or a module it imports
        raise JftError(f"{where}:{error.lineno} is not valid Python ({error.msg}).") from None
    except Exception as error:  # the file's own code failed: an import, a name, anything
        raise JftError(f"{path} could not be run ({type(error).__name__}: {error}).") from None
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
    _warn_of_repeated_keys(overrides)
    return overrides


def _warn_of_repeated_keys(overrides: Sequence[str]) -> None:
    """Says on stderr which keys are set more than once, to different values: the last one is used."""
    values: dict[str, list[str]] = {}
    for override in overrides:
        key, _, text = override.partition("=")
        values.setdefault(key, []).append(text)
    for key, texts in values.items():
        if len(set(texts)) > 1:
            print(
                f"warning: {OVERRIDE_PREFIX}{key} is given {len(texts)} times ({', '.join(texts)}); the last is used.",
                file=sys.stderr,
            )


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
        # a key that may be unset: a model field (None: the preset's or the checkpoint's value), a
        # placeholder (ml_collections keeps it as a FieldReference) or one that is None
        nullable = key.startswith("model.") or current is None or isinstance(node._fields.get(leaf), FieldReference)
        if current is None and node.get_type(leaf) in (bool, int, float, str):  # an unset placeholder
            current = node.get_type(leaf)()
        try:
            # 'none' unsets a key that may be unset, except where it is a word the key takes
            # (model.remat=none); for a number, 'none' is no number (_parse says so)
            unset = text.lower() == "none" and not isinstance(current, str) and nullable
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


# Names other trainers use (Hugging Face Trainer, big_vision, fairseq) and jft's; a target that
# starts with '--' is a command-line option, not a config key.
SYNONYMS = {
    "learning_rate": "optim.lr",
    "lr": "optim.lr",
    "peak_lr": "optim.lr",
    "warmup_steps": "optim.warmup_steps",
    "weight_decay": "optim.weight_decay",
    "max_grad_norm": "optim.max_grad_norm",
    "adam_beta1": "optim.b1",
    "adam_beta2": "optim.b2",
    "adam_epsilon": "optim.eps",
    "optimizer": "optim.name",
    "lr_scheduler_type": "optim.decay",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "max_steps": "total_steps",
    "num_train_steps": "total_steps",
    "train_steps": "total_steps",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "accum_steps",
    "max_seq_length": "data.seq_len",
    "max_length": "data.seq_len",
    "seq_len": "data.seq_len",
    "logging_steps": "log_every",
    "eval_steps": "eval_every",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "model_name_or_path": "init_from",
    "output_dir": "--workdir",
    "train_file": "data.train",
    "validation_file": "data.eval",
    "test_file": "data.test",
    "metric_for_best_model": "best_metric",
    "early_stopping_patience": "early_stopping.patience",
    "dropout": "model.hidden_dropout_prob",
    "mlm_probability": "masking.rate",
    "vocab": "data.vocab",
}


def synonym(key: str, valid: list[str]) -> str:
    """' jft calls it X (--config.X=...).' when key is another trainer's name for a key of valid,
    also misspelt (max_lenght)."""
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, list(SYNONYMS), n=1, cutoff=0.85)
    target = SYNONYMS.get(name) or (SYNONYMS[close[0]] if close else None)
    if target == "total_steps" and target not in valid and "max_steps" in valid:
        target = "max_steps"
    if target and target.startswith("--"):
        return f" jft takes it as the command-line option {target}."
    if target and target in valid:
        return f" jft calls it '{target}' (--config.{target}=...)."
    return ""


def describe(config: ConfigDict, defaults: ConfigDict | None, meanings: Mapping[str, str]) -> str:
    """Every key of config: its value, its default where it differs, and what it means."""
    values = config.to_dict()
    base = defaults.to_dict() if defaults is not None else values
    lines = []
    for key in leaf_keys(config):
        value = value_at(values, key)
        default = value_at(base, key) if defaults is not None and key in leaf_keys(defaults) else value
        changed = f"  (default {default!r})" if default != value else ""
        lines.append(f"{key} = {value!r}{changed}  # {meanings.get(key, '')}".rstrip(" #"))
    return "\n".join(lines)


def value_at(tree: Mapping, key: str) -> Any:
    """The value of a dotted key in nested mappings."""
    for part in key.split("."):
        tree = tree[part]
    return tree

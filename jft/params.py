"""Parameter trees: flatten to 'a/b/c' paths, compare shapes, and merge loaded weights into a model's."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jft.errors import JftError, first_few

Params = Mapping[str, Any]


def flatten(tree: Params) -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b': x} -> {'a': {'b': x}}."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


@dataclasses.dataclass
class MergeReport:
    """What a merge took from the loaded weights, created new, and left unused."""

    loaded: list[str]
    created: list[str]
    unused: list[str]

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} arrays"]
        if self.created:
            lines.append(f"created new ({len(self.created)}): " + ", ".join(self.created))
        if self.unused:
            lines.append(f"not used ({len(self.unused)}): " + ", ".join(self.unused))
        return "\n".join(lines)


def check_shapes(
    expected: Params, got: Params, *, what: str, allow_missing: bool = False, allow_unused: bool = False
) -> None:
    """Raises one JftError listing every path whose shape differs, is missing, or is unexpected."""
    want, have = flatten(expected), flatten(got)
    problems = [
        f"  {path}: expected {tuple(want[path].shape)}, found {tuple(have[path].shape)}"
        for path in want
        if path in have and tuple(want[path].shape) != tuple(have[path].shape)
    ]
    if not allow_missing:
        problems += [f"  {path}: expected {tuple(want[path].shape)}, missing" for path in want if path not in have]
    if not allow_unused:
        problems += [f"  {path}: unexpected, found {tuple(have[path].shape)}" for path in have if path not in want]
    if problems:
        raise JftError(
            f"{what} does not fit the model ({len(problems)} problems):\n" + "\n".join(problems) + "\n"
            "Use a model config with the checkpoint's sizes (its config.json), or a checkpoint made for this model."
        )


def merge(target: Params, loaded: Params) -> tuple[dict[str, Any], MergeReport]:
    """Takes every array of `target` that `loaded` has (shapes must agree), keeps the rest as is.

    target: the freshly initialised parameters of the model to run; loaded: weights from a file.
    Returns the merged tree and a report of what was loaded, created new and left unused.
    """
    check_shapes(target, loaded, what="the loaded checkpoint", allow_missing=True, allow_unused=True)
    want, have = flatten(target), flatten(loaded)
    merged = {path: have.get(path, value) for path, value in want.items()}
    report = MergeReport(
        loaded=[p for p in want if p in have],
        created=[p for p in want if p not in have],
        unused=[p for p in have if p not in want],
    )
    return unflatten(merged), report


def subtree(params: Params, paths: list[str]) -> dict[str, Any]:
    """The leaves of params at paths ('bert/encoder/...'), as NumPy arrays, in a tree of their own."""
    flat = flatten(params)
    return unflatten({path: np.asarray(flat[path]) for path in paths})


def key_path(keys) -> str:
    """'bert/encoder/...': the path of a leaf from jax.tree_util.tree_flatten_with_path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


def check_finite(tree: Params, what: str, counts: dict[str, tuple[int, int]] | None = None) -> None:
    """A JftError naming each array of tree (up to 5) that holds NaN or infinity.

    counts: {path: (values not finite, values)} when already known (jft.checkpoint counts them
    where the arrays are); by default counted here, on the host."""
    if counts is None:
        counts = {}
        for keys, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
            value = np.asarray(value)
            if np.issubdtype(value.dtype, np.floating):
                counts[key_path(keys)] = (int(value.size - np.isfinite(value).sum()), int(value.size))
    bad = [f"{path} ({count:,} of {size:,} values)" for path, (count, size) in counts.items() if count]
    if bad:
        raise JftError(
            f"{what} holds weights that are not finite (NaN or infinity): {first_few(bad)}; "
            "such a model computes nothing useful. Use an earlier checkpoint or other weights."
        )

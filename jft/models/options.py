"""What every family's config shares: jft's own fields (compute dtype, attention kernel, remat,
layer loop, vocabulary padding), their meanings and checks, and building a config from a mapping
or a named size. A family's config is a frozen dataclass with those fields that inherits
ConfigOptions and names its sizes in `presets`."""

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jft.errors import JftError, choices, did_you_mean

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLS = ("xla", "cudnn", "splash")
REMAT = ("none", "dots", "full")
# The attention kernels that run on one platform only.
KERNEL_PLATFORMS = {"cudnn": "gpu", "splash": "tpu"}
# jft's own fields, the same in every family (after the Hugging Face ones), and how the same
# function is computed: they may change even when a run resumes (all but param_dtype).
JFT_FIELDS = ("dtype", "param_dtype", "attention_impl", "remat", "scan_layers", "vocab_multiple")
COMPUTE_FIELDS = ("dtype", "attention_impl", "remat", "scan_layers", "vocab_multiple")
JFT_FIELD_MEANINGS = {
    "dtype": "compute dtype: float32, bfloat16, float16 or auto (bf16 on GPU/TPU); may change on resume",
    "param_dtype": "dtype of the weights (keep float32)",
    "attention_impl": "xla; cudnn (fused GPU kernel) or splash (Pallas TPU kernel): no attention dropout",
    "remat": "recompute in the backward pass: none (no matmul twice), dots (attention's too), full (least kept)",
    "scan_layers": "layers as one loop (compiles fast at any depth); false: unrolled (same weights)",
}


class ConfigOptions:
    """The methods every family's config shares (see the module docstring)."""

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def option_problems(self, attention_dropout: str) -> list[str]:
        """What is wrong with jft's own fields; attention_dropout: the name of the family's
        attention dropout field, which the fused kernels cannot apply."""
        problems = []
        if self.dtype not in (*DTYPES, "auto"):
            problems.append(f"dtype '{self.dtype}' is not one of {choices((*DTYPES, 'auto'))}")
        if self.param_dtype not in DTYPES:
            problems.append(f"param_dtype '{self.param_dtype}' is not one of {choices(DTYPES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            problems.append(f"attention_impl '{self.attention_impl}' is not one of {choices(ATTENTION_IMPLS)}")
        if self.remat not in REMAT:
            problems.append(f"remat '{self.remat}' is not one of {choices(REMAT)}")
        if self.attention_impl in KERNEL_PLATFORMS and getattr(self, attention_dropout) != 0:  # fused: no dropout
            problems.append(
                f"attention_impl '{self.attention_impl}' has no attention dropout: set {attention_dropout}=0 "
                "to use it, or attention_impl='xla' to keep the dropout"
            )
        if self.attention_impl == "cudnn" and self.dtype == "float32":
            problems.append("attention_impl 'cudnn' needs dtype 'bfloat16' or 'float16' (or 'auto' on a GPU)")
        return problems

    def platform_problem(self, platform: str) -> str | None:
        """Why this config's attention kernel cannot run on `platform` ('cpu', 'gpu', 'tpu'), or None."""
        needs = KERNEL_PLATFORMS.get(self.attention_impl)
        if needs is None or needs == platform:
            return None
        return (
            f"attention_impl '{self.attention_impl}' is a {needs.upper()} kernel and this is {platform} "
            "(--config.model.attention_impl=xla runs anywhere)"
        )

    @property
    def padded_vocab_size(self) -> int:
        """vocab_size rounded up to a multiple of vocab_multiple: the output matmul's width."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The dtype activations are computed in; 'auto' is bfloat16 on GPU/TPU, float32 on CPU."""
        if self.dtype == "auto":
            return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
        return DTYPES[self.dtype]

    @property
    def params_dtype(self) -> jnp.dtype:
        return DTYPES[self.param_dtype]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Builds a config from a mapping; an unknown key is an error naming the closest field."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise JftError(f"unknown model config key '{key}'.{did_you_mean(key, names)}")
        return cls(**dict(values))

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A named size (one of `presets`) with optional field overrides."""
        if name not in cls.presets:
            raise JftError(f"unknown model size '{name}'; choose one of {choices(sorted(cls.presets))}.")
        return cls.from_dict({**cls.presets[name], **overrides})

    def hf_fields(self) -> dict[str, Any]:
        """The fields of this config that are Hugging Face's (jft's own, the last ones, left out)."""
        values = dataclasses.asdict(self)
        return {name: value for name, value in values.items() if name not in JFT_FIELDS}


def type_problems(config) -> list[str]:
    """'field must be an integer, got '384'' for every field of the wrong type (None where the
    field's default is None)."""
    problems = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kinds = typing.get_args(field.type) or (field.type,)  # int | None: int
        kind = next(k for k in kinds if k is not type(None))
        if value is None and field.default is None:
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{field.name} must be an integer, got {value!r}")
        elif kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(f"{field.name} must be a number, got {value!r}")
        elif kind is bool and not isinstance(value, bool):
            problems.append(f"{field.name} must be true or false, got {value!r}")
        elif kind is str and not isinstance(value, str):
            problems.append(f"{field.name} must be a string, got {value!r}")
    return problems

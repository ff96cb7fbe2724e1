"""ResNetConfig: the fields of Hugging Face's ResNetConfig plus jft's image size, normalisation,
BatchNorm mode and precision.

ResNet (He et al., 2016): a 7×7 stem, then stages of residual layers, basic (two 3×3 convolutions)
or bottleneck (1×1 down to a quarter, 3×3, 1×1 up), each convolution followed by BatchNorm; the
first layer of every stage but the first halves the resolution. An image model reads pixels, not
tokens: `image_size` is the side it is trained and evaluated at, `image_mean`/`image_std` the
normalisation its pixels get (ImageNet's by default, as Hugging Face's processors).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from jft.errors import JftError
from jft.models.options import DTYPES, ConfigOptions, type_problems

LAYER_TYPES = ("basic", "bottleneck")
# jft's own fields: what the image looks like to the model, how BatchNorm trains, the precision.
JFT_FIELDS = ("image_size", "image_mean", "image_std", "freeze_batch_norm", "dtype", "param_dtype")
COMPUTE_FIELDS = ("dtype",)
# What a run may set differently from its checkpoint: the image side, the BatchNorm mode, the precision.
CHANGEABLE_FIELDS = ("image_size", "freeze_batch_norm", "dtype")
SIZE_FIELDS = ("embedding_size", "hidden_sizes", "depths", "layer_type")

FIELD_MEANINGS = {
    "num_channels": "channels of the input images (3: RGB)",
    "embedding_size": "channels of the 7×7 stem",
    "hidden_sizes": "channels each stage outputs (a list, one a stage)",
    "depths": "residual layers a stage (a list, one a stage)",
    "layer_type": "basic (ResNet-18/34) or bottleneck (ResNet-50 and deeper)",
    "hidden_act": "activation (relu)",
    "downsample_in_first_stage": "the first stage halves the resolution too",
    "downsample_in_bottleneck": "a bottleneck strides in its first 1×1 convolution (else in the 3×3)",
    "image_size": "side of the square images the model trains and predicts on (pixels)",
    "image_mean": "per-channel mean subtracted from pixels in [0, 1] (ImageNet's)",
    "image_std": "per-channel standard deviation pixels are divided by (ImageNet's)",
    "freeze_batch_norm": "BatchNorm uses its running statistics in training too (small-batch fine-tuning)",
    "dtype": "compute dtype: float32, bfloat16 or auto (bf16 on GPU/TPU); may change on resume",
    "param_dtype": "dtype of the weights (keep float32)",
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(embedding_size=16, hidden_sizes=(16, 32), depths=(1, 1), layer_type="basic", image_size=32),
    "resnet18": dict(embedding_size=64, hidden_sizes=(64, 128, 256, 512), depths=(2, 2, 2, 2), layer_type="basic"),
    "resnet34": dict(embedding_size=64, hidden_sizes=(64, 128, 256, 512), depths=(3, 4, 6, 3), layer_type="basic"),
    "resnet50": dict(embedding_size=64, hidden_sizes=(256, 512, 1024, 2048), depths=(3, 4, 6, 3)),
    "resnet101": dict(embedding_size=64, hidden_sizes=(256, 512, 1024, 2048), depths=(3, 4, 23, 3)),
}


@dataclasses.dataclass(frozen=True)
class ResNetConfig(ConfigOptions):
    """Model hyper-parameters. Field names and defaults follow transformers.ResNetConfig (ResNet-50)."""

    presets = PRESETS

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple = (256, 512, 1024, 2048)
    depths: tuple = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    # jft's own fields.
    image_size: int = 224
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    freeze_batch_norm: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("hidden_sizes", "depths", "image_mean", "image_std"):  # JSON gives lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = type_problems(self)
        for name in ("hidden_sizes", "depths"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values or not all(_count(v) for v in values):
                problems.append(f"{name} must be a list of positive integers, got {values!r}")
        if not problems and len(self.hidden_sizes) != len(self.depths):
            problems.append(f"hidden_sizes {list(self.hidden_sizes)} and depths {list(self.depths)} differ in length")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != self.num_channels:
                problems.append(f"{name} must hold one number a channel ({self.num_channels}), got {values!r}")
        if isinstance(self.image_std, tuple) and any(not s > 0 for s in self.image_std):
            problems.append(f"image_std must be positive, got {self.image_std!r}")
        for name in ("num_channels", "embedding_size", "image_size"):
            if _count(getattr(self, name)) is False:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.layer_type not in LAYER_TYPES:
            problems.append(f"layer_type '{self.layer_type}' is not one of {LAYER_TYPES}")
        if self.hidden_act != "relu":
            problems.append(f"hidden_act '{self.hidden_act}' is not relu, the one jft's ResNet has")
        if self.layer_type == "bottleneck" and any(isinstance(h, int) and h % 4 for h in self.hidden_sizes or ()):
            problems.append(f"a bottleneck's hidden_sizes are multiples of 4, got {list(self.hidden_sizes)}")
        if self.dtype not in (*DTYPES, "auto"):
            problems.append(f"dtype '{self.dtype}' is not one of {(*DTYPES, 'auto')}")
        if self.param_dtype not in DTYPES:
            problems.append(f"param_dtype '{self.param_dtype}' is not one of {tuple(DTYPES)}")
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")

    @property
    def max_length(self) -> int:
        """What a text family's position table bounds; an image model has no sequence: 0."""
        return 0

    @property
    def features(self) -> int:
        """Channels of the pooled output the head reads."""
        return self.hidden_sizes[-1]

    def platform_problem(self, platform: str) -> str | None:
        """None: a ResNet runs on any platform."""
        del platform
        return None

    def hf_fields(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        out = {name: value for name, value in values.items() if name not in JFT_FIELDS}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in out.items()}

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], source: str = "config.json") -> "ResNetConfig":
        """Reads the fields jft uses from a Hugging Face config.json mapping; the sizes must be there."""
        model_type = hf_config.get("model_type")
        if model_type != "resnet":
            raise JftError(f"{source} describes a '{model_type}' model, not one of ('resnet',).")
        missing = [name for name in ("hidden_sizes", "depths") if name not in hf_config]
        if missing:
            raise JftError(
                f"{source} lacks {', '.join(missing)}; jft does not guess a model's sizes. Use the config.json "
                "that came with the weights."
            )
        hf_names = [f.name for f in dataclasses.fields(cls) if f.name not in JFT_FIELDS]
        values = {name: hf_config[name] for name in hf_names if name in hf_config}
        try:
            return cls(**values)
        except JftError as error:
            raise JftError(f"{source}: {error}") from None

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config.json fields of this config (jft's own fields left out)."""
        return {"model_type": "resnet", **self.hf_fields()}


def _count(value) -> bool:
    """Whether value is a positive integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1

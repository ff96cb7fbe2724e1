"""ResNetConfig: the fields of Hugging Face's ResNetConfig plus jft's image size, normalisation,
BatchNorm mode and precision.

ResNet (He et al., 2016): a 7×7 stem, then stages of residual layers, basic (two 3×3 convolutions)
or bottleneck (1×1 down to a quarter, 3×3, 1×1 up), each convolution followed by BatchNorm; the
first layer of every stage but the first halves the resolution. An image model reads pixels, not
tokens: `image_size` is the side it is trained and evaluated at, `image_mean`/`image_std` the
normalisation its pixels get (ImageNet's by default, as Hugging Face's processors).
"""

import dataclasses
from typing import Any

from jft.errors import JftError, choices
from jft.models.image_options import (
    IMAGE_FIELD_MEANINGS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageOptions,
    is_count,
)

LAYER_TYPES = ("basic", "bottleneck")
SIZE_FIELDS = ("embedding_size", "hidden_sizes", "depths", "layer_type")

FIELD_MEANINGS = {
    "embedding_size": "channels of the 7×7 stem",
    "hidden_sizes": "channels each stage outputs (a list, one a stage)",
    "depths": "residual layers a stage (a list, one a stage)",
    "layer_type": "basic (ResNet-18/34) or bottleneck (ResNet-50 and deeper)",
    "hidden_act": "activation (relu)",
    "downsample_in_first_stage": "the first stage halves the resolution too",
    "downsample_in_bottleneck": "a bottleneck strides in its first 1×1 convolution (else in the 3×3)",
    **IMAGE_FIELD_MEANINGS,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(embedding_size=16, hidden_sizes=(16, 32), depths=(1, 1), layer_type="basic", image_size=32),
    "resnet18": dict(embedding_size=64, hidden_sizes=(64, 128, 256, 512), depths=(2, 2, 2, 2), layer_type="basic"),
    "resnet34": dict(embedding_size=64, hidden_sizes=(64, 128, 256, 512), depths=(3, 4, 6, 3), layer_type="basic"),
    "resnet50": dict(
        embedding_size=64, hidden_sizes=(256, 512, 1024, 2048), depths=(3, 4, 6, 3), layer_type="bottleneck"
    ),
    "resnet101": dict(
        embedding_size=64, hidden_sizes=(256, 512, 1024, 2048), depths=(3, 4, 23, 3), layer_type="bottleneck"
    ),
}


@dataclasses.dataclass(frozen=True)
class ResNetConfig(ImageOptions):
    """Model hyper-parameters. Field names and defaults follow transformers.ResNetConfig (ResNet-50)."""

    presets = PRESETS
    model_type = "resnet"
    size_fields = ("hidden_sizes", "depths")

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple = (256, 512, 1024, 2048)
    depths: tuple = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    # jft's own fields (IMAGE_FIELDS).
    image_size: int = 224
    image_mean: tuple = IMAGENET_MEAN
    image_std: tuple = IMAGENET_STD
    freeze_batch_norm: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        self.as_tuples("hidden_sizes", "depths")
        problems = self.problems()
        if is_count(self.embedding_size) is False:
            problems.append(f"embedding_size must be at least 1, got {self.embedding_size!r}")
        if self.layer_type not in LAYER_TYPES:
            problems.append(f"layer_type '{self.layer_type}' is not one of {choices(LAYER_TYPES)}")
        if self.hidden_act != "relu":
            problems.append(f"hidden_act '{self.hidden_act}' is not relu, the one jft's ResNet has")
        if self.layer_type == "bottleneck" and any(isinstance(h, int) and h % 4 for h in self.hidden_sizes or ()):
            problems.append(f"a bottleneck's hidden_sizes are multiples of 4, got {list(self.hidden_sizes)}")
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")

    @property
    def features(self) -> int:
        """Channels of the pooled output the head reads."""
        return self.hidden_sizes[-1]

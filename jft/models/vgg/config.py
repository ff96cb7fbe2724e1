"""VGGConfig: VGG as torchvision defines it (Simonyan and Zisserman, 2015), with or without
BatchNorm, plus jft's image size, normalisation, BatchNorm mode and precision.

VGG: stages of 3×3 convolutions (padding 1, bias), each followed by BatchNorm when batch_norm, and
ReLU, every stage ending in a 2×2 max-pool; then an adaptive average pool to pool_size × pool_size,
and two hidden linear layers of hidden_size with ReLU and dropout before the classifier.
torchvision's cfgs "A", "B", "D", "E" are the presets vgg11, vgg13, vgg16, vgg19 (one stage a run
of convolutions up to an "M"); torchvision's VGG class itself has pool_size 7, hidden_size 4096
and 512 channels last, which its own checkpoints need.
"""

import dataclasses
from typing import Any

from jft.errors import JftError
from jft.models.image_options import (
    IMAGE_FIELD_MEANINGS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageOptions,
    is_count,
)

SIZE_FIELDS = ("hidden_sizes", "depths", "batch_norm", "hidden_size", "pool_size")

FIELD_MEANINGS = {
    "hidden_sizes": "channels of each stage's convolutions (a list, one a stage)",
    "depths": "3×3 convolutions a stage, each stage ending in a 2×2 max-pool (a list, one a stage)",
    "batch_norm": "BatchNorm after every convolution (torchvision's vgg16_bn)",
    "hidden_size": "width of the two hidden linear layers before the classifier (4096)",
    "pool_size": "side the last feature map is average-pooled to, adaptively (7)",
    "dropout": "dropout after each hidden linear layer",
    **IMAGE_FIELD_MEANINGS,
}

_WIDTHS = (64, 128, 256, 512, 512)
_DEPTHS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_HEAD = dict(hidden_size=4096, pool_size=7)  # torchvision's
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_sizes=(8, 16, 32), depths=(1, 1, 2), batch_norm=True, hidden_size=64, pool_size=2, image_size=32
    ),
    **{name: dict(hidden_sizes=_WIDTHS, depths=depths, batch_norm=False, **_HEAD) for name, depths in _DEPTHS.items()},
    **{
        f"{name}_bn": dict(hidden_sizes=_WIDTHS, depths=depths, batch_norm=True, **_HEAD)
        for name, depths in _DEPTHS.items()
    },
}


@dataclasses.dataclass(frozen=True)
class VGGConfig(ImageOptions):
    """Model hyper-parameters; the defaults are torchvision's vgg16."""

    presets = PRESETS
    model_type = "vgg"
    size_fields = ("hidden_sizes", "depths", "batch_norm")

    num_channels: int = 3
    hidden_sizes: tuple = _WIDTHS
    depths: tuple = _DEPTHS["vgg16"]
    batch_norm: bool = False
    hidden_size: int = 4096
    pool_size: int = 7
    dropout: float = 0.5
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
        for name in ("hidden_size", "pool_size"):
            if is_count(getattr(self, name)) is False:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if isinstance(self.dropout, int | float) and not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not problems and self.image_size < 2 ** len(self.depths):
            problems.append(
                f"image_size {self.image_size} is smaller than the {2 ** len(self.depths)} pixels {len(self.depths)} "
                "max-pools of 2 need"
            )
        if problems:
            raise JftError("invalid model config: " + "; ".join(problems) + ".")

    @property
    def features(self) -> int:
        """Width of the hidden layer the classifier reads."""
        return self.hidden_size

    @property
    def torchvision_name(self) -> str | None:
        """torchvision's constructor of this architecture (vgg16_bn, ...), None for another size."""
        if (self.hidden_sizes, self.hidden_size, self.pool_size, self.num_channels) != (_WIDTHS, 4096, 7, 3):
            return None
        name = next((name for name, depths in _DEPTHS.items() if depths == self.depths), None)
        return name and name + ("_bn" if self.batch_norm else "")

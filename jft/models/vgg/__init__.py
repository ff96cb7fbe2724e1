"""VGG behind jft's model interface: its config, Flax modules, torchvision names and FLOPs."""

from jft.models.image_options import image_family
from jft.models.vgg.config import FIELD_MEANINGS, SIZE_FIELDS, VGGConfig
from jft.models.vgg.modules import (
    VGGModel,
    adaptive_average_pool,
    build,
)
from jft.models.vgg.weights import architecture, head_of, loaded_by, weights_from_hf, weights_to_hf


def flops(cfg: VGGConfig, batch: int, image_size: int, *, num_labels: int = 0, **_) -> float:
    """Training FLOPs of one step: 3 × the forward FLOPs of the convolutions (2·9·c_in·c_out per
    output pixel) and the linear layers (2·in·out per image), backward = 2 × forward. BatchNorm,
    ReLU, pooling, the augmentation and the optimizer are left out (under 1%)."""
    forward, side, channels = 0, image_size, cfg.num_channels
    for width, depth in zip(cfg.hidden_sizes, cfg.depths):
        for _ in range(depth):
            forward += 2 * 9 * channels * width * side * side
            channels = width
        side //= 2
    widths = [channels * cfg.pool_size**2, cfg.hidden_size, cfg.hidden_size, num_labels]
    forward += sum(2 * a * b for a, b in zip(widths, widths[1:]))
    return 3.0 * batch * forward


FAMILY = image_family(
    "vgg",
    VGGConfig,
    SIZE_FIELDS,
    FIELD_MEANINGS,
    module=build,
    head_of=head_of,
    architecture=architecture,
    weights_from_hf=weights_from_hf,
    weights_to_hf=weights_to_hf,
    flops=flops,
    loaded_by=loaded_by,
)

__all__ = [
    "FAMILY",
    "VGGConfig",
    "VGGModel",
    "adaptive_average_pool",
    "build",
    "flops",
]

"""ResNet behind jft's model interface: its config, Flax modules, Hugging Face names and FLOPs."""

from jft.models.image_options import image_family
from jft.models.resnet.config import FIELD_MEANINGS, SIZE_FIELDS, ResNetConfig
from jft.models.resnet.modules import (
    ResNetModel,
    build,
)
from jft.models.resnet.weights import architecture, head_of, weights_from_hf, weights_to_hf


def conv_shapes(cfg: ResNetConfig, image_size: int) -> list[tuple[int, int, int, int]]:
    """(kernel, in channels, out channels, output side) of every convolution of the backbone, in order."""

    def out(side: int, kernel: int, stride: int) -> int:
        return (side + 2 * (kernel // 2) - kernel) // stride + 1

    side = out(image_size, 7, 2)
    shapes = [(7, cfg.num_channels, cfg.embedding_size, side)]
    side, channels = out(side, 3, 2), cfg.embedding_size  # the stem's max-pool
    for stage, (width, depth) in enumerate(zip(cfg.hidden_sizes, cfg.depths)):
        for index in range(depth):
            stride = (2 if stage or cfg.downsample_in_first_stage else 1) if index == 0 else 1
            if channels != width or stride != 1:
                shapes.append((1, channels, width, out(side, 1, stride)))
            if cfg.layer_type == "basic":
                layers = [(3, channels, width, stride), (3, width, width, 1)]
            else:
                first, middle = (stride, 1) if cfg.downsample_in_bottleneck else (1, stride)
                layers = [
                    (1, channels, width // 4, first),
                    (3, width // 4, width // 4, middle),
                    (1, width // 4, width, 1),
                ]
            for kernel, cin, cout, layer_stride in layers:
                side = out(side, kernel, layer_stride)
                shapes.append((kernel, cin, cout, side))
            channels = width
    return shapes


def flops(cfg: ResNetConfig, batch: int, image_size: int, *, num_labels: int = 0, **_) -> float:
    """Training FLOPs of one step: 3 × the forward FLOPs of the convolutions and the classifier
    (2·k²·c_in·c_out per output pixel; 2·c·num_labels per image), backward = 2 × forward. BatchNorm,
    ReLU, pooling, the augmentation and the optimizer are left out (about 1%)."""
    forward = sum(2 * k * k * cin * cout * side * side for k, cin, cout, side in conv_shapes(cfg, image_size))
    forward += 2 * cfg.features * num_labels
    return 3.0 * batch * forward


FAMILY = image_family(
    "resnet",
    ResNetConfig,
    SIZE_FIELDS,
    FIELD_MEANINGS,
    module=build,
    head_of=head_of,
    architecture=architecture,
    weights_from_hf=weights_from_hf,
    weights_to_hf=weights_to_hf,
    flops=flops,
)

__all__ = [
    "FAMILY",
    "ResNetConfig",
    "ResNetModel",
    "build",
    "conv_shapes",
    "flops",
]

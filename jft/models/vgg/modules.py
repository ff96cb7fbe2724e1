"""VGG in Flax, laid out as torchvision's (NHWC inside).

Parameter paths follow torchvision's state-dict names with the Sequential's index in the module
name: vgg/features_0/kernel is features.0.weight (a convolution), vgg/features_1/scale is
features.1.weight (its BatchNorm), vgg/classifier_0 and vgg/classifier_3 are the hidden linear
layers classifier.0 and classifier.3, and the task's head `classifier` is classifier.6. The
BatchNorm statistics are under STATS at the same paths (jft.models.batch_norm).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jft.errors import JftError
from jft.models.batch_norm import BatchNorm
from jft.models.family import Head
from jft.models.image_model import ImageModel
from jft.models.layers import Dropout
from jft.models.vgg.config import VGGConfig

# torchvision's init: convolutions He normal over the outputs, linear layers N(0, 0.01), biases 0.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
DENSE_INIT = nn.initializers.normal(0.01)


def adaptive_average_pool(x: jax.Array, side: int) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d(side) of x [batch, h, w, c]: output row i averages input rows
    floor(i·h/side) to ceil((i+1)·h/side), and the same for columns (a copy of the input when it
    is smaller than side)."""

    def weights(size: int) -> np.ndarray:
        matrix = np.zeros((side, size), np.float32)
        for i in range(side):
            start, end = (i * size) // side, -(-(i + 1) * size // side)
            matrix[i, start:end] = 1 / (end - start)
        return matrix

    rows, columns = weights(x.shape[1]), weights(x.shape[2])
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, columns).astype(x.dtype)


class VGGModel(nn.Module):
    """The convolutional stages, the adaptive pool and the two hidden linear layers.
    Returns {"hidden": the last feature map [batch, h, w, channels], "pooled": [batch, hidden_size]}."""

    config: VGGConfig
    axis_name: str | None = None

    @nn.compact
    def __call__(self, pixel_values, train: bool, mask=None, deterministic: bool = True):
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != cfg.num_channels:
            raise JftError(
                f"a VGG takes images [batch, height, width, {cfg.num_channels}], got {tuple(pixel_values.shape)}."
            )
        x, index = pixel_values.astype(cfg.compute_dtype), 0
        dtypes = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
        for width, depth in zip(cfg.hidden_sizes, cfg.depths):
            for _ in range(depth):
                x = nn.Conv(
                    width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=CONV_INIT, name=f"features_{index}", **dtypes
                )(x)
                index += 1
                if cfg.batch_norm:
                    norm = BatchNorm(axis_name=self.axis_name, param_dtype=cfg.params_dtype, name=f"features_{index}")
                    x, index = norm(x, train, mask), index + 1
                x, index = nn.relu(x), index + 1
            x, index = nn.max_pool(x, (2, 2), (2, 2)), index + 1
        hidden = x
        x = adaptive_average_pool(x, cfg.pool_size)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch.flatten's order: channels, rows, columns
        for index in (0, 3):
            x = nn.Dense(cfg.hidden_size, kernel_init=DENSE_INIT, name=f"classifier_{index}", **dtypes)(x)
            x = Dropout(cfg.dropout)(nn.relu(x), deterministic=deterministic)
        return {"hidden": hidden, "pooled": x.astype(jnp.float32)}


def build(config: VGGConfig, head: Head) -> nn.Module:
    """The module of a VGG with `head` (jft.models.image_model.ImageModel): classification (a
    task's, or supervised pretraining's classes) or the backbone alone."""
    if head.kind not in ("classification", "encoder", "pretraining"):
        raise JftError(f"a VGG has no {head.kind} head; it classifies images (task classification).")
    labels = (head.num_labels, head.joint_labels) if head.kind == "classification" else (0, 0)
    return ImageModel(VGGModel, "vgg", config, DENSE_INIT, *labels)

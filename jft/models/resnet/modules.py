"""ResNet in Flax, laid out as Hugging Face's ResNetForImageClassification (NHWC inside).

Parameter paths follow the PyTorch names with '/' for '.': resnet/embedder/embedder/convolution,
resnet/encoder/stages/0/layers/0/layer/1/normalization, ..., classifier; the BatchNorm statistics
live in the "batch_stats" collection under the same paths (mean, var). jft keeps that collection
in the train state's parameter tree under STATS (see jft.models.batch_norm), so that checkpoints,
best/, init_from, sweeps and export carry it like any weight.
"""

import flax.linen as nn
import jax.numpy as jnp

from jft.errors import JftError
from jft.models.batch_norm import BatchNorm
from jft.models.family import Head
from jft.models.image_model import ImageModel
from jft.models.resnet.config import ResNetConfig

# PyTorch's (and Hugging Face's) convolution init: He normal over the outputs.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# nn.Linear's: uniform in ±1/√fan_in.
DENSE_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class ConvLayer(nn.Module):
    """Convolution (no bias, 'same' padding as PyTorch's k // 2), BatchNorm, and ReLU unless last."""

    config: ResNetConfig
    features: int
    kernel: int = 3
    stride: int = 1
    activation: bool = True
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        cfg, pad = self.config, self.kernel // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            (self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            kernel_init=CONV_INIT,
            name="convolution",
        )(x)
        x = BatchNorm(axis_name=self.axis_name, param_dtype=cfg.params_dtype, name="normalization")(x, train, mask)
        return nn.relu(x) if self.activation else x


class ResidualLayer(nn.Module):
    """A basic layer (two 3×3 convolutions) or a bottleneck (1×1 to a quarter, 3×3, 1×1 back),
    added to its input, projected by a 1×1 shortcut where the channels or the stride change."""

    config: ResNetConfig
    in_channels: int
    out_channels: int
    stride: int = 1
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        cfg, out, stride = self.config, self.out_channels, self.stride
        conv = dict(config=cfg, axis_name=self.axis_name)
        residual = x
        if self.in_channels != out or stride != 1:
            residual = ConvLayer(features=out, kernel=1, stride=stride, activation=False, name="shortcut", **conv)(
                x, train, mask
            )
        if cfg.layer_type == "basic":
            shapes = [(out, 3, stride, True), (out, 3, 1, False)]
        else:
            first, middle = (stride, 1) if cfg.downsample_in_bottleneck else (1, stride)
            shapes = [(out // 4, 1, first, True), (out // 4, 3, middle, True), (out, 1, 1, False)]
        for index, (features, kernel, layer_stride, activation) in enumerate(shapes):
            x = ConvLayer(
                features=features,
                kernel=kernel,
                stride=layer_stride,
                activation=activation,
                name=f"layer_{index}",
                **conv,
            )(x, train, mask)
        return nn.relu(x + residual)


class ResNetModel(nn.Module):
    """The backbone: stem (7×7 stride 2, 3×3 max-pool stride 2), the stages, global average pooling.
    Returns {"hidden": the last feature map [batch, h, w, channels], "pooled": [batch, channels]}."""

    config: ResNetConfig
    axis_name: str | None = None

    @nn.compact
    def __call__(self, pixel_values, train: bool, mask=None, deterministic: bool = True):
        """deterministic: unused (a ResNet has no dropout); ImageModel passes it to every backbone."""
        cfg = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != cfg.num_channels:
            raise JftError(
                f"a ResNet takes images [batch, height, width, {cfg.num_channels}], got {tuple(pixel_values.shape)}."
            )
        x = pixel_values.astype(cfg.compute_dtype)
        x = ConvLayer(cfg, cfg.embedding_size, kernel=7, stride=2, axis_name=self.axis_name, name="embedder")(
            x, train, mask
        )
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        channels = cfg.embedding_size
        for stage, (width, depth) in enumerate(zip(cfg.hidden_sizes, cfg.depths)):
            stride = 2 if stage or cfg.downsample_in_first_stage else 1
            for index in range(depth):
                x = ResidualLayer(
                    cfg,
                    channels if index == 0 else width,
                    width,
                    stride if index == 0 else 1,
                    self.axis_name,
                    name=f"stages_{stage}_layers_{index}",
                )(x, train, mask)
            channels = width
        return {"hidden": x, "pooled": x.astype(jnp.float32).mean((1, 2))}


def build(config: ResNetConfig, head: Head) -> nn.Module:
    """The module of a ResNet with `head` (jft.models.image_model.ImageModel): classification (a
    task's, or supervised pretraining's classes) or the backbone alone."""
    if head.kind not in ("classification", "encoder", "pretraining"):
        raise JftError(f"a ResNet has no {head.kind} head; it classifies images (task classification).")
    labels = (head.num_labels, head.joint_labels) if head.kind == "classification" else (0, 0)
    return ImageModel(ResNetModel, "resnet", config, DENSE_INIT, *labels)

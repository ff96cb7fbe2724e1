"""An image family's model: its backbone, and the classifiers on its pooled features.

Every image family (ResNet, VGG) builds its modules from ImageModel with its own backbone, the
name its parameters live under ("resnet", "vgg") and its linear layers' init, so the task's head,
the joint objective's head and the BatchNorm mode are decided in one place.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jft.models.batch_norm import trains_statistics


class ImageModel(nn.Module):
    """The backbone (`backbone(config, axis_name, name=backbone_name)`, called with pixel_values, whether
    BatchNorm trains, the row mask and deterministic; it returns {"hidden", "pooled"}) and, with
    num_labels, a linear `classifier` on the pooled features: {"logits": [batch, num_labels]}, and
    with joint_labels a second one, `joint_classifier` ({"joint_logits"}: the pretraining classes'
    head the joint objective trains beside the task's). Without num_labels: the backbone's outputs.

    Inputs: pixel_values [batch, height, width, channels], normalised floats; row_mask [batch]
    (False: a row that only fills the batch, left out of BatchNorm's statistics). deterministic:
    inference (BatchNorm's running statistics, no dropout); else training (the batch's statistics,
    over every device of axis_name, and the running ones updated), unless config.freeze_batch_norm."""

    backbone: Callable[..., nn.Module]
    backbone_name: str  # the parameters' top-level name: "resnet", "vgg"
    config: Any
    dense_init: Callable
    num_labels: int = 0
    joint_labels: int = 0
    axis_name: str | None = None

    @nn.compact
    def __call__(self, pixel_values, row_mask=None, deterministic: bool = True):
        train, mask = trains_statistics(self.config, deterministic, row_mask)
        backbone = self.backbone(self.config, self.axis_name, name=self.backbone_name)
        out = backbone(pixel_values, train, mask, deterministic)
        if not self.num_labels:
            return out
        heads = {}
        for name, key, labels in (
            ("classifier", "logits", self.num_labels),
            ("joint_classifier", "joint_logits", self.joint_labels),
        ):
            if labels:
                dense = nn.Dense(labels, kernel_init=self.dense_init, param_dtype=self.config.params_dtype, name=name)
                heads[key] = dense(out["pooled"]).astype(jnp.float32)
        return heads

"""Images into a model's inputs, on the device inside the step: random resized crop and horizontal
flip in training, then the model's normalisation.

Each image's randomness is the step's key folded with the image's row in the global batch, so a
batch is augmented the same on any number of devices, and every step differently. Images arrive
as uint8 [rows, side, side, channels] (jft.data.images); the crop is resized back to side × side
by linear interpolation (jax.image.scale_and_translate, antialiased when it shrinks).
"""

import dataclasses

import jax
import jax.numpy as jnp

# mixup's draws: the step's key folded with this (the crops fold in rows, counted from 0)
MIXUP_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ImageInputs:
    """How a step turns a batch's uint8 images into the model's pixel_values.

    side: the model's image side; mean, std: per channel, on pixels in [0, 1]; augment: random
    resized crop (area a fraction in crop_scale of the image, aspect ratio in crop_ratio) and a
    horizontal flip with probability 1/2 when training, nothing when off or predicting."""

    side: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    mixup: float = 0.0  # mixup's α: each pair of neighbouring rows mixed with Beta(α, α) weights; 0: off

    @classmethod
    def of(cls, model_config, augment: bool = True, min_crop: float = 0.08, mixup: float = 0.0) -> "ImageInputs":
        mean, std = model_config.image_mean, model_config.image_std
        return cls(model_config.image_size, mean, std, augment, (min_crop, 1.0), mixup=mixup)


def random_resized_crop(spec: ImageInputs, image: jax.Array, key: jax.Array) -> jax.Array:
    """One image [side, side, c] (float) cropped at random and resized back to spec.side (and flipped)."""
    side = image.shape[0]
    area_key, ratio_key, y_key, x_key, flip_key = jax.random.split(key, 5)
    area = jax.random.uniform(area_key, (), minval=spec.crop_scale[0], maxval=spec.crop_scale[1]) * side * side
    log_ratio = jax.random.uniform(
        ratio_key, (), minval=jnp.log(spec.crop_ratio[0]), maxval=jnp.log(spec.crop_ratio[1])
    )
    ratio = jnp.exp(log_ratio)
    width = jnp.clip(jnp.sqrt(area * ratio), 1.0, side)
    height = jnp.clip(jnp.sqrt(area / ratio), 1.0, side)
    top = jax.random.uniform(y_key, ()) * (side - height)
    left = jax.random.uniform(x_key, ()) * (side - width)
    scale = jnp.stack([spec.side / height, spec.side / width])
    out = jax.image.scale_and_translate(
        image, (spec.side, spec.side, image.shape[-1]), (0, 1), scale, -jnp.stack([top, left]) * scale, "linear"
    )
    if spec.flip:
        out = jnp.where(jax.random.bernoulli(flip_key), out[:, ::-1], out)
    return out


def image_inputs(spec: ImageInputs, batch: dict, key: jax.Array | None, first_row) -> dict:
    """The batch with pixel_values the model's normalised floats and row_mask (the real rows); key:
    the step's augmentation key (None: predicting, no augmentation); first_row: this device's first
    row in the global batch."""
    images = batch["pixel_values"].astype(jnp.float32) / 255.0
    rows = first_row + jnp.arange(images.shape[0])
    if key is not None and spec.augment:
        keys = jax.vmap(lambda row: jax.random.fold_in(key, row))(rows)
        images = jax.vmap(lambda image, k: random_resized_crop(spec, image, k))(images, keys)
    if key is not None and spec.mixup:
        batch, images = mixup(spec.mixup, batch, images, jax.random.fold_in(key, MIXUP_STREAM), rows)
    mean, std = jnp.asarray(spec.mean, jnp.float32), jnp.asarray(spec.std, jnp.float32)
    return {**batch, "pixel_values": (images - mean) / std, "row_mask": batch["weights"] > 0}


def mixup(alpha: float, batch: dict, images: jax.Array, key: jax.Array, rows: jax.Array) -> tuple[dict, jax.Array]:
    """Mixup (Zhang et al., 2018) of neighbouring rows of the shuffled batch: global rows 2k and
    2k + 1 each become (1 − s) · themselves + s · the other, s = 1 − λ, λ ~ Beta(α, α) drawn for
    the pair from key and k, so pairs and weights do not depend on the devices (with an even
    number of rows a device). The batch gains mix_labels (the partner's) and mix_share (s); a row
    whose partner only fills the batch, or lies on another device, is not mixed."""
    count = images.shape[0]
    local = rows - rows[0]
    partner = local ^ 1
    here = partner < count
    partner = jnp.where(here, partner, local)
    lam = jax.vmap(lambda pair: jax.random.beta(jax.random.fold_in(key, pair), alpha, alpha))(rows // 2)
    share = jnp.where(here & (batch["weights"][partner] > 0), 1 - lam, 0.0)
    shape = (-1,) + (1,) * (images.ndim - 1)
    mixed = (1 - share.reshape(shape)) * images + share.reshape(shape) * images[partner]
    return {**batch, "mix_labels": jnp.maximum(batch["labels"][partner], 0), "mix_share": share}, mixed

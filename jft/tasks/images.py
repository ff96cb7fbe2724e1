"""Image classification as a task: the splits read at the model's side, their label ids, their
identity by content, and their batches (what jft.tasks.records and jft.tasks.batches are for text).

A batch holds pixel_values (uint8 [rows, side, side, 3]: the step augments and normalises them on
the device, jft.train.augment), labels, weights (0 for rows that only fill the last batch) and
example_ids; batch_size images a step, in an order that is a function of (seed, epoch) alone.
"""

import dataclasses
import hashlib
from collections.abc import Iterator

import jax
import numpy as np
from ml_collections import ConfigDict

from jft.data.images import ImageSet, pixels_sha256, read_images
from jft.errors import JftError, choices
from jft.tasks.batches import stream
from jft.tasks.finetuning import DEFAULT_METRIC
from jft.tasks.records import Columns, Task


@dataclasses.dataclass
class ImageData:
    """A split's images (uint8 [n, side, side, 3]), label ids (-1: none), names (file or index),
    and the SHA-256 of its pixels when known (a prepared directory's; else computed)."""

    pixels: np.ndarray
    labels: np.ndarray
    names: list[str]
    pixels_sha256: str | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def identity(self) -> dict:
        """The split by content: its count and a SHA-256 of its pixels' SHA-256 and its labels."""
        digest = hashlib.sha256((self.pixels_sha256 or pixels_sha256(self.pixels)).encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return {"images": len(self), "side": int(self.pixels.shape[1]), "sha256": digest.hexdigest()}

    def batches(self, batch_size: int, seed: int = 0, shuffle: bool = False) -> "ImageBatches":
        return ImageBatches(self, batch_size, seed, shuffle)

    def subset(self, indices: np.ndarray) -> "ImageData":
        """The images at indices, in that order (a sweep's training folds)."""
        return ImageData(self.pixels[indices], self.labels[indices], [self.names[i] for i in indices])


def image_data(images: ImageSet, classes: list[str], source: str, **naming) -> ImageData:
    """An ImageSet with its labels as ids of `classes` (the task's; naming: ImageSet.label_ids's owner
    and advice for labels outside them)."""
    labels = (
        np.full(len(images), -1, np.int32) if images.labels is None else images.label_ids(classes, source, **naming)
    )
    return ImageData(images.pixels, labels, images.names, images.pixels_sha256)


def read_image_task(config: ConfigDict, side: int) -> tuple[Task, str, dict[str, ImageData | None]]:
    """The task (its classes: the training data's), the score that picks the best model, and the
    train, eval and test splits at side × side (None when not set)."""
    if config.task != "classification":
        raise JftError(f"an image model classifies: task must be classification, not {config.task}.")
    data, tfds_dir = config.data, config.data.tfds_data_dir or None
    read = {
        split: read_images(data[split], side, skip_bad=data.skip_bad_images, tfds_data_dir=tfds_dir)
        for split in ("train", "eval", "test")
        if data[split]
    }
    train = read["train"]
    if train.labels is None:
        raise JftError(
            f"data.train {data.train} has no labels: give a folder with a folder a class (DIR/<class>/<image>), "
            "an .npz with labels, or a labeled TFDS dataset."
        )
    if len(train.classes) < 2:
        raise JftError(
            f"data.train {data.train} has {len(train.classes)} class ({train.classes}); a classifier needs 2 or more."
        )
    for split, images in read.items():
        if images.skipped and jax.process_index() == 0:
            print(f"data.{split}: left out {len(images.skipped)} files PIL cannot read (skip_bad_images)", flush=True)
    task = Task("classification", list(train.classes), Columns(), 0)
    best_metric = config.best_metric or DEFAULT_METRIC[task.kind]
    if best_metric not in task.metrics():
        raise JftError(
            f"best_metric '{best_metric}' is not a score of this task; choose one of {choices(task.metrics())}."
        )
    splits = {split: None for split in ("train", "eval", "test")}
    for split, images in read.items():
        if split != "train" and images.labels is None:
            raise JftError(f"data.{split} {data[split]} has no labels (no class folders); it cannot be scored.")
        splits[split] = image_data(images, task.labels, data[split])
    return task, best_metric, splits


@dataclasses.dataclass
class ImageBatches:
    """batch_size images a batch, shuffled each epoch by (seed, epoch); the last batch filled with
    rows of weight 0 (example_id -1)."""

    data: ImageData
    batch_size: int
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self):
        self.rows = self.batch_size

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def epoch_indices(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        order = order if self.shuffle else np.arange(len(self.data))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        rows, n = self.batch_size, len(indices)
        pixels = np.zeros((rows, *self.data.pixels.shape[1:]), np.uint8)
        pixels[:n] = self.data.pixels[indices]
        labels = np.zeros(rows, np.int32)
        labels[:n] = np.maximum(self.data.labels[indices], 0)
        weights = np.zeros(rows, np.float32)
        weights[:n] = self.data.labels[indices] >= 0
        example_ids = np.full(rows, -1, np.int32)
        example_ids[:n] = indices
        return {"pixel_values": pixels, "labels": labels, "weights": weights, "example_ids": example_ids}

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        for indices in self.epoch_indices(epoch):
            yield self.batch(indices)

    def stream(self, start: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches from step `start` on (counted from 0 over all epochs), epoch after epoch."""
        return stream(self, start)


def joint_images(config: ConfigDict, classes: list[str], side: int) -> ImageData | None:
    """The labeled pretraining images of the joint objective μ·L_pre (joint_mlm.data) at side ×
    side, their labels ids of the pretraining `classes`; None without the objective."""
    if not classes:
        return None
    data = config.joint_mlm.data
    images = read_images(
        data, side, skip_bad=config.data.skip_bad_images, tfds_data_dir=config.data.tfds_data_dir or None
    )
    if images.labels is None:
        raise JftError(f"joint_mlm.data {data} has no labels (no class folders); L_pre needs the pretraining classes.")
    advice = "give the images init_from was pretrained on"
    return image_data(images, classes, f"joint_mlm.data {data}", owner="the pretraining classifier", advice=advice)


@dataclasses.dataclass
class JointImageBatches:
    """The task's batches with a batch of pretraining images beside each (joint_pixel_values,
    joint_labels, joint_weights: the same number of rows, its own order from seed + 1), step after
    step; an epoch is the task's."""

    task: ImageBatches
    joint: ImageBatches

    def __len__(self) -> int:
        return len(self.task)

    def stream(self, start: int) -> Iterator[dict[str, np.ndarray]]:
        for batch, joint in zip(self.task.stream(start), self.joint.stream(start)):
            yield {**batch, **{f"joint_{name}": joint[name] for name in ("pixel_values", "labels", "weights")}}

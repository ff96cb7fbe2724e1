"""Labeled images for image models: read, decoded and resized once to the model's side, as uint8.

Sources (data.train, data.eval, data.test, `jft eval --data`, `jft predict --input`):
- a folder per class (the ImageFolder layout: DIR/<class>/<any depth>/<image>), the class names
  sorted; a folder of images without class folders is unlabeled (to predict);
- an .npz with `images` [n, height, width(, channels)] (uint8, or 16-bit) and `labels` [n];
- tfds:NAME[:SPLIT], a TFDS image dataset already on disk (its `image` and `label` features).

Every image becomes RGB (grayscale, palette and 16-bit images converted, alpha dropped, as
torchvision's ImageFolder loader does) and is resized to side × side with PIL's bilinear filter,
as the exported Hugging Face processor resizes, so that both see the same pixels. An image PIL
cannot read is an error naming its file, unless skip_bad: then it is left out and counted.
"""

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jft.data.corpus import tfds_records
from jft.errors import JftError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclasses.dataclass
class ImageSet:
    """Images of one source: pixels [n, side, side, 3] uint8, each one's label name (None: no
    labels) and where it came from (a file, or the source and index); skipped: files left out."""

    pixels: np.ndarray
    labels: list[str] | None
    names: list[str]
    classes: list[str]
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pixels)

    def label_ids(self, classes: Sequence[str], source: str) -> np.ndarray:
        """Each image's index in `classes` (the task's label set); a label not in it is an error."""
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted({label for label in self.labels if label not in index})
        if unknown:
            raise JftError(
                f"{source} has classes the task does not know: {unknown[:5]} (the task's: {list(classes)}); "
                "remove those images, or fine-tune again with these classes in the training data."
            )
        return np.array([index[label] for label in self.labels], np.int32)


def is_image_source(source: str) -> bool:
    """Whether a data source names images (a folder, an .npz, or tfds:) rather than a text file."""
    path = Path(source)
    return path.is_dir() or path.suffix == ".npz"


def read_images(source: str, side: int, *, skip_bad: bool = False, tfds_data_dir: str | None = None) -> ImageSet:
    """The images of source (see the module docstring) at side × side, RGB uint8."""
    if source.startswith("tfds:"):
        return _tfds_images(source, side, tfds_data_dir)
    path = Path(source)
    if not path.exists():
        raise JftError(f"image data not found: {path}")
    if path.suffix == ".npz":
        return _npz_images(path, side)
    if not path.is_dir():
        raise JftError(f"cannot read images from {path}: give a folder (one folder a class), an .npz or tfds:NAME.")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders:
        files, labels = [], []
        for folder in folders:
            found = _image_files(folder)
            if not found:
                raise JftError(
                    f"class folder {folder} holds no images ({', '.join(EXTENSIONS[:4])}, ...); add its images or "
                    "remove the folder (each folder of the data is a class)."
                )
            files += found
            labels += [folder.name] * len(found)
    else:
        files, labels = _image_files(path), None
        if not files:
            raise JftError(f"{path} holds no images and no class folders.")
    pixels, bad = _decode_all(files, side)
    if bad and not skip_bad:
        shown = "\n".join(f"  {file}: {why}" for file, why in bad[:10])
        raise JftError(
            f"{len(bad)} of the {len(files)} files in {path} are not images PIL can read:\n{shown}\n"
            "Fix or remove them, or set --config.data.skip_bad_images=true to leave them out."
        )
    keep = [i for i, array in enumerate(pixels) if array is not None]
    if not keep:
        raise JftError(f"none of the {len(files)} files in {path} is an image PIL can read.")
    kept_labels = None if labels is None else [labels[i] for i in keep]
    return ImageSet(
        np.stack([pixels[i] for i in keep]),
        kept_labels,
        [str(files[i]) for i in keep],
        [f.name for f in folders],
        [str(file) for file, _ in bad],
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def _decode_all(files: list[Path], side: int) -> tuple[list[np.ndarray | None], list[tuple[Path, str]]]:
    """Every file decoded and resized (None where it cannot be), on a thread a core, in order."""

    def decode(file: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as image:
                image.load()
                return resized(image, side), None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            return None, str(error) or type(error).__name__

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(decode, files))
    return [pixels for pixels, _ in results], [(file, why) for file, (_, why) in zip(files, results) if why]


def resized(image, side: int) -> np.ndarray:
    """A PIL image as RGB uint8 [side, side, 3]: 16-bit and 32-bit integer images scaled to 8 bits
    first (PIL's own conversion would clip them to white), then converted and resized (bilinear)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(values * 255.0 / top), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, np.float64)
        image = Image.fromarray(np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8), "L")
    image = image.convert("RGB")
    if image.size != (side, side):
        image = image.resize((side, side), Image.BILINEAR)
    return np.asarray(image, np.uint8)


def _array_image(array: np.ndarray, where: str):
    """A PIL image of a uint8 or 16-bit array [h, w], [h, w, 1], [h, w, 3] or [h, w, 4]."""
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise JftError(f"{where} is not an image [height, width(, 1, 3 or 4 channels)]: shape {array.shape}.")
    if array.dtype == np.uint16:  # 16 bits to 8
        array = np.round(array / 257.0).astype(np.uint8)
    if array.dtype != np.uint8:
        raise JftError(f"{where} holds {array.dtype} pixels; give uint8 (0..255) or uint16 images.")
    return Image.fromarray(array)


def _class_names(values: Sequence) -> list[str]:
    """The sorted class names of labels: numerically when they are all integers."""
    names = {str(v) for v in values}
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [str(v) for v in sorted({int(v) for v in values})]
    return sorted(names)


def _npz_images(path: Path, side: int) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise JftError(f"cannot read {path} as an .npz ({error}).") from None
    if "images" not in arrays:
        raise JftError(
            f"{path} has no array 'images' (it has {sorted(arrays)}); save images=[n, h, w(, c)], labels=[n]."
        )
    images, labels = arrays["images"], arrays.get("labels")
    if labels is not None and len(labels) != len(images):
        raise JftError(f"{path}: {len(images)} images but {len(labels)} labels.")
    pixels = np.stack([resized(_array_image(image, f"{path} image {i}"), side) for i, image in enumerate(images)])
    names = [f"{path}:{i}" for i in range(len(images))]
    if labels is None:
        return ImageSet(pixels, None, names, [])
    values = [v.item() for v in labels]
    return ImageSet(pixels, [str(v) for v in values], names, _class_names(values))


def _tfds_images(source: str, side: int, data_dir: str | None) -> ImageSet:
    records, features = tfds_records(source.removeprefix("tfds:"), data_dir)
    image_key = next((key for key in ("image", "img") if key in features), None)
    if image_key is None:
        raise JftError(f"{source} has no image feature (its features: {sorted(features)}).")
    label = features["label"] if "label" in features else None
    classes = list(getattr(label, "names", None) or [])
    pixels, labels, names = [], [], []
    for i, record in enumerate(records):
        pixels.append(resized(_array_image(np.asarray(record[image_key]), f"{source} record {i}"), side))
        if label is not None:
            value = int(record["label"])
            labels.append(classes[value] if classes else str(value))
        names.append(f"{source}:{i}")
    if not classes and labels:
        classes = _class_names([int(v) for v in labels])
    return ImageSet(np.stack(pixels), labels if label is not None else None, names, classes)


def write_folder(directory: str | Path, images: np.ndarray, labels: Sequence[str]) -> None:
    """Writes images (uint8 [n, h, w(, c)]) as PNGs in a folder per class: directory/<label>/<index>.png."""
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        folder = Path(directory) / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(folder / f"{index:05d}.png")

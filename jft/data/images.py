"""Labeled images for image models: read, decoded and resized once to the model's side, as uint8.

Sources (data.train, data.eval, data.test, `jft eval --data`, `jft predict --input`):
- a folder per class (the ImageFolder layout: DIR/<class>/<any depth>/<image>), the class names
  sorted; a folder of images without class folders is unlabeled (to predict);
- an .npz with `images` [n, height, width(, channels)] (uint8, or 16-bit) and `labels` [n];
- tfds:NAME[:SPLIT], a TFDS image dataset already on disk (its `image` and `label` features);
- a directory `jft prepare --side` wrote (jft.data.image_prepare): its images already decoded at
  one side, read through a memory map, so a set larger than memory trains.

Every image becomes RGB (grayscale, palette and 16-bit images converted, alpha dropped, as
torchvision's ImageFolder loader does) and is resized to side × side with PIL's bilinear filter,
as the exported Hugging Face processor resizes, so that both see the same pixels. An image PIL
cannot read is an error naming its file, unless skip_bad: then it is left out and counted.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jft.data.corpus import tfds_records
from jft.errors import JftError, choices, first_few

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FORMAT = "jft-images/1"  # metadata.json "format" of a prepared directory
PIXELS, LABELS, NAMES = "images.npy", "labels.npy", "names.txt"  # its files beside metadata.json


@dataclasses.dataclass
class ImageSet:
    """Images of one source: pixels [n, side, side, 3] uint8, each one's label name (None: no
    labels) and where it came from (a file, or the source and index); skipped: files left out;
    pixels_sha256: the SHA-256 of the pixels when it is known without reading them (prepared)."""

    pixels: np.ndarray
    labels: list[str] | None
    names: list[str]
    classes: list[str]
    skipped: list[str] = dataclasses.field(default_factory=list)
    pixels_sha256: str | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def label_ids(
        self,
        classes: Sequence[str],
        source: str,
        owner: str = "the task",
        advice: str = "remove those images, or fine-tune again with these classes in the training data",
    ) -> np.ndarray:
        """Each image's index in `classes` (owner's label set: the task's by default); a label not in
        it is an error that names the owner and gives the advice."""
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted({label for label in self.labels if label not in index})
        if unknown:
            shown = f"{list(classes[:10])}{' ...' if len(classes) > 10 else ''}"
            raise JftError(
                f"{source} has classes {owner} does not know: {first_few(unknown)} (its classes: {shown}); {advice}."
            )
        return np.array([index[label] for label in self.labels], np.int32)


@dataclasses.dataclass
class Listing:
    """An image source before decoding: each image's name, the classes (empty: the sorted labels
    met, as read), whether it has labels, and items(start): from index start, each image (a file
    or an array) and its label name (None when unlabeled)."""

    source: str
    names: list[str]
    classes: list[str]
    labeled: bool
    items: Callable[[int], Iterator[tuple[Path | np.ndarray, str | None]]]


def is_image_source(source: str) -> bool:
    """Whether a data source names images (a folder holding an image file, an .npz) rather than text."""
    path = Path(source)
    if path.is_dir():
        return any(p.suffix.lower() in EXTENSIONS for p in path.rglob("*"))
    return path.suffix == ".npz"


def read_images(source: str, side: int, *, skip_bad: bool = False, tfds_data_dir: str | None = None) -> ImageSet:
    """The images of source (see the module docstring) at side × side, RGB uint8."""
    if is_prepared_images(Path(source)):
        return _prepared_images(Path(source), side)
    listing = list_images(source, tfds_data_dir)
    pixels, labels, bad = decode(listing.items(0), listing.names, side, os.cpu_count() or 1)
    check_bad(listing, bad, skip_bad)
    keep = [i for i, array in enumerate(pixels) if array is not None]
    return ImageSet(
        np.stack([pixels[i] for i in keep]),
        [labels[i] for i in keep] if listing.labeled else None,
        [listing.names[i] for i in keep],
        listing.classes or class_names(labels),
        [name for name, _ in bad],
    )


def list_images(source: str, tfds_data_dir: str | None = None) -> Listing:
    """The images source holds (a folder, an .npz or tfds:), not yet decoded."""
    if source.startswith("tfds:"):
        return _tfds_listing(source, tfds_data_dir)
    path = Path(source)
    if not path.exists():
        raise JftError(f"image data not found: {path}")
    if path.suffix == ".npz":
        return _npz_listing(path)
    if not path.is_dir():
        raise JftError(f"cannot read images from {path}: give a folder (one folder a class), an .npz or tfds:NAME.")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p.name for p in path.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
    if folders and loose:
        raise JftError(
            f"{path} holds {len(loose)} image(s) beside its class folders ({first_few(loose, most=3)}): each image "
            "of a folder a class is in its class's folder; move them into one, or out of the data."
        )
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
    if not folders:
        files = _image_files(path)
        labels = [None] * len(files)
        if not files:
            raise JftError(f"{path} holds no images and no class folders.")
    return Listing(
        str(path),
        [str(f) for f in files],
        [f.name for f in folders],
        bool(folders),
        lambda start: ((files[i], labels[i]) for i in range(start, len(files))),
    )


def decode(
    items: Iterator[tuple[Path | np.ndarray, str | None]], names: Sequence[str], side: int, workers: int
) -> tuple[list[np.ndarray | None], list[str | None], list[tuple[str, str]]]:
    """Each item (named by names, in order) decoded and resized on `workers` threads: the pixels
    (None for a file PIL cannot read), the labels, and (name, why) of each file not read."""
    items = list(items)

    def one(index: int):
        thing = items[index][0]
        if isinstance(thing, np.ndarray):
            return resized(_array_image(thing, names[index]), side), None
        return _decode_file(thing, side)

    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(pool.map(one, range(len(items))))
    bad = [(names[i], why) for i, (_, why) in enumerate(results) if why]
    return [pixels for pixels, _ in results], [label for _, label in items], bad


def check_bad(
    listing: Listing, bad: Sequence[tuple[str, str]], skip_bad: bool, skip: str = "--config.data.skip_bad_images=true"
) -> None:
    """An error naming the files PIL could not read, unless skip_bad (`skip` says how to set it);
    an error when none could be read."""
    total = len(listing.names)
    if bad and not skip_bad:
        shown = "\n".join(f"  {name}: {why}" for name, why in bad[:10])
        raise JftError(
            f"{len(bad)} of the {total} files in {listing.source} are not images PIL can read:\n{shown}\n"
            f"Fix or remove them, or add {skip} to leave them out."
        )
    if len(bad) == total:
        raise JftError(f"none of the {total} files in {listing.source} is an image PIL can read.")


def class_names(labels: Sequence[str | None]) -> list[str]:
    """The sorted label names: numerically when they are all integers."""
    names = {label for label in labels if label is not None}
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def _decode_file(file: Path, side: int) -> tuple[np.ndarray | None, str | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            return resized(image, side), None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return None, str(error) or type(error).__name__


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


def _npz_listing(path: Path) -> Listing:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise JftError(f"cannot read {path} as an .npz ({error}).") from None
    if "images" not in arrays:
        raise JftError(
            f"{path} has no array 'images' (it has {choices(sorted(arrays))}); save images=[n, h, w(, c)], labels=[n]."
        )
    images, labels = arrays["images"], arrays.get("labels")
    if labels is not None and len(labels) != len(images):
        raise JftError(f"{path}: {len(images)} images but {len(labels)} labels.")
    names = [f"{path}:{i}" for i in range(len(images))]
    label_names = [None] * len(images) if labels is None else [str(v.item()) for v in labels]
    return Listing(
        str(path),
        names,
        [],
        labels is not None,
        lambda start: ((images[i], label_names[i]) for i in range(start, len(images))),
    )


def _tfds_listing(source: str, data_dir: str | None) -> Listing:
    records, features = tfds_records(source.removeprefix("tfds:"), data_dir)
    image_key = next((key for key in ("image", "img") if key in features), None)
    if image_key is None:
        raise JftError(f"{source} has no image feature (its features: {choices(sorted(features))}).")
    if not hasattr(records, "__getitem__"):  # tfds.load's (TensorFlow): read through once
        records = list(records)
    label = features["label"] if "label" in features else None
    classes = list(getattr(label, "names", None) or [])

    def items(start: int):
        for i in range(start, len(records)):
            record = records[i]
            value = None if label is None else int(record["label"])
            yield np.asarray(record[image_key]), None if value is None else (classes[value] if classes else str(value))

    return Listing(source, [f"{source}:{i}" for i in range(len(records))], classes, label is not None, items)


def pixels_sha256(pixels: np.ndarray, rows: int = 1024) -> str:
    """The SHA-256 of the pixels' bytes (row-major), read `rows` images at a time (a memory map
    is not read whole)."""
    digest = hashlib.sha256()
    for start in range(0, len(pixels), rows):
        digest.update(np.ascontiguousarray(pixels[start : start + rows]).tobytes())
    return digest.hexdigest()


def is_prepared_images(directory: Path) -> bool:
    """Whether directory holds images `jft prepare --side` wrote."""
    try:
        return json.loads((directory / "metadata.json").read_text())["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _prepared_images(directory: Path, side: int) -> ImageSet:
    """The images of a prepared directory, their pixels memory-mapped; an error naming what is
    wrong when it was prepared at another side, or its files do not match its metadata."""
    meta = json.loads((directory / "metadata.json").read_text())
    again = f"prepare it again: {meta['command']}" if meta.get("command") else "prepare it again"
    if meta["side"] != side:
        raise JftError(
            f"{directory} holds images prepared at {meta['side']}×{meta['side']}, but the model takes {side}×{side}; "
            f"prepare the source again with --side {side} into another directory."
        )
    try:
        pixels = np.load(directory / PIXELS, mmap_mode="r")
        labels = np.load(directory / LABELS)
        names = (directory / NAMES).read_text().splitlines()
    except (OSError, ValueError) as error:
        raise JftError(f"{directory} is damaged or incomplete ({error}); {again}") from None
    expected = (meta["images"], side, side, 3)
    if (
        pixels.shape != expected
        or pixels.dtype != np.uint8
        or len(labels) != meta["images"]
        or len(names) != len(labels)
    ):
        raise JftError(
            f"{directory} is damaged or incomplete: {PIXELS} holds {pixels.dtype} {list(pixels.shape)}, {LABELS} "
            f"{len(labels)} and {NAMES} {len(names)}, where metadata.json says {meta['images']} images of "
            f"{side}×{side}×3 uint8; {again}"
        )
    classes = meta["classes"]
    return ImageSet(
        pixels,
        [classes[i] for i in labels] if meta["labeled"] else None,
        names,
        classes,
        meta["skipped"],
        meta["pixels_sha256"],
    )


def write_folder(directory: str | Path, images: np.ndarray, labels: Sequence[str]) -> None:
    """Writes images (uint8 [n, h, w(, c)]) as PNGs in a folder per class: directory/<label>/<index>.png."""
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        folder = Path(directory) / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(folder / f"{index:05d}.png")

"""`jft prepare --side N`: decode and resize an image source once into a directory that training
reads through a memory map (jft.data.images reads it as it reads the source, without decoding).

The source (a folder per class, an .npz or tfds:NAME[:SPLIT]) goes through in windows of a fixed
number of images, each decoded and resized on `workers` threads into its rows of one uint8 array
[n, side, side, 3] on disk, so that memory holds a window and not the set. A window is done once
its rows are flushed and its marker (labels, files not read) written: a prepare stopped or killed
resumes with the windows not done, in out_dir + '.tmp'. One array rather than shards: training
draws rows at random across the whole set, and a single .npy maps them with no index.

Output directory: images.npy (uint8 [n, side, side, 3]), labels.npy (int32 [n], indices of the
classes), names.txt (each image's file, or source:index, a line) and metadata.json: the format,
side, the classes, whether the source had labels, the count, the files left out
(skip_bad_images), the SHA-256 of the pixels (a run's identity of the data, without reading
them again), the source and the command that writes the same directory again.
"""

import hashlib
import json
import os
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jft.data.images import (
    FORMAT,
    LABELS,
    NAMES,
    PIXELS,
    Listing,
    check_bad,
    class_names,
    decode,
    is_prepared_images,
    list_images,
    pixels_sha256,
)
from jft.data.prepare import WINDOWS, check_output_directory, resumable, write_failed
from jft.errors import JftError
from jft.files import write_text
from jft.outputs import put_in_place

WINDOW_IMAGES = 1024  # images a window: what prepare holds at once


def _check_room(count: int, side: int, window: int, tmp_dir: Path) -> None:
    """A JftError before anything is written when the images at side × side cannot fit on the
    disk of tmp_dir, or a window of them in the memory free now (a side mistyped, most often)."""
    gib = 3 * side * side / 2**30  # one image's GiB
    folder = next(p for p in (tmp_dir, *tmp_dir.parents) if p.exists())
    free = shutil.disk_usage(folder).free / 2**30
    if count * gib > free:
        raise JftError(
            f"{count:,} images at {side}×{side} take {_size(count * gib)}, and {folder} has {_size(free)} free; "
            "give --side the model's image_size (e.g. 224 for ResNet-50), or write --out on a larger disk."
        )
    memory = _available_memory()
    if memory is not None and window * gib > memory:
        what = "one image" if window == 1 else f"a window of {window:,} images"
        smaller = ", or a smaller --window-images" if window > 1 else ""
        raise JftError(
            f"{what} at {side}×{side} takes {_size(window * gib)} of memory, and {_size(memory)} are free; give "
            f"--side the model's image_size (e.g. 224 for ResNet-50){smaller}."
        )


def _size(gib: float) -> str:
    return f"{gib:,.1f} GiB" if gib >= 0.1 else f"{gib * 1024:,.1f} MiB"


def _available_memory() -> float | None:
    """The GiB of memory free for a new process now (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return kib / 2**20


def prepare_images(
    source: str,
    out_dir: str | Path,
    *,
    side: int,
    workers: int = 0,
    window_images: int = WINDOW_IMAGES,
    skip_bad: bool = False,
    tfds_data_dir: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Decodes the images of `source` at side × side into `out_dir` (new, empty, an earlier
    prepare's, or with overwrite anything: replaced whole at the end); returns the metadata
    written. workers: decoding threads (0: one a core)."""
    if side < 1 or window_images < 1 or workers < 0:
        raise JftError(
            f"side and window_images must be at least 1 and workers 0 (a core each) or more: {side}, "
            f"{window_images}, {workers}."
        )
    out_dir = Path(out_dir)
    check_output_directory(out_dir, overwrite, ours=is_prepared_images, what="images")
    start_time = time.perf_counter()
    absolute = source if source.startswith("tfds:") else os.path.abspath(source)
    listing = list_images(absolute, tfds_data_dir)  # names by absolute path: they stay true wherever out_dir goes
    count = len(listing.names)
    if not count:
        raise JftError(f"{source} holds no images.")
    names = hashlib.sha256("\n".join(listing.names).encode()).hexdigest()  # the files, in order
    settings = {"format": FORMAT, "source": absolute, "side": side, "names": names, "window": window_images}
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    done = resumable(tmp_dir, settings)
    if done and progress:
        print(f"resuming the prepare in {tmp_dir}: {len(done)} windows done", flush=True)
    shape = (count, side, side, 3)
    if not done:  # a new start: tmp_dir holds nothing yet
        try:
            _check_room(count, side, min(window_images, count), tmp_dir)
        except JftError:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    try:
        mode = "r+" if done else "w+"
        pixels = np.lib.format.open_memmap(tmp_dir / PIXELS, mode=mode, dtype=np.uint8, shape=None if done else shape)
        windows = [w for w in range(-(-count // window_images)) if w not in done]
        with tqdm(total=count, desc="preparing", unit=" images", disable=None if progress else True) as bar:
            bar.update(count - sum(min(window_images, count - w * window_images) for w in windows))
            for window in windows:
                begin = window * window_images
                end = min(begin + window_images, count)
                items = (item for _, item in zip(range(end - begin), listing.items(begin)))
                decoded, labels, bad = decode(items, listing.names[begin:end], side, workers or os.cpu_count() or 1)
                for row, array in enumerate(decoded):
                    if array is not None:
                        pixels[begin + row] = array
                pixels.flush()
                marker = {"window": window, "labels": labels, "bad": bad}
                write_text(tmp_dir / WINDOWS / f"{window:06d}.json", json.dumps(marker))  # after its rows
                done[window] = marker
                bar.update(end - begin)
    except OSError as error:
        raise write_failed(error, tmp_dir) from None
    labels = [label for w in sorted(done) for label in done[w]["labels"]]
    bad = [tuple(entry) for w in sorted(done) for entry in done[w]["bad"]]
    check_bad(listing, bad, skip_bad, "--skip-bad-images")  # the windows stay: with it the command ends at once
    metadata = _finish(tmp_dir, pixels, listing, labels, {name for name, _ in bad}, side, window_images)
    metadata.update(source=absolute, seconds=round(time.perf_counter() - start_time, 3))
    metadata["command"] = _command(absolute, out_dir, side, skip_bad, tfds_data_dir)
    write_text(tmp_dir / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    put_in_place(tmp_dir, out_dir)
    return metadata


def _finish(
    tmp_dir: Path, pixels: np.memmap, listing: Listing, labels: list, bad: set[str], side: int, window: int
) -> dict:
    """The kept rows as the output's files in tmp_dir (the array compacted, a window at a time,
    when files were left out), the windows removed; the metadata without source and timing."""
    keep = np.array([i for i, name in enumerate(listing.names) if name not in bad], np.int64)
    if len(keep) < len(pixels):
        shape = (len(keep), *pixels.shape[1:])
        kept = np.lib.format.open_memmap(tmp_dir / "kept.npy", mode="w+", dtype=np.uint8, shape=shape)
        for start in range(0, len(keep), window):
            kept[start : start + window] = pixels[keep[start : start + window]]
        kept.flush()
        del kept
        os.replace(tmp_dir / "kept.npy", tmp_dir / PIXELS)
    classes = listing.classes or class_names(labels)
    index = {name: i for i, name in enumerate(classes)}
    ids = np.array([index[labels[i]] if listing.labeled else -1 for i in keep], np.int32)
    np.save(tmp_dir / LABELS, ids)
    write_text(tmp_dir / NAMES, "".join(f"{listing.names[i]}\n" for i in keep))
    shutil.rmtree(tmp_dir / WINDOWS, ignore_errors=True)
    (tmp_dir / "settings.json").unlink()
    return {
        "format": FORMAT,
        "side": side,
        "images": len(keep),
        "labeled": listing.labeled,
        "classes": classes,
        "skipped": sorted(bad),
        "pixels_sha256": pixels_sha256(np.load(tmp_dir / PIXELS, mmap_mode="r"), window),
    }


def _command(source: str, out_dir: Path, side: int, skip_bad: bool, tfds_data_dir: str | None) -> str:
    """The `jft prepare` command that writes this directory again."""
    command = ["jft", "prepare", source, "--side", str(side), "--out", os.path.abspath(out_dir)]
    command += ["--skip-bad-images"] if skip_bad else []
    command += ["--tfds-data-dir", os.path.abspath(tfds_data_dir)] if tfds_data_dir else []
    return shlex.join(command)

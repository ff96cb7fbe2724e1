"""`jft prepare --side`: images decoded once into a memory-mapped directory that reads as its source
does (the same pixels, labels, names and identity), resumes a stopped prepare, holds a window in
memory and not the set, and refuses what would go wrong, saying how to fix it."""

import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from conftest import set_keys
from jft import cli
from jft.data import image_prepare
from jft.data.image_prepare import prepare_images
from jft.data.images import read_images, write_folder
from jft.errors import JftError
from jft.tasks.images import image_data
from jft.train.checkpoint import Checkpoints


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """300 of scikit-learn's handwritten digits as PNGs, a folder a class, one image 11×7 in RGBA."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    data = load_digits()
    write_folder(root / "digits", np.round(data.images[:300] * 255 / 16).astype(np.uint8), data.target[:300])
    Image.fromarray(np.full((11, 7, 4), 90, np.uint8), "RGBA").save(root / "digits" / "3" / "odd.png")
    return root / "digits"


def _same(a, b):
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert (a.labels, a.names, a.classes, a.skipped) == (b.labels, b.names, b.classes, b.skipped)


def test_a_prepared_directory_reads_as_its_source_from_a_memory_map(digits, tmp_path):
    meta = prepare_images(str(digits), tmp_path / "prepared", side=12, window_images=64, progress=False)
    assert meta["images"] == 301 and meta["classes"] == [str(c) for c in range(10)]
    prepared = read_images(str(tmp_path / "prepared"), 12)
    assert isinstance(prepared.pixels, np.memmap)
    _same(prepared, read_images(str(digits), 12))
    classes = prepared.classes
    assert (
        image_data(prepared, classes, "p").identity()
        == image_data(read_images(str(digits), 12), classes, "d").identity()
    )
    # moved elsewhere, it is the same data; at another side it says what to do
    shutil.move(tmp_path / "prepared", tmp_path / "moved")
    _same(read_images(str(tmp_path / "moved"), 12), prepared)
    with pytest.raises(
        JftError, match=r"prepared at 12×12, but the model takes 16×16; prepare the source again with --side 16"
    ):
        read_images(str(tmp_path / "moved"), 16)
    # an .npz (labels by number, sorted numerically) and an unlabeled folder
    np.savez(tmp_path / "d.npz", images=np.arange(5 * 9 * 9, dtype=np.uint8).reshape(5, 9, 9), labels=[10, 2, 2, 10, 7])
    prepare_images(str(tmp_path / "d.npz"), tmp_path / "npz", side=4, window_images=2, progress=False)
    _same(read_images(str(tmp_path / "npz"), 4), read_images(str(tmp_path / "d.npz"), 4))
    assert read_images(str(tmp_path / "npz"), 4).classes == ["2", "7", "10"]
    prepare_images(str(digits / "7"), tmp_path / "unlabeled", side=5, progress=False)
    unlabeled = read_images(str(tmp_path / "unlabeled"), 5)
    assert unlabeled.labels is None and unlabeled.names == [str(p) for p in sorted((digits / "7").glob("*.png"))]


def test_a_stopped_prepare_resumes_with_the_windows_not_done(digits, tmp_path, monkeypatch):
    prepare_images(str(digits), tmp_path / "straight", side=10, window_images=50, progress=False)
    calls = []
    decode = image_prepare.decode

    def stopping(items, names, side, workers):
        calls.append(names[0])
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the fourth window
        return decode(items, names, side, workers)

    monkeypatch.setattr(image_prepare, "decode", stopping)
    with pytest.raises(KeyboardInterrupt):
        prepare_images(str(digits), tmp_path / "resumed", side=10, window_images=50, progress=False)
    assert not (tmp_path / "resumed").exists() and len(list((tmp_path / "resumed.tmp" / "windows").iterdir())) == 3
    calls.clear()
    monkeypatch.setattr(image_prepare, "decode", lambda *args: calls.append(args[1][0]) or decode(*args))
    prepare_images(str(digits), tmp_path / "resumed", side=10, window_images=50, progress=False)
    assert len(calls) == 4  # windows 3..6 of 7 (301 images)
    for name in ("images.npy", "labels.npy", "names.txt"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert not (tmp_path / "resumed.tmp").exists()
    # another side: nothing of the earlier windows is used
    calls.clear()
    prepare_images(str(digits), tmp_path / "resumed", side=9, window_images=50, progress=False)
    assert len(calls) == 7 and read_images(str(tmp_path / "resumed"), 9).pixels.shape == (301, 9, 9, 3)


def test_memory_holds_a_window_not_the_set(digits, tmp_path):
    """numpy's allocations (tracemalloc sees them) peak near a window's pixels, not the set's."""
    tracemalloc.start()
    prepare_images(str(digits), tmp_path / "big", side=96, window_images=20, workers=1, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole = 301 * 96 * 96 * 3
    assert (tmp_path / "big" / "images.npy").stat().st_size > whole
    assert peak < whole / 4, (peak, whole)


def test_bad_images_are_named_and_left_out_only_when_asked(digits, tmp_path, monkeypatch):
    source = tmp_path / "source"
    shutil.copytree(digits, source)
    (source / "4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with pytest.raises(
        JftError, match=r"(?s)1 of the 302 files .*/broken\.png.*\nFix or remove them, or add --skip-bad-images"
    ):
        prepare_images(str(source), tmp_path / "out", side=8, window_images=100, progress=False)
    # every window was done by the first try: none is decoded again
    monkeypatch.setattr(image_prepare, "decode", lambda *args: pytest.fail("a window was decoded again"))
    meta = prepare_images(str(source), tmp_path / "out", side=8, window_images=100, skip_bad=True, progress=False)
    assert meta["skipped"] == [str(source / "4" / "broken.png")] and meta["images"] == 301
    _same(read_images(str(tmp_path / "out"), 8), read_images(str(source), 8, skip_bad=True))


def test_a_damaged_prepared_directory_says_how_to_make_it_again(digits, tmp_path):
    prepare_images(str(digits / "1"), tmp_path / "p", side=8, progress=False)
    with open(tmp_path / "p" / "images.npy", "r+b") as file:
        file.truncate(1000)
    with pytest.raises(
        JftError, match=r"p is damaged or incomplete .*; prepare it again: jft prepare .*/1 --side 8 --out"
    ):
        read_images(str(tmp_path / "p"), 8)


def test_the_command_refuses_what_would_go_wrong(digits, tmp_path, capsys, monkeypatch):
    def error(*args) -> str:
        assert cli.main(["prepare", *map(str, args)]) == 2
        return capsys.readouterr().err

    assert "holds images: give --side, the model's image_size" in error(digits, "--out", tmp_path / "o")
    assert "one source" in error(digits, digits, "--side", 8, "--out", tmp_path / "o")
    assert "is inside an input of this command" in error(digits, "--side", 8, "--out", digits / "prepared")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "holds other files" in error(digits, "--side", 8, "--out", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert "give --vocab" in error(tmp_path / "mine" / "notes.txt", "--out", tmp_path / "o")
    # a mistyped side: refused before any memory or disk is taken (301 images at 10⁶ pixels a side: 2.5 PiB)
    assert "301 images at 1000000×1000000 take" in error(digits, "--side", 10**6, "--out", tmp_path / "o")
    monkeypatch.setattr(image_prepare, "_available_memory", lambda: 1 / 1024)  # 1 MiB free
    said = error(digits, "--side", 64, "--window-images", 1000, "--out", tmp_path / "o")
    assert "a window of 301 images at 64×64 takes 3.5 MiB of memory, and 1.0 MiB are free" in said
    assert "or a smaller --window-images" in said
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tmp").exists()


def test_training_from_a_prepared_directory_is_training_from_its_source(digits, tmp_path):
    """`jft prepare` from another directory, then fine-tuning a ResNet on it: the same run, to the
    bit, as on the folder, and the same data by the run's record."""
    from jft.config import load_config
    from jft.finetune import train_and_evaluate

    done = subprocess.run(
        [sys.executable, "-m", "jft.cli", "prepare", str(digits), "--side", "8", "--out", "prepared"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 0 and "301 images of 8×8, 10 classes" in done.stdout, done.stdout + done.stderr
    states, records = [], []
    for name, source in (("folder", digits), ("prepared", tmp_path / "prepared")):
        config = load_config("finetune/resnet_tiny")
        set_keys(config, {"data.train": str(source), "data.eval": str(source), "epochs": 1, "max_steps": 3})
        set_keys(config, {"batch_size": 32, "progress": False, "model.image_size": 8})
        train_and_evaluate(config, tmp_path / f"run_{name}")  # a run beside its data, not in it
        checkpoints = Checkpoints(tmp_path / f"run_{name}" / "checkpoints")
        states.append(checkpoints.restore()[0]["train"]["params"])
        checkpoints.close()
        records.append(json.loads((tmp_path / f"run_{name}" / "run.json").read_text())["data"])
    import jax

    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert records[0] == records[1]

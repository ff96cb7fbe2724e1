"""`jft prepare` at corpus scale: memory bounded by the window, the same rows for any number of
workers, and a killed prepare that resumes to the uninterrupted one's fingerprint."""

import json
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from conftest import write_corpus, write_vocab
from jft.data.loader import PretrainRows
from jft.data.prepare import prepare


def _arrays(directory):
    rows = PretrainRows(directory)
    return rows.rows(np.arange(len(rows)))


def test_peak_memory_follows_the_window_not_the_corpus(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt")
    small = write_corpus(tmp_path / "small.txt", documents=50)
    prepare(str(small), vocab, tmp_path / "warm", seq_len=32, progress=False)  # first-call allocations
    peaks = {}
    for documents in (1000, 8000):  # both above the 256 KiB that hashing a source reads at a time
        corpus = write_corpus(tmp_path / f"corpus{documents}.txt", documents=documents)
        tracemalloc.start()
        meta = prepare(
            str(corpus), vocab, tmp_path / f"rows{documents}", seq_len=32, window_documents=400, progress=False
        )
        peaks[documents] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert meta["documents"] == documents and meta["splits"]["eval"]["rows"] > 0
    assert peaks[8000] < 1.2 * peaks[1000], peaks  # 8 times the corpus, less than 20% more memory


def test_one_and_two_workers_write_the_same_rows(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", documents=600)
    vocab = write_vocab(tmp_path / "vocab.txt")
    metas = {
        workers: prepare(
            str(corpus),
            vocab,
            tmp_path / f"w{workers}",
            seq_len=32,
            window_documents=50,
            workers=workers,
            progress=False,
        )
        for workers in (1, 2)
    }
    assert metas[1]["fingerprint"] == metas[2]["fingerprint"]
    assert metas[1]["splits"] == metas[2]["splits"] and len(metas[1]["splits"]["train"]["shards"]) == 12
    one, two = _arrays(tmp_path / "w1"), _arrays(tmp_path / "w2")
    assert all(np.array_equal(one[k], two[k]) for k in one)
    assert 0.3 < one["nsp_labels"].mean() < 0.7  # negatives drawn within each window
    assert not (tmp_path / "w2.tmp").exists()


def _kill_after_windows(command, out, windows: int):
    """Starts `command --out out` and SIGKILLs it once `windows` windows are done; how many were."""
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    markers = out.with_name(out.name + ".tmp") / "windows"
    deadline = time.monotonic() + 120
    while len(list(markers.glob("*.json"))) < windows and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = len(list(markers.glob("*.json")))
    assert process.returncode == -signal.SIGKILL and not out.exists() and windows <= done < 200
    return done


def test_a_killed_prepare_resumes_to_the_uninterrupted_rows(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", documents=4000)
    vocab = write_vocab(tmp_path / "vocab.txt")
    command = [sys.executable, "-m", "jft.cli", "prepare", str(corpus), "--vocab", str(vocab), "--seq-len", "32"]
    command += ["--window-documents", "20", "--workers", "1"]
    out = tmp_path / "rows"
    done = _kill_after_windows(command, out, 5)
    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming the prepare in {tmp_path / 'rows.tmp'}: {done}" in resumed.stdout + resumed.stderr
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    meta, reference = (json.loads((d / "metadata.json").read_text()) for d in (out, tmp_path / "whole"))
    assert meta["fingerprint"] == reference["fingerprint"] and meta["splits"] == reference["splits"]
    assert meta["documents"] == 4000 and not (tmp_path / "rows.tmp").exists()

    # the same vocabulary read cased tokenizes otherwise: its windows are not resumed, it starts over
    _kill_after_windows(command, tmp_path / "other", 5)
    cased = subprocess.run([*command, "--cased", "--out", str(tmp_path / "other")], capture_output=True, text=True)
    assert cased.returncode == 0, cased.stderr
    assert "resuming" not in cased.stdout + cased.stderr

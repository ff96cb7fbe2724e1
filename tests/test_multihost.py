"""Two processes × four CPU devices, started with jax.distributed on 127.0.0.1 (gloo), give the
update of one process with one device on the same global batch."""

import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from conftest import pretrain_command, write_corpus
from jft.checkpoint import Checkpoints
from jft.data.corpus import read_documents
from jft.data.prepare import prepare
from jft.data.tokenizer import train_vocab

STEPS = 6
NO_DROPOUT = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}
RUN = {
    "total_steps": STEPS,
    "checkpoint_every": STEPS,
    "log_every": STEPS,
    "eval_every": STEPS,
    "async_checkpoints": False,
}


def _command(workdir, rows, **parallel):
    return pretrain_command(workdir, **NO_DROPOUT, **RUN, **{"data.prepared": rows}, **parallel)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final_params(workdir):
    checkpoints = Checkpoints(workdir)
    state, _ = checkpoints.restore(step=STEPS)
    checkpoints.close()
    return state["train"]["params"]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """Prepared rows, and the parameters after STEPS steps on them with one process and one device."""
    root = tmp_path_factory.mktemp("multihost")
    text = write_corpus(root / "corpus.txt", documents=60)
    vocab = train_vocab((line for d in read_documents(str(text)) for line in d), root / "vocab", vocab_size=200)
    rows = root / "rows"
    prepare(str(text), vocab, rows, seq_len=32, progress=False)
    single_env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    subprocess.run(
        _command(root / "single", rows, **{"parallel.backend": "jit"}),
        env=single_env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return rows, _final_params(root / "single")


@pytest.mark.xdist_group("multihost")  # one worker, so both share one_device_run
@pytest.mark.parametrize("backend", ["shard_map", "pmap"])
def test_two_processes_four_devices_each_match_one_device(tmp_path, one_device_run, backend):
    rows, single = one_device_run

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    address = f"127.0.0.1:{_free_port()}"
    processes = [
        subprocess.Popen(
            _command(
                tmp_path / "multi",
                rows,
                **{
                    "parallel.backend": backend,
                    "parallel.num_processes": 2,
                    "parallel.process_id": index,
                    "parallel.coordinator_address": address,
                },
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(outputs)

    multi = _final_params(tmp_path / "multi")
    # 8 devices against 1: the same sums in another order, so float32 rounding apart.
    differences = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(multi))]
    assert max(differences) < 1e-6

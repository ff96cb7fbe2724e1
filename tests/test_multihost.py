"""Two processes × four CPU devices, started with jax.distributed on 127.0.0.1 (gloo), give the
updates (and, fine-tuning, the evaluations) of one process with one device on the same global
batches, dropout on (each row's masks drawn by its place in the global batch): pretraining and
fine-tuning; and pretraining where each process has only its own shards, started the way SLURM
starts it (jax.distributed finds the processes from SLURM's variables)."""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, corpus_vocab, pretrain_command, write_corpus, write_topic_task, write_vocab
from jft import cli
from jft.data.prepare import prepare
from jft.train.checkpoint import Checkpoints

STEPS = 6
STREAMS = 2  # every batch takes half its rows from each of two streams of whole shards
RUN = {
    "total_steps": STEPS,
    "checkpoint_every": STEPS,
    "log_every": STEPS,
    "eval_every": STEPS,
    "async_checkpoints": False,
}


def _command(workdir, rows, **settings):
    return pretrain_command(workdir, **{**RUN, "data.prepared": rows, "data.streams": STREAMS, **settings})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(command, slurm: bool = False) -> list[subprocess.Popen]:
    """Processes 0 and 1 of one jax.distributed run of command(parallel settings), 4 CPU devices
    each; slurm: command(process index), with SLURM's variables instead of the settings."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    address = f"127.0.0.1:{_free_port()}"
    # jax takes a SLURM job's coordinator port from its id: 61440 + id % 4096, on the first node
    if slurm:
        job = {"SLURM_JOB_ID": str(_free_slurm_port() - 61440), "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2"}

    def start(index):
        if slurm:
            task = {**job, "SLURM_PROCID": str(index), "SLURM_LOCALID": str(index)}
            argv, task_env = command(index), {**env, **task}
        else:
            parallel = {
                "parallel.num_processes": 2,
                "parallel.process_id": index,
                "parallel.coordinator_address": address,
            }
            argv, task_env = command(parallel), env
        return subprocess.Popen(argv, env=task_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    return [start(index) for index in range(2)]


def _run_two_processes(command, slurm: bool = False) -> None:
    """Runs _start_two's processes to their end; both must succeed."""
    processes = _start_two(command, slurm)
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(outputs)


def _free_slurm_port() -> int:
    """A free port where jax looks for a SLURM job's coordinator (61440 .. 65535)."""
    for port in random.sample(range(61440, 65536), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 61440..65535")


def _run_here(command: list[str]) -> None:
    """A `python -m jft.cli ...` command run in this process (backend jit: one device)."""
    assert command[1:3] == ["-m", "jft.cli"] and cli.main(command[3:]) == 0


def _final_params(workdir, step=STEPS):
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, _ = checkpoints.restore(step=step)
    checkpoints.close()
    return state["train"]["params"]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """Prepared rows, and the parameters after STEPS steps on them with one process and one device."""
    root = tmp_path_factory.mktemp("multihost")
    text = write_corpus(root / "corpus.txt", documents=60)
    vocab = corpus_vocab(text, root / "vocab")
    rows = root / "rows"
    prepare(str(text), vocab, rows, seq_len=32, window_documents=20, progress=False)  # 3 shards a split
    _run_here(_command(root / "single", rows, **{"parallel.backend": "jit"}))
    return rows, _final_params(root / "single")


def _max_difference(single, multi) -> float:
    return max(
        float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(multi), strict=True)
    )


@pytest.mark.xdist_group("multihost")  # one worker, so both share one_device_run
@pytest.mark.parametrize("backend", ["shard_map", "pmap", "shard_map:all"])
def test_two_processes_four_devices_each_match_one_device(tmp_path, one_device_run, backend):
    """shard_map:all: the state split over the 8 devices of both processes (FSDP), each process
    saving what it holds; against one device with the same setting (the global view draws its own
    random bits: jft.train.steps.classic_threefry)."""
    rows, single = one_device_run
    backend, _, shard_state = backend.partition(":")
    settings = {"parallel.backend": backend, "parallel.shard_state": shard_state or "none"}
    if shard_state:
        _run_here(_command(tmp_path / "single", rows, **{**settings, "parallel.backend": "jit"}))
        single = _final_params(tmp_path / "single")

    _run_two_processes(lambda parallel: _command(tmp_path / "multi", rows, **{**settings, **parallel}))
    # 8 devices against 1: the same sums in another order, so float32 rounding apart.
    assert _max_difference(single, _final_params(tmp_path / "multi")) < 1e-6


def _own_shards(rows, index, out, capsys):
    """A copy of prepared rows holding only what process `index` of 2 reads (`jft shards`); its shard names."""
    out.mkdir()
    assert cli.main(["shards", str(rows), "--streams", str(STREAMS), "--process", str(index)]) == 0
    files = capsys.readouterr().out.split()
    for name in files:
        shutil.copy(rows / name, out / name)
    return sorted({name.split(".")[0] for name in files if name.endswith(".npy")})


@pytest.mark.xdist_group("multihost")
def test_processes_with_only_their_own_shards_match_one_device(tmp_path, one_device_run, capsys):
    """Each host's disk holds only its share of the shards, disjoint, together all of them; the
    processes find each other from SLURM's variables (parallel.num_processes=0)."""
    rows, single = one_device_run
    owned = [_own_shards(rows, index, tmp_path / f"host{index}", capsys) for index in range(2)]
    assert not set(owned[0]) & set(owned[1])
    assert sorted(owned[0] + owned[1]) == sorted(p.name.split(".")[0] for p in rows.glob("*.input_ids.npy"))

    def command(index):
        return _command(tmp_path / "multi", tmp_path / f"host{index}", **{"parallel.num_processes": 0})

    _run_two_processes(command, slurm=True)
    assert _max_difference(single, _final_params(tmp_path / "multi")) < 1e-6


FINETUNE_STEPS = 4  # 2 epochs of 32 examples, 16 a batch


def _finetune_command(workdir, data, **settings):
    """`jft finetune` of configs/finetune/tiny.py from scratch on data's topic task (its dropout on)."""
    settings = {
        "data.train": data / "train.csv",
        "data.eval": data / "dev.csv",
        "data.vocab": data / "vocab.txt",
        "data.seq_len": 32,
        "model.max_position_embeddings": 32,
        "epochs": 2,
        "log_every": 2,
        "progress": False,
        **settings,
    }
    config = str(REPO / "configs" / "finetune" / "tiny.py")
    return [sys.executable, "-m", "jft.cli", "finetune", "--config", config, "--workdir", str(workdir)] + [
        f"--config.{key}={value}" for key, value in settings.items()
    ]


def _evaluations(workdir) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["split"] == "eval"]


@pytest.fixture(scope="module")
def one_device_finetune(tmp_path_factory):
    """A labeled task, and the parameters and evaluations of fine-tuning on it with one device."""
    data = tmp_path_factory.mktemp("multihost-finetune")
    write_topic_task(data / "train.csv", 32, seed=0)
    write_topic_task(data / "dev.csv", 24, seed=1)
    write_vocab(data / "vocab.txt")
    _run_here(_finetune_command(data / "single", data, **{"parallel.backend": "jit"}))
    return data, _final_params(data / "single", FINETUNE_STEPS), _evaluations(data / "single")


@pytest.mark.xdist_group("multihost-finetune")  # its own worker: the pretraining pair above takes another
def test_two_processes_fine_tune_and_evaluate_like_one_device(tmp_path, one_device_finetune):
    """The default backend (shard_map); pmap's share of the rows is placed as in pretraining's test."""
    data, single, single_evaluations = one_device_finetune
    _run_two_processes(lambda parallel: _finetune_command(tmp_path, data, **parallel))

    # Adam's first steps move each weight by about ±lr = 1e-3 whatever the gradient's size, so sums
    # in another order can differ by more than pretraining's 1e-6 here: 1e-5 is 1% of one step.
    assert _max_difference(single, _final_params(tmp_path, FINETUNE_STEPS)) < 1e-5
    # Every process predicts its share of each evaluation batch; the gathered predictions score
    # like one device's: the same examples, in the same order.
    evaluations = _evaluations(tmp_path)
    assert [e["step"] for e in evaluations] == [e["step"] for e in single_evaluations] == [2, 4]
    for mine, reference in zip(evaluations, single_evaluations):
        assert mine.keys() == reference.keys()
        for name in mine:
            assert mine[name] == pytest.approx(reference[name], abs=1e-6), name


def test_processes_found_by_jax_need_a_cluster(tmp_path):
    """parallel.num_processes=0 outside a TPU pod or SLURM job: one clear line, nothing written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    command = pretrain_command(tmp_path / "run", **{"data.corpus": tmp_path / "c.txt", "parallel.num_processes": 0})
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        "jft pretrain: error: parallel.num_processes=0 lets jax.distributed find the processes, and it found no TPU "
        "pod or SLURM job here (coordinator_address should be defined.); set parallel.num_processes"
    )
    assert not (tmp_path / "run").exists()


# What several processes agree on: a refusal, a stop, the whole sweep.


@pytest.mark.xdist_group("multihost")
def test_a_refusal_reaches_every_process_as_the_same_line(tmp_path, one_device_run):
    """Only process 0 takes the lock: when another run holds it, both processes say so at once."""
    rows, _ = one_device_run
    workdir = tmp_path / "run"
    workdir.mkdir()
    hold = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    hold += "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(300)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(workdir / "run.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        processes = _start_two(lambda parallel: _command(workdir, rows, **parallel))
        outputs = [p.communicate(timeout=120)[0] for p in processes]
    finally:
        holder.kill()
    said = [[line for line in output.splitlines() if line.startswith("jft pretrain: ")] for output in outputs]
    assert [p.returncode for p in processes] == [2, 2], outputs
    assert said[0] == said[1] and len(said[0]) == 1, outputs  # the whole outputs, to see what else a process said
    assert said[0][0].startswith(f"jft pretrain: error: {workdir} is in use by another run"), said
    assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]  # nothing written


@pytest.mark.xdist_group("multihost")
def test_a_damaged_shard_that_one_process_reads_stops_both_with_the_same_line(tmp_path, one_device_run, capsys):
    """Process 1 alone reads the damaged shard: it finds it before the first step, and both
    processes say so and end, instead of process 0 waiting for it in a collective."""
    rows, _ = one_device_run
    damaged = tmp_path / "rows"
    shutil.copytree(rows, damaged)
    assert cli.main(["shards", str(rows), "--streams", str(STREAMS), "--process", "1"]) == 0
    victim = next(name for name in capsys.readouterr().out.split() if name.startswith("train-") and "input_ids" in name)
    with (damaged / victim).open("r+b") as file:
        file.seek(200)
        file.write(b"\xff\xff\xff")
    processes = _start_two(lambda parallel: _command(tmp_path / "run", damaged, **parallel))
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    said = [[line for line in output.splitlines() if line.startswith("jft pretrain: ")] for output in outputs]
    assert [p.returncode for p in processes] == [2, 2], outputs
    assert said[0] == said[1] and len(said[0]) == 1, said
    assert said[0][0].startswith(f"jft pretrain: error: {damaged / victim} is damaged (its SHA-256 is not"), said


@pytest.mark.xdist_group("multihost")
def test_a_stop_is_agreed_at_the_next_steps_however_far_apart_log_steps_are(tmp_path, one_device_run):
    """SIGTERM to process 0 of a run that logs every 10,000 steps: both processes stop after the
    same step, a few steps on, with that step saved."""
    rows, _ = one_device_run
    settings = {"total_steps": 100_000, "log_every": 10_000, "eval_every": 10_000, "checkpoint_every": 10_000}
    processes = _start_two(lambda parallel: _command(tmp_path / "run", rows, **{**parallel, **settings}))
    for line in processes[0].stdout:
        if "starting at step 0" in line:
            break
    time.sleep(5)  # into the loop
    processes[0].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [143, 143], outputs
    steps = [int(re.search(r"stopped by SIGTERM at step (\d+);", output).group(1)) for output in outputs]
    assert steps[0] == steps[1] < 10_000, outputs
    assert Checkpoints(tmp_path / "run" / "checkpoints", read_only=True).latest_step() == steps[0]


@pytest.mark.xdist_group("multihost-finetune")
def test_two_processes_sweep_and_train_the_best(tmp_path, one_device_finetune):
    """jft sweep over two processes: its populations, then the best grid point's run, all under
    the one jax.distributed the sweep started."""
    data, _, _ = one_device_finetune

    def command(parallel):
        argv = _finetune_command(tmp_path, data, **parallel, epochs=1, **{"sweep.grid": "{'optim.lr': [1e-3, 2e-3]}"})
        return [*argv[:3], "sweep", *argv[4:]]

    processes = _start_two(command)
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert len((tmp_path / "members.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "best_run" / "run.json").is_file()


@pytest.mark.xdist_group("multihost")
def test_next_word_pretraining_on_two_processes_matches_one_device(tmp_path):
    """GPT-2 on causal rows, two streams of whole shards, 2 processes × 4 devices: the update of
    one device with the whole batch."""
    from jft.data.corpus import read_documents
    from jft.data.tokenizer import train_vocab

    text = write_corpus(tmp_path / "corpus.txt", documents=60)
    train_vocab(
        lambda: (s for d in read_documents(str(text)) for s in d), tmp_path / "vocab", vocab_size=300, kind="bytelevel"
    )
    rows = tmp_path / "rows"
    prepare(str(text), tmp_path / "vocab", rows, seq_len=32, mode="causal", window_documents=20, progress=False)
    gpt2 = {"model.n_embd": 32, "model.n_layer": 2, "model.n_head": 2, "model.n_positions": 32}
    gpt2 |= {f"model.{name}": 0.0 for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    gpt2 |= {**RUN, "data.prepared": rows, "data.streams": STREAMS, "data.seq_len": 32, "batch_size": 16}
    gpt2 |= {"progress": False, "eval_batches": 2}

    def command(workdir, **settings):
        config = str(REPO / "configs" / "pretrain" / "gpt2_tiny.py")
        return [sys.executable, "-m", "jft.cli", "pretrain", "--config", config, "--workdir", str(workdir)] + [
            f"--config.{key}={value}" for key, value in {**gpt2, **settings}.items()
        ]

    _run_here(command(tmp_path / "single", **{"parallel.backend": "jit"}))
    _run_two_processes(lambda parallel: command(tmp_path / "multi", **parallel))
    assert _max_difference(_final_params(tmp_path / "single"), _final_params(tmp_path / "multi")) < 1e-6

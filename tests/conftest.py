"""Shared test helpers: tiny random BERT configs and batches with padding."""

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The tests run on the CPU, also where libtpu is installed (tests/test_tpu.py compiles for a TPU
# with it): it would otherwise look for a TPU at start and say at length that there is none.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Eight CPU devices for the multi-device tests; single-device code uses the first one.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# XLA's compiled programs cached on disk: tests (and the runs they start as subprocesses) compile
# the same steps many times. The key is the program itself, so a code change cannot hit a stale entry.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "jft-tests-jax-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import transformers  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

from jft.data.loader import Loader  # noqa: E402
from jft.data.synthetic import write_corpus, write_topic_task, write_vocab  # noqa: E402, F401
from jft.errors import JftError  # noqa: E402
from jft.models.bert import init_params  # noqa: E402
from jft.train.parallel import Runner  # noqa: E402
from jft.train.steps import create_state, pretrain_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# A model small enough for seconds of CPU training, without dropout (tests that need dropout set it).
TINY_MODEL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
# configs/pretrain/tiny.py made small enough for a few seconds of CPU training.
SMALL_PRETRAIN = {
    "model.hidden_size": 32,
    "model.num_hidden_layers": 2,
    "model.num_attention_heads": 2,
    "model.intermediate_size": 64,
    "model.max_position_embeddings": 64,
    "data.seq_len": 32,
    "masking.max_predictions": 5,
    "batch_size": 16,
    "eval_batches": 2,
    "progress": False,
}


def set_keys(config, changes: dict) -> None:
    """Sets each dotted key of `changes` ('optim.lr': 1e-3) in a ConfigDict."""
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value


def pretrain_command(workdir, **overrides) -> list[str]:
    """`jft pretrain` with the tiny config, SMALL_PRETRAIN and `overrides` as --config.KEY=VALUE."""
    settings = {**SMALL_PRETRAIN, **overrides}
    config = str(REPO / "configs" / "pretrain" / "tiny.py")
    return [sys.executable, "-m", "jft.cli", "pretrain", "--config", config, "--workdir", str(workdir)] + [
        f"--config.{key}={value}" for key, value in settings.items()
    ]


def start_and_signal(command, checkpoint_dir, after_step, sig):
    """Starts a run, waits for a complete checkpoint of after_step, then sends sig; returns the exit status."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (checkpoint_dir / str(after_step)).is_dir():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def final_state(workdir, step=150):
    from jft.train.checkpoint import Checkpoints

    checkpoints = Checkpoints(workdir / "checkpoints")
    assert checkpoints.latest_step() == step
    state, meta = checkpoints.restore()
    checkpoints.close()
    return state, meta


def pretrain_steps(setup, rows, backend: str, steps: int = 3, params=None):
    """`steps` pretraining steps of `setup` (any family's) on batches of 16 prepared rows under a
    Runner of `backend`, from params (default: fresh, key 0); the state and the last metrics."""
    runner = Runner(backend)
    step = runner.compile(functools.partial(pretrain_step, setup=setup))
    params = init_params(setup.model, jax.random.PRNGKey(0)) if params is None else params
    state = runner.put_replicated(create_state(params, setup.tx))
    rng = runner.put_replicated(jax.random.PRNGKey(1))
    loader = Loader(rows, 16, seed=0)
    for index in range(steps):
        state, metrics = step(state, runner.put_batch(loader.batch(index)), rng)
    return runner.get(state), runner.get(metrics)


def largest_difference(a, b) -> float:
    """The largest absolute difference between the leaves of two trees of the same shapes."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def corpus_vocab(text, out_dir, vocab_size: int = 200):
    """A WordPiece vocabulary trained on a corpus file, written to out_dir (returned)."""
    from jft.data.corpus import read_documents
    from jft.data.tokenizer import train_vocab

    train_vocab(lambda: (line for d in read_documents(str(text)) for line in d), out_dir, vocab_size=vocab_size)
    return out_dir


def tiny_hf_bert(root: Path, documents: int = 40) -> Path:
    """root/bert: a tiny random BERT in Hugging Face format (TINY_MODEL, 200 tokens) with a
    vocabulary trained on root/corpus.txt, a corpus of the test generator."""
    import jax

    from jft.models import hf
    from jft.models.bert import BertConfig, BertForPreTraining, init_params

    corpus_vocab(write_corpus(root / "corpus.txt", documents=documents), root / "bert")
    config = BertConfig(vocab_size=200, **TINY_MODEL)
    hf.save(root / "bert", config, init_params(BertForPreTraining(config), jax.random.PRNGKey(0)))
    return root / "bert"


def tiny_hf_config(**overrides) -> transformers.BertConfig:
    """A small random BERT in Hugging Face's config class."""
    values = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=48,
        type_vocab_size=2,
    )
    values.update(overrides)
    return transformers.BertConfig(**values)


def make_batch(seed: int, batch: int = 3, seq: int = 12, vocab: int = 101, padded: bool = True) -> dict:
    """input_ids, attention_mask (right padding of varying length when padded), token_type_ids."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, vocab, (batch, seq)).astype(np.int32)
    lengths = rng.integers(seq // 3, seq, batch) if padded else np.full(batch, seq)
    attention_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    input_ids = np.where(attention_mask == 1, input_ids, 0).astype(np.int32)
    token_type_ids = (np.arange(seq)[None, :] >= (lengths // 2)[:, None]).astype(np.int32) * attention_mask
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def masked_positions(seed: int, batch: int, seq: int, count: int) -> np.ndarray:
    """[batch, count] distinct positions per row."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(seq, count, replace=False) for _ in range(batch)]).astype(np.int32)


@contextlib.contextmanager
def raises_one_line(match: str):
    """pytest.raises(JftError, match=match) that also checks the message is a single line."""
    with pytest.raises(JftError, match=match) as caught:
        yield caught
    assert "\n" not in str(caught.value), str(caught.value)


@pytest.fixture
def max_abs_diff():
    return lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@dataclasses.dataclass
class FaultCase:
    """A case of a table of faults (tests/test_faults.py, tests/test_outputs.py): the command made
    in a fresh directory against shared inputs, the whole stderr line it gives and its exit code."""

    name: str
    command: Callable[[Path, Path], list[str]]  # (case directory, shared inputs) -> argv
    message: str  # the whole stderr line; {tmp}: the case's directory, {files}: the inputs, {*}: any text
    code: int = 2

    def check(self, err: str, code: int, tmp: Path, files: Path) -> None:
        """That the command gave one line, this case's, and its exit code."""
        pattern = re.escape(self.message.replace("{tmp}", str(tmp)).replace("{files}", str(files)))
        pattern = pattern.replace(re.escape("{*}"), ".*")
        assert err.endswith("\n") and err.count("\n") == 1 and re.fullmatch(pattern, err[:-1]), err
        assert code == self.code


def perturbed(model, seed: int):
    """A PyTorch model with every weight moved by noise, so that zero biases and unit LayerNorm
    scales show a misplaced array; in eval mode."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    return model.eval()


def padded_ids(seed: int, vocab: int, pad: int, first: int, batch: int = 3, seq: int = 12):
    """input_ids (first .. vocab-1, `pad` on padding) and attention_mask [batch, seq], rows padded
    on the right (the first row not at all)."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[seq], rng.integers(2, seq, batch - 1)])
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return np.where(mask == 1, rng.integers(first, vocab, (batch, seq)), pad).astype(np.int32), mask


def tensorboard_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """The scalars TensorBoard shows of a run's event files: read in the order they were written,
    a SessionLog START at step s hiding the events at s and after (TensorBoard's purge)."""
    shown: dict[str, dict[int, float]] = {}
    for file in sorted(directory.iterdir(), key=lambda f: (int(f.name.split(".")[3]), f.stat().st_mtime_ns)):
        data, at = file.read_bytes(), 0
        while at < len(data):
            length = int.from_bytes(data[at : at + 8], "little")
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4  # length, its CRC, the event, its CRC
            if event.session_log.status == event_pb2.SessionLog.START:
                shown = {tag: {s: v for s, v in steps.items() if s < event.step} for tag, steps in shown.items()}
            for value in event.summary.value:
                shown.setdefault(value.tag, {})[event.step] = value.simple_value
    return shown

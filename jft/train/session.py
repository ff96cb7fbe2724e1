"""A training run's session with its run directory: the rules of a start and of a resume.

The order of a (re)start, the same for every stage. Steps 1-4 only read, so a refusal leaves the
workdir as it was, and on several processes every one of them raises the same error:
1. hold the workdir (run.lock, process 0 for all) and read its run.json: a run there is resumed;
   open init_from while the run has no checkpoint of its own (its weights come from there);
2. (the stage) find the data and the tokenizer;
3. the model (`model`): the run's own, of which only how it is computed may change; else
   init_from's architecture, of which a config may change only the family's changeable fields
   (dropout, dtype, ...); else a preset and fields, from scratch;
4. a resumed run must have the same settings, but for those that do not change what it computes
   (`may_change`), and the same data by content: `compare` and `differ` collect the differences,
   `verified` refuses with all of them;
5. write run.json and the tokenizer of a new run (`start`), or record a resumed run's new length;
6. restore the newest good checkpoint, setting damaged ones aside (`restore`), or begin from
   init_from's weights.
"""

import contextlib
import dataclasses
import json
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import safetensors.numpy
import tokenizers

from jft.config import leaf_keys, value_at
from jft.defaults import defaults_of, stage_of
from jft.errors import JftError, choices
from jft.files import atomic_write, file_sha256, finite_or_null
from jft.models import Family, check_own_fields, get
from jft.params import flatten, unflatten
from jft.train import rundir
from jft.train.checkpoint import Checkpoints, saved_steps
from jft.train.lock import hold
from jft.train.log import last_metrics
from jft.train.parallel import agree


def config_differences(saved: Mapping, current: Mapping, may_change: Sequence[str]) -> list[str]:
    """'key: run X, now Y' for every setting that differs, except the keys (or groups) in may_change.
    Both sides are compared as run.json holds them (tuples as lists, numbers that are not finite as
    null), so that a value does not differ from itself after a round trip through JSON."""
    ours, theirs = _flat(_as_json(saved)), _flat(_as_json(current))
    differences = []
    for key in sorted(set(ours) | set(theirs)):
        if any(key == k or key.startswith(f"{k}.") for k in may_change):
            continue
        if ours.get(key) != theirs.get(key):
            differences.append(f"{key}: run {ours.get(key)!r}, now {theirs.get(key)!r}")
    return differences


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(finite_or_null(value), default=str))


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclasses.dataclass
class RunSession:
    """What a training run knows of its workdir while it holds it (see the module docstring)."""

    workdir: Path
    stage: str
    may_change: tuple[str, ...]
    run: dict | None = None
    init: rundir.InitSource | None = None
    differences: list[str] = dataclasses.field(default_factory=list)
    checking: bool = True
    started_anew: str = ""  # why a run in the workdir starts over (said when it does, in `start`)

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, workdir: str | Path, stage: str, init_from: str, may_change: Sequence[str], family: str = ""
    ) -> Iterator["RunSession"]:
        """Holds workdir for a run of `stage` ('pretraining', 'finetuning') and opens what is there
        (steps 1 of the module docstring; family: the config's model.family, which init_from's must
        be when set). An error before `verified` reaches every process."""
        session = cls(Path(workdir).absolute(), stage, tuple(may_change))
        try:
            with hold(session.workdir, check=lambda workdir: rundir.check_workdir(workdir, init_from)):
                session.run = rundir.read_run(session.workdir)
                if session.run is not None:
                    rundir.require_stage(session.workdir, session.run, stage, f"give {stage} another --workdir")
                    session._forget_a_run_that_saved_nothing()
                if init_from and not saved_steps(session.workdir / rundir.CHECKPOINTS):
                    session.init = rundir.open_init(init_from)
                    check_init_family(session.init, family)
                if init_from and session.run is not None:
                    session._compare_init(init_from)
                yield session
        except BaseException as error:
            if session.checking and not getattr(error, "agreed", False):  # the others learn of it in `verified`
                session.checking = False
                agree(error)
            raise

    def _saved_nothing(self) -> bool:
        return not saved_steps(self.workdir / rundir.CHECKPOINTS) and not saved_steps(self.workdir / rundir.BEST)

    def _forget_a_run_that_saved_nothing(self) -> None:
        """A run that holds no checkpoint and no best model (stopped before its first, or every one
        set aside as damaged) has nothing to resume: it starts anew, with the settings given now (its
        run.json and tokenizer are written again). A pretraining run's rows, prepared in its workdir,
        are used again where they match the data settings (the stage checks them as a new run's)."""
        if not self._saved_nothing():
            return
        saved = "saved step or best model" if self.stage == "finetuning" else "saved step"
        self.started_anew = f"{self.workdir}: its run holds no {saved}; starting it anew."
        self.run = None

    @property
    def resuming(self) -> bool:
        return self.run is not None

    def model(self, group: Mapping, tokenizer: tokenizers.Tokenizer) -> tuple[Family, Any]:
        """The run's family and model (step 3 of the module docstring): a resumed run's own, whose
        other settings are differences; else new_model's."""
        if self.run is None:
            return new_model(group, tokenizer, self.init)
        return _trainable(self._resumed_model(group, _set_fields(group)), _vocab_size(tokenizer))

    def _resumed_model(self, group: Mapping, values: dict) -> tuple[Family, Any]:
        family, saved = rundir.run_model(self.run)
        saved = dataclasses.asdict(saved)
        if group.get("family") and group["family"] != family.name:
            self.differ(f"model.family: run {family.name!r}, now {group['family']!r}")
        self.differ(
            *(
                f"model.{name}: run {saved[name]!r}, now {value!r}"
                for name, value in values.items()
                if name not in family.compute_fields and value != saved[name]
            )
        )
        preset = self.run["config"]["model"].get("preset")
        if self.run.get("init") is None and group["preset"] != preset:
            self.differ(f"model.preset: run {preset!r}, now {group['preset']!r}")
        compute = {name: value for name, value in values.items() if name in family.compute_fields}
        return family, family.config({**saved, **compute})

    def compare(self, config: Mapping) -> None:
        """A resumed run's settings against the config's (the may_change keys aside). A key the run
        does not record, made by a jft from before the key existed, counts as its default, which
        keeps what that jft did."""
        if self.run is not None:
            recorded = flatten(self.run["config"])
            defaults = defaults_of(stage_of(config))
            for key in leaf_keys(defaults) if defaults is not None else []:
                path = key.replace(".", "/")
                if path not in recorded and not any(p.startswith(path + "/") for p in recorded):
                    recorded[path] = value_at(defaults, key)
            self.differ(*config_differences(unflatten(recorded), config, self.may_change))

    def _compare_init(self, init_from: str) -> None:
        """A resumed run's init_from must name the model it started from: the same path (a pretraining
        there may have gone on since the run's first checkpoint), the same weights (runs move), or
        nothing there any more (a run with checkpoints does not read it). A run of a jft from before
        the path and weights were recorded is not compared."""
        recorded, path = self.run.get("init"), rundir.init_path(init_from)
        if recorded is None:
            self.differ(f"init_from: the run started from scratch, now {init_from}")
        elif "weights_sha256" in recorded and (self.init or (str(path) != recorded["path"] and path.exists())):
            source = self.init or rundir.open_init(init_from)  # opened when the run has no checkpoint yet
            if source.weights_sha256() != recorded["weights_sha256"]:
                self.differ(f"init_from: the run started from {recorded['from']}, now {source.describe()}")

    def differ(self, *differences: str) -> None:
        """Records what a resumed run would change (refused by `verified`)."""
        self.differences += differences

    def verified(self) -> None:
        """The end of the checks: refuses a resume with other settings, naming every difference,
        and makes every process raise the same error when any process met one."""
        self.checking = False
        error = None
        if self.differences:
            error = JftError(
                f"{self.workdir} holds a {self.stage} run with other settings ({'; '.join(self.differences)}). "
                f"Resume it with the settings it was started with (`jft config {self.workdir}` prints them), or "
                f"start a new --workdir; --config.init_from={self.workdir} starts from its weights."
            )
        agree(error)

    def start(
        self, config: Mapping, family: Family, model: Any, data: dict, tokenizer: tokenizers.Tokenizer, **extra: Any
    ) -> None:
        """Writes run.json and the tokenizer of a new run (process 0; a resumed run has them)."""
        if self.run is None:
            if self.started_anew and jax.process_index() == 0:
                print(self.started_anew, flush=True)
            origin = None
            if self.init is not None:
                origin = {"from": self.init.describe(), "path": str(self.init.path)}
                origin["weights_sha256"] = self.init.weights_sha256()
            self.run = rundir.new_run(self.stage, config, family, model, data, init=origin, **extra)
            if jax.process_index() == 0:
                rundir.write_run(self.workdir, self.run, tokenizer)

    def record(self, config: Mapping, **fields: Any) -> None:
        """Writes the run's config (and other fields) into its run.json (process 0): what a run may
        change on resume and what it then was (a longer run's total_steps), or what it made after
        it started (the digest of θ_ref)."""
        self.run = {**self.run, "config": dict(config), **fields}
        if jax.process_index() == 0:
            rundir.write_run(self.workdir, self.run)

    def uses_reference(self) -> bool:
        """Whether the run pulls toward θ_ref read from reference.safetensors (L2-SP: l2.weight
        above 0, l2.reference=init, from init_from: a fine-tuning, or a pretraining continued from
        another model); with λ = 0 nothing pulls."""
        l2 = self.run["config"].get("l2", {}) if self.run else {}
        return bool(l2.get("weight")) and l2.get("reference") == "init" and self.run.get("init") is not None

    def check_reference(self) -> None:
        """θ_ref of a resumed L2-SP run must be the file it saved (run.json keeps its SHA-256; runs
        of a jft before it did, only that it is there): without it the penalty would pull toward 0."""
        file = self.workdir / rundir.REFERENCE
        if not file.is_file():
            raise JftError(
                f"{file} is missing: it holds θ_ref, the weights this L2-SP run (l2.reference=init) pulls toward, "
                "and without it the penalty would pull toward 0. Put the file back, or start a new --workdir "
                "(init_from makes it anew)."
            )
        expected = self.run.get("reference_sha256")
        if expected is not None and file_sha256(file) != expected:
            raise JftError(
                f"{file} is not the θ_ref this run saved (its SHA-256 differs from run.json's): it was changed or "
                "damaged. Put the run's own file back, or start a new --workdir."
            )

    def saved_reference(self) -> dict | None:
        """θ_ref as the run saved it (None: it saved none)."""
        file = self.workdir / rundir.REFERENCE
        return unflatten(safetensors.numpy.load_file(file)) if file.is_file() else None

    def save_reference(self, reference: Mapping) -> None:
        """Writes θ_ref (process 0), its digest in run.json for a resume to check."""
        if jax.process_index() == 0:
            file = self.workdir / rundir.REFERENCE
            atomic_write(file, lambda path: safetensors.numpy.save_file(flatten(reference), path))
            self.record(self.run["config"], reference_sha256=file_sha256(file))

    def restore(self, checkpoints: Checkpoints, template: Any) -> tuple[Any, dict, int] | None:
        """(state, meta, step) of the run's newest good checkpoint, damaged newer ones set aside in
        <workdir>/damaged; None for a run without checkpoints. When every checkpoint is damaged, they
        are all set aside and the error says so (the next start begins the run again)."""
        had = checkpoints.latest_step() is not None
        restored = checkpoints.restore_newest_good(template, set_aside=self.workdir / rundir.DAMAGED)
        if restored is None and had:
            raise JftError(
                f"every checkpoint in {checkpoints.directory} is damaged; they are set aside in "
                f"{self.workdir / rundir.DAMAGED}. Run the same command again to start this run over from step 0."
            )
        return restored

    def finished(self, step: int) -> dict[str, float]:
        """What a run that finished before says, and its last metrics."""
        print(f"{self.workdir}: this run finished at step {step}; nothing to do.", flush=True)
        return last_metrics(self.workdir)


def new_model(
    group: Mapping, tokenizer: tokenizers.Tokenizer, init: rundir.InitSource | None = None
) -> tuple[Family, Any]:
    """The family and model of a run that starts now: init_from's architecture (a config may set
    only the family's changeable fields differently), else one from scratch, which takes its
    vocabulary's size (and the family's token_fields); it must be able to train here, and the
    vocabulary must fit its embedding table."""
    values = _set_fields(group)
    found = _checkpoint_model(init, group, values) if init is not None else _new_model(group, values, tokenizer)
    return _trainable(found, _vocab_size(tokenizer))


def _set_fields(group: Mapping) -> dict:
    """The model fields a config's `model` group sets (not None), family and preset aside."""
    return {name: value for name, value in group.items() if name not in ("family", "preset") and value is not None}


def _vocab_size(tokenizer: tokenizers.Tokenizer | None) -> int | None:
    """The tokens of a run's vocabulary; None for a run without one (an image model's)."""
    return None if tokenizer is None else tokenizer.get_vocab_size()


def _trainable(found: tuple[Family, Any], vocab_size: int | None) -> tuple[Family, Any]:
    """found, once its model can train on this platform with a vocabulary of vocab_size tokens."""
    _, model = found
    problem = model.platform_problem(jax.default_backend())
    if problem:
        raise JftError(problem + ".")
    if model.dtype == "float16":
        raise JftError(
            "model.dtype float16 cannot train: jft has no loss scaling, so small gradients would vanish; "
            "use bfloat16 (the same speed on GPUs and TPUs, float32's range) or float32."
        )
    if vocab_size is not None and vocab_size > model.vocab_size:
        raise JftError(
            f"the vocabulary has {vocab_size} tokens, more than the model's vocab_size {model.vocab_size}; "
            "use the vocabulary the model was made with, or a model with a larger embedding table."
        )
    return found


def check_init_family(init: rundir.InitSource, family: str) -> None:
    """init_from's family must be the config's model.family when that is set: one error, before
    any data is read by the other family's rules."""
    if family and family != init.family.name:
        raise JftError(
            f"the config contradicts the architecture of init_from {init.path}: model.family={family!r} (it is a "
            f"{init.family.name!r} model). A run keeps its checkpoint's architecture; use a {init.family.name} "
            f"config, or init_from a {family} model."
        )


def _checkpoint_model(init: rundir.InitSource, group: Mapping, values: dict) -> tuple[Family, Any]:
    """init_from's architecture as it is: a field the config sets must agree with it, but for
    the family's changeable fields; every contradiction is listed in one error."""
    check_init_family(init, group.get("family", ""))
    family, source = init.family, f"init_from {init.path}"
    theirs = dataclasses.asdict(init.model)
    clashes, overrides = [], []
    for name, value in values.items():
        if name in family.changeable_fields:
            continue
        if name not in theirs:
            clashes.append(f"model.{name}={value!r} (a {family.name} model has no such field)")
        elif value != theirs[name]:
            clashes.append(f"model.{name}={value!r} (it has {theirs[name]!r})")
            overrides.append(shlex.quote(f"--config.model.{name}={theirs[name]}"))
    if clashes:
        fix = (
            f"give init_from's values ({' '.join(overrides)}) or remove these settings"
            if overrides
            else "remove these settings"
        )
        raise JftError(
            f"the config contradicts the architecture of {source}: {'; '.join(clashes)}. A run keeps its "
            f"checkpoint's architecture; {fix} (only {choices(family.changeable_fields)} may differ)."
        )
    return family, family.config({**theirs, **values})


def _new_model(group: Mapping, values: dict, tokenizer: tokenizers.Tokenizer) -> tuple[Family, Any]:
    """A model from scratch: the preset's sizes, the vocabulary's size and the family's
    token_fields, then the fields the config sets."""
    family = get(group.get("family") or "bert")
    if group.get("family"):
        check_own_fields(family, values)  # the fields the config sets (another family's unset ones are no matter)
    if group["preset"] and group["preset"] not in family.presets:
        raise JftError(f"unknown model.preset '{group['preset']}'; choose one of {choices(sorted(family.presets))}.")
    from_tokenizer = {} if tokenizer is None else {"vocab_size": tokenizer.get_vocab_size()}
    if family.token_fields is not None and tokenizer is not None:
        from_tokenizer |= family.token_fields(tokenizer)
    values = {**family.presets.get(group["preset"], {}), **from_tokenizer, **values}
    missing = [name for name in family.size_fields if name not in values]
    if missing:
        raise JftError(
            f"a model from scratch needs its sizes: set model.preset ({', '.join(family.presets)}) or "
            f"{', '.join(f'model.{name}' for name in missing)}; or start from a checkpoint with init_from."
        )
    return family, family.config(values)

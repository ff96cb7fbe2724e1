"""What a training run reports: metrics to <workdir>/metrics.jsonl (one JSON object a line) and
TensorBoard, the rate of work between log steps, and a progress bar, from process 0 only; and
what it does when it diverges (DivergenceGuard), on every process alike."""

import datetime
import json
import math
import sys
import time
from pathlib import Path

import jax
from ml_collections import ConfigDict
from tensorboardX import SummaryWriter
from tqdm import tqdm

from jft.errors import JftError, RunFailed
from jft.files import appended_records, cut_torn_line, finite_or_null, write_text
from jft.train.checkpoint import saved_steps

METRICS = "metrics.jsonl"


def check_guard(guard: ConfigDict) -> None:
    if guard.max_skipped_in_a_row < 1:
        raise JftError(f"guard.max_skipped_in_a_row must be at least 1, got {guard.max_skipped_in_a_row}.")
    if guard.warn_rising_evals < 0 or not guard.warn_loss_above > 0:
        raise JftError(
            "guard.warn_rising_evals must be at least 0 and guard.warn_loss_above above 0, got "
            f"{guard.warn_rising_evals} and {guard.warn_loss_above}."
        )


class DivergenceGuard:
    """Stops a run whose updates keep failing (RunFailed), and warns about a loss that is huge or
    keeps rising. Every process sees the same global metrics, so all stop at the same step."""

    def __init__(self, guard: ConfigDict, workdir: Path, weights: str):
        self.guard, self.workdir, self.weights = guard, workdir, workdir / weights
        self.warned_loss = False
        self.rises: dict[str, tuple[float, int]] = {}  # eval loss name: (last value, rises in a row)

    def train(self, step: int, metrics: dict[str, float]) -> None:
        if metrics.get("skipped_in_a_row", 0) >= self.guard.max_skipped_in_a_row:
            lower = "Lower optim.lr (or raise optim.warmup_steps) in a new --workdir"
            if saved_steps(self.weights):
                advice = f"Its {self.weights.name}/ holds only finite weights from before. {lower}, with "
                advice += f"--config.init_from={self.workdir} to start from them."
            else:
                advice = f"It saved no weights to start again from. {lower}."
            raise RunFailed(
                f"stopped at step {step}: the last {int(metrics['skipped_in_a_row'])} updates were skipped because "
                f"their results were not finite (loss {metrics['loss']:.4g}); the run diverged. {advice}"
            )
        loss = metrics["loss"]
        huge = not math.isfinite(loss) or loss > self.guard.warn_loss_above
        if huge and not self.warned_loss:
            _warn(f"step {step}: the training loss is {loss:.4g} (guard.warn_loss_above {self.guard.warn_loss_above})")
        self.warned_loss = huge

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if not name.endswith("loss") or not self.guard.warn_rising_evals:
                continue
            last, rises = self.rises.get(name, (math.inf, 0))
            rises = rises + 1 if value > last else 0
            self.rises[name] = (value, rises)
            if rises == self.guard.warn_rising_evals:
                _warn(f"step {step}: the evaluation {name} rose {rises} times in a row (now {value:.4g})")


def _drop_records_after(file: Path, step: int) -> None:
    """Rewrites a metrics file (whole, atomic_write) without its records of steps after `step`."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return
    kept = [line for line in lines if _step_of(line) <= step]
    if len(kept) < len(lines):
        write_text(file, "".join(kept))


def _step_of(line: str) -> float:
    """The step of a metrics line; lines that are no record are kept (step -inf)."""
    try:
        record = json.loads(line)
    except ValueError:
        return -math.inf
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int | float) else -math.inf


def _warn(text: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {text}", file=sys.stderr, flush=True)


class MetricWriter:
    """Writes from process 0 only; other processes' writers do nothing. A run that resumes at
    `start` drops the records of the steps after it (a stopped run's, which it does again) when
    it first writes, so that a run refused before then leaves the file as it was; one that starts
    at step 0 (anew, over an attempt that saved nothing) drops them all. TensorBoard is told the
    same (its purge_step: it hides the earlier events from there on)."""

    def __init__(self, workdir: str | Path, start: int = 0):
        self.enabled = jax.process_index() == 0
        self.workdir, self.file, self.start, self.jsonl = Path(workdir), Path(workdir) / METRICS, start, None
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            cut_torn_line(self.file)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.jsonl is None:
            kept_through = self.start or -1
            _drop_records_after(self.file, kept_through)
            self.jsonl = self.file.open("a", encoding="utf-8")
            self.tensorboard = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=kept_through + 1)
        self.jsonl.write(json.dumps(finite_or_null({"step": step, "split": split, **metrics}), allow_nan=False) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            if math.isfinite(value):  # an infinite gradient norm: in metrics.jsonl as null, not plotted
                self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.tensorboard.close()


class CompileClock:
    """Seconds jax has spent tracing, lowering and compiling in this process, from jax's own
    monitoring events: a new batch shape (a bucket), the first evaluation or a population
    compiles in the middle of a run, and that time is no measure of the steps to come."""

    seconds = 0.0
    _listening = False

    @classmethod
    def now(cls) -> float:
        if not cls._listening:
            jax.monitoring.register_event_duration_secs_listener(cls._heard)
            cls._listening = True
        return cls.seconds

    @classmethod
    def _heard(cls, name: str, seconds: float, **_) -> None:
        if name.startswith("/jax/core/compile/"):
            cls.seconds += seconds


class TrainingLog:
    """What a training run reports (jft.train.loop calls it). `step` after each step with the work
    it did (sequences or examples), `train` at log steps with the step's metrics on the host (it
    adds the rate since the last log step), `write` for evaluations (one line each, with `best`
    when the caller keeps one); `last` holds the latest of each.

    The first step compiles the program: its time is reported on its own and left out of rates.
    The time left is the steady time per step so far, compiling left out (CompileClock), times the
    steps left. Progress is a bar on a terminal and a line every log step otherwise (a log file
    gets no carriage returns), the task loss and the L2 penalty apart; with progress off, neither (the
    compile time and the evaluations are said either way)."""

    RATES = {"sequences": "seq/s", "examples": "ex/s"}

    def __init__(
        self,
        workdir: Path,
        total_steps: int,
        start: int,
        desc: str,
        unit: str,
        progress: bool,
        guard: ConfigDict,
        weights: str = "checkpoints",
    ):
        """weights: the folder of workdir whose weights another run starts from (init_from)."""
        self.writer = MetricWriter(workdir, start)
        self.guard = DivergenceGuard(guard, workdir, weights)
        self.show = progress and jax.process_index() == 0
        self.total, self.desc, self.start = total_steps, desc, start
        self.rate_name, self.rate_label = f"{unit}_per_second", self.RATES[unit]
        self.bar: tqdm | None = None
        self.last: dict[str, float] = {"step": start}
        self._began = self._mark = time.perf_counter()
        self._work = 0
        self._steady: tuple[float, int, float] | None = None  # (time, step, compiling) after the first step
        CompileClock.now()

    def step(self, step: int, work: int) -> None:
        self.last["step"] = step
        now = time.perf_counter()
        if self._steady is None:  # the first step: compiling, mostly
            self.note(f"{self.desc}: compiled and ran the first step in {now - self._began:.1f} s")
            self._steady, self._mark = (now, step, CompileClock.now()), now
            if self.show and sys.stderr.isatty():
                self.bar = tqdm(total=self.total, initial=step, desc=self.desc, unit=" steps", dynamic_ncols=True)
            return
        self._work += work
        if self.bar is not None:
            self.bar.update(1)

    def train(self, step: int, metrics: dict) -> None:
        metrics = {name: float(value) for name, value in metrics.items()}
        now = time.perf_counter()
        if self._work:  # a rate needs steps after the first
            metrics = {**metrics, self.rate_name: self._work / (now - self._mark)}
        self._mark, self._work = now, 0
        rate = metrics.get(self.rate_name)
        losses = _losses(metrics)
        if self.bar is not None:
            shown = {name: _figure(value, 3) for name, value in losses.items()}
            if rate is not None:
                shown[self.rate_label] = f"{rate:,.0f}"
            self.bar.set_postfix(shown)
        elif self.show:
            per = f", {rate:,.1f} {self.rate_label}" if rate is not None else ""
            said = ", ".join(f"{name} {_figure(value, 4)}" for name, value in losses.items())
            line = f"{self.desc} step {step}/{self.total}: {said}{per}{self._eta(now, step)}"
            print(line, file=sys.stderr, flush=True)
        self.write(step, "train", metrics)
        self.guard.train(step, metrics)

    def _eta(self, now: float, step: int) -> str:
        since, first, compiling = self._steady
        if step <= first or step >= self.total:
            return ""
        steady = max(now - since - (CompileClock.now() - compiling), 0.0)
        left = steady / (step - first) * (self.total - step)
        return f", {datetime.timedelta(seconds=round(left))} left"

    def write(self, step: int, split: str, metrics: dict[str, float], best: str = "") -> None:
        """Records a split's metrics; an evaluation (eval, test) is said in one line, with best
        (what the run keeps as its best so far) after it."""
        self.writer.write(step, split, metrics)
        self.last.update({f"{split}_{name}": value for name, value in metrics.items()})
        if split == "eval":
            self.guard.eval(step, metrics)
        if split == "train":  # said by `train`'s progress line
            return
        scores = sorted(metrics, key=lambda name: (name.endswith("loss"), name))  # the task's scores first
        said = ", ".join(f"{name} {metrics[name]:.4f}" for name in scores)
        self.note(f"{self.desc} step {step}/{self.total}: {split} {said}" + (f" ({best})" if best else ""))

    def note(self, text: str) -> None:
        """A line for the user (process 0), between progress updates, with progress on or off."""
        if jax.process_index() != 0:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _losses(metrics: dict[str, float]) -> dict[str, float]:
    """The losses a progress line shows: the task loss, the L2 penalty and the joint objective's
    loss (mlm, lm or pre: μ·L_pre's L_pre) apart where a step reports them (fine-tuning), else the loss."""
    if "task_loss" in metrics:
        shown = {"task loss": metrics["task_loss"], "l2 penalty": metrics.get("l2_penalty", 0.0)}
        joint = [name for name in metrics if name.endswith("_loss") and name != "task_loss"]  # mlm, lm or pre
        return shown | {name.replace("_", " "): metrics[name] for name in joint}
    return {"loss": metrics["loss"]}


def _figure(value: float, decimals: int) -> str:
    """value with `decimals` decimals, or as 3.2e-06 where those would show a small value as 0 (an L2-SP
    penalty early in a run)."""
    return f"{value:.{decimals}f}" if value == 0 or abs(value) >= 10 ** (1 - decimals) else f"{value:.1e}"


def last_metrics(workdir: str | Path) -> dict[str, float]:
    """The latest value of every metric in <workdir>/metrics.jsonl, named as TrainingLog.last names them."""
    last: dict[str, float] = {}
    for row in read_metrics(workdir):
        step, split = row.pop("step"), row.pop("split")
        last.update({"step": step, **{f"{split}_{name}": value for name, value in row.items()}})
    return last


def read_metrics(workdir: str | Path) -> list[dict]:
    """The records of <workdir>/metrics.jsonl ({"step", "split", metrics...}), a line cut short by a
    stop or damaged by hand left out with a warning."""
    return appended_records(Path(workdir) / METRICS, ("step", "split"), warn=jax.process_index() == 0)

"""What a training run reports: metrics to <workdir>/metrics.jsonl (one JSON object a line) and
TensorBoard, the rate of work between log steps, and a progress bar; from process 0 only."""

import json
import time
from pathlib import Path

import jax
from tensorboardX import SummaryWriter
from tqdm import tqdm


class MetricWriter:
    """Writes from process 0 only; other processes' writers do nothing."""

    def __init__(self, workdir: str | Path):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            self.jsonl = (workdir / "metrics.jsonl").open("a", encoding="utf-8")
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


class TrainingLog:
    """The reporting both training loops share. Call `step` after each step with the work it did
    (sequences or examples), `train` at log steps with the step's metrics as host floats (which adds
    the rate since the last log step), `write` for evaluations; `last` holds the latest of each."""

    def __init__(self, workdir: str | Path, total_steps: int, start: int, desc: str, unit: str, progress: bool):
        self.writer = MetricWriter(workdir)
        self.bar = tqdm(
            total=total_steps,
            initial=start,
            desc=desc,
            unit=" steps",
            disable=not progress or jax.process_index() != 0,
        )
        self.rate_name = f"{unit}_per_second"
        self.last: dict[str, float] = {"step": start}
        self._mark, self._work = time.perf_counter(), 0

    def step(self, step: int, work: int) -> None:
        self._work += work
        self.last["step"] = step
        self.bar.update(1)

    def train(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        metrics = {**metrics, self.rate_name: self._work / (now - self._mark)}
        self._mark, self._work = now, 0
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", per_s=f"{metrics[self.rate_name]:.0f}")
        self.write(step, "train", metrics)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.writer.write(step, split, metrics)
        self.last.update({f"{split}_{name}": value for name, value in metrics.items()})

    def close(self) -> None:
        self.writer.close()
        self.bar.close()


def last_metrics(workdir: str | Path) -> dict[str, float]:
    """The latest value of every metric in <workdir>/metrics.jsonl, named as TrainingLog.last names them."""
    last: dict[str, float] = {}
    file = Path(workdir) / "metrics.jsonl"
    lines = file.read_text(encoding="utf-8").splitlines() if file.is_file() else []
    for row in map(json.loads, lines):
        step, split = row.pop("step"), row.pop("split")
        last.update({"step": step, **{f"{split}_{name}": value for name, value in row.items()}})
    return last

"""Metrics to disk: one JSON object a line in <workdir>/metrics.jsonl, and TensorBoard event files."""

import json
from pathlib import Path

import jax
from tensorboardX import SummaryWriter


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

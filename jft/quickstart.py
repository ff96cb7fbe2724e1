"""`jft quickstart`: the whole pipeline on embedded synthetic data, to show that pretraining helps.

1. write a synthetic corpus (jft.data.synthetic: topic documents with a fixed sentence syntax);
2. pretrain a tiny BERT on it with the real `jft pretrain` (WordPiece vocabulary trained on the
   corpus, rows prepared, masked-LM + next-sentence, Orbax checkpoints);
3. fine-tune on a small topic task whose labeled sentences use half of each topic's nouns and
   whose held-out sentences use the other half, once from the pretrained checkpoint and once
   from scratch, with the same objective, steps and seeds;
4. print a summary table and write quickstart.png (loss curves, accuracies) and summary.json.
"""

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from jft import finetune, plots, pretrain
from jft.data.synthetic import TOPICS, write_corpus, write_topic_task
from jft.defaults import finetune as finetune_config
from jft.defaults import pretrain as pretrain_config
from jft.files import read_json_object, write_json
from jft.train.lock import hold
from jft.train.log import read_metrics
from jft.train.rundir import TOKENIZER

SECONDS = "seconds.json"  # the seconds each stage took, over every invocation
# Half of each topic's nouns for the labeled sentences, the other half for the held-out ones.
SEEN_NOUNS, UNSEEN_NOUNS = slice(0, 4), slice(4, None)


def run(config: ConfigDict, workdir: str | Path) -> dict:
    """Runs the quickstart in workdir; returns the summary (also in <workdir>/summary.json)."""
    workdir = Path(workdir).absolute()
    with hold(workdir):
        return _run(config, workdir)


def _run(config: ConfigDict, workdir: Path) -> dict:
    corpus = write_corpus(workdir / "corpus.txt", documents=config.corpus.documents, seed=config.corpus.seed)
    _stage(f"1/2 pretraining a tiny BERT on {corpus} ({config.corpus.documents} synthetic documents)")
    pretrained_dir = workdir / "pretrain"
    with _timed(workdir, "pretrain"):
        pretrain.train_and_evaluate(_pretrain_config(config, corpus), pretrained_dir)
    tokenizer = pretrained_dir / TOKENIZER

    data_dir = workdir / "task"
    data_dir.mkdir(exist_ok=True)
    f = config.finetune
    eval_file = write_topic_task(data_dir / "eval.csv", f.eval_examples, seed=10_000, nouns=UNSEEN_NOUNS)
    _stage(
        f"2/2 fine-tuning on {f.train_examples} labeled sentences, from pretrained and from scratch, "
        f"{f.seeds} seeds; accuracy on {f.eval_examples} held-out sentences with unseen nouns"
    )
    finals = {"pretrained": [], "scratch": []}
    with _timed(workdir, "finetune"):
        for seed in range(f.seeds):
            train_file = write_topic_task(data_dir / f"train{seed}.csv", f.train_examples, seed=seed, nouns=SEEN_NOUNS)
            for init in finals:
                print(f"-- seed {seed + 1} of {f.seeds}, from {init}", flush=True)
                run_config = _finetune_config(config, train_file, eval_file, seed)
                if init == "pretrained":
                    run_config.init_from = str(pretrained_dir)
                else:
                    run_config.model = config.model
                    run_config.data.vocab = str(tokenizer)
                finals[init].append(finetune.train_and_evaluate(run_config, workdir / f"finetune_{init}{seed}"))
    spent = _spent(workdir)
    summary = _summary(config, workdir, finals, spent["pretrain"], spent["finetune"])
    summary["seconds"] = spent["pretrain"] + spent["finetune"]
    write_json(workdir / "summary.json", summary)
    pretraining = {split: _read_metrics(pretrained_dir, split) for split in ("train", "eval")}
    first_seed = {init: _read_metrics(workdir / f"finetune_{init}0", "train") for init in finals}
    summary["figure"] = str(plots.quickstart(pretraining, first_seed, summary, workdir / "quickstart.png"))
    return summary


@contextlib.contextmanager
def _timed(workdir: Path, stage: str) -> Iterator[None]:
    """Adds the seconds this invocation spends in `stage` to <workdir>/seconds.json, also when it is
    stopped: the summary's times are a stage's whole, over a stopped run and its resume."""
    start = time.perf_counter()
    try:
        yield
    finally:
        spent = _spent(workdir)
        spent[stage] += time.perf_counter() - start
        write_json(workdir / SECONDS, spent)


def _spent(workdir: Path) -> dict[str, float]:
    """Seconds spent in each stage so far (seconds.json; 0 before any)."""
    spent = {"pretrain": 0.0, "finetune": 0.0}
    if (workdir / SECONDS).is_file():
        spent.update(read_json_object(workdir / SECONDS, "the quickstart's seconds"))
    return spent


def _stage(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _pretrain_config(config: ConfigDict, corpus: Path) -> ConfigDict:
    p = config.pretrain
    run = pretrain_config()
    run.model = config.model
    run.data.corpus, run.data.vocab_size, run.data.seq_len = str(corpus), p.vocab_size, p.seq_len
    run.data.eval_fraction = 0.05
    run.masking.max_predictions = p.max_predictions
    run.batch_size, run.total_steps = p.batch_size, p.steps
    run.optim.lr, run.optim.warmup_steps = p.lr, p.warmup_steps
    run.log_every = max(p.steps // 50, 1)
    run.eval_every = run.checkpoint_every = max(p.steps // 5, 1)
    run.parallel.backend, run.progress = config.parallel_backend, config.progress
    return run


def _finetune_config(config: ConfigDict, train: Path, eval_file: Path, seed: int) -> ConfigDict:
    f = config.finetune
    run = finetune_config()
    run.data.train, run.data.eval, run.data.seq_len = str(train), str(eval_file), config.pretrain.seq_len
    run.epochs, run.batch_size, run.seed = f.epochs, f.batch_size, seed
    run.optim.lr = f.lr
    run.l2.weight, run.l2.reference = f.l2_weight, f.l2_reference
    run.log_every, run.eval_every = 2, 10**9  # evaluate at the end only
    run.parallel.backend, run.progress = config.parallel_backend, config.progress
    return run


def _read_metrics(workdir: Path, split: str) -> list[dict]:
    return [row for row in read_metrics(workdir) if row["split"] == split]


def _summary(config, workdir: Path, finals: dict, pretrain_seconds: float, finetune_seconds: float) -> dict:
    train = _read_metrics(workdir / "pretrain", "train")
    evaluation = _read_metrics(workdir / "pretrain", "eval")[-1]
    accuracy = {init: [final["eval_accuracy"] for final in runs] for init, runs in finals.items()}
    difference, interval = difference_95(accuracy["pretrained"], accuracy["scratch"], config.finetune.eval_examples)
    return {
        "pretrain": {
            "steps": config.pretrain.steps,
            "eval_mlm_loss": evaluation["mlm_loss"],
            "eval_mlm_accuracy": evaluation["mlm_accuracy"],
            "eval_nsp_accuracy": evaluation.get("nsp_accuracy"),
            "sequences_per_second": float(np.median([row["sequences_per_second"] for row in train[1:] or train])),
            "seconds": pretrain_seconds,
        },
        "finetune": {
            "pretrained_accuracy": accuracy["pretrained"],
            "scratch_accuracy": accuracy["scratch"],
            # the last logged training loss of each run: both fit the labeled sentences
            "pretrained_train_loss": [final["train_task_loss"] for final in finals["pretrained"]],
            "scratch_train_loss": [final["train_task_loss"] for final in finals["scratch"]],
            "difference": difference,
            "difference_95": interval,
            "chance": 1 / len(TOPICS),
            "seconds": finetune_seconds,
        },
    }


def difference_95(pretrained: list[float], scratch: list[float], examples: int) -> tuple[float, list[float]]:
    """The difference of mean accuracies and its 95% interval, pooled over seeds: each accuracy is
    a mean over n = seeds × `examples` held-out predictions (normal approximation of the binomial)."""
    p, q = float(np.mean(pretrained)), float(np.mean(scratch))
    half_width = 1.96 * math.sqrt((p * (1 - p) + q * (1 - q)) / (len(pretrained) * examples))
    return p - q, [p - q - half_width, p - q + half_width]


def table(summary: dict) -> str:
    """The summary as a text table."""
    p, f = summary["pretrain"], summary["finetune"]

    def per_seed(values):
        return f"{np.mean(values):.3f} (seeds: {', '.join(f'{v:.3f}' for v in values)})"

    low, high = f["difference_95"]
    rows = [
        ("pretraining", f"{p['steps']} steps, {p['seconds']:.0f} s, {p['sequences_per_second']:.0f} sequences/s"),
        ("  held-out MLM loss / accuracy", f"{p['eval_mlm_loss']:.3f} / {p['eval_mlm_accuracy']:.3f}"),
        ("fine-tuning train loss, from pretrained", per_seed(f["pretrained_train_loss"])),
        ("fine-tuning train loss, from scratch", per_seed(f["scratch_train_loss"])),
        ("held-out accuracy, from pretrained", per_seed(f["pretrained_accuracy"])),
        ("held-out accuracy, from scratch", per_seed(f["scratch_accuracy"])),
        (
            "  difference (95% interval)",
            f"{f['difference']:+.3f} ({low:+.3f} to {high:+.3f}); chance {f['chance']:.2f}",
        ),
        ("total time", f"{summary['seconds']:.0f} s (fine-tuning {f['seconds']:.0f} s)"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

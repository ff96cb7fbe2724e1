"""The pictures jft draws: the sweep's metric against its settings, the quickstart's curves, and a
confusion matrix. Drawn off screen (matplotlib's Agg), on the host, from values already computed."""

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def sweep(table: list[dict], metric: str, path: Path) -> None:
    """sweep.png: the metric (mean ± std over folds and seeds) against each swept key's values,
    one panel a key; the best point starred. table: jft.sweep.results_table's rows."""
    keys = list(table[0]["setting"]) or ["seed"]
    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for axis, key in zip(axes[0], keys):
        values = [row["setting"].get(key, "") for row in table]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ticks = sorted(set(values), key=lambda v: (str(type(v)), v))
        x = values if numeric else [ticks.index(v) for v in values]
        axis.errorbar(x, [r["mean"] for r in table], yerr=[r["std"] for r in table], fmt="o", alpha=0.7)
        axis.plot([x[0]], [table[0]["mean"]], "*", markersize=14, color="tab:red", label="best")
        if numeric and all(v > 0 for v in values) and max(values) / min(values) >= 10:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(range(len(ticks)), [str(t) for t in ticks])
        axis.set_xlabel(key)
        axis.set_ylabel(metric)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def quickstart(
    pretraining: dict[str, list[dict]], finetuning: dict[str, list[dict]], summary: dict, path: Path
) -> Path:
    """quickstart.png: pretraining losses, fine-tuning losses (first seed) and accuracies.
    pretraining: its metrics rows by split ("train", "eval"); finetuning: the first seed's training
    rows by init ("pretrained", "scratch"); summary: jft.quickstart's."""
    fig, (ax_pre, ax_fine, ax_acc) = plt.subplots(1, 3, figsize=(15, 4.2))
    train, evaluation = pretraining["train"], pretraining["eval"]
    ax_pre.plot([r["step"] for r in train], [r["mlm_loss"] for r in train], label="MLM loss, train")
    ax_pre.plot([r["step"] for r in evaluation], [r["mlm_loss"] for r in evaluation], "o-", label="MLM loss, held out")
    if "nsp_loss" in train[0]:
        ax_pre.plot([r["step"] for r in train], [r["nsp_loss"] for r in train], label="NSP loss, train")
    ax_pre.set(title="Pretraining", xlabel="step", ylabel="loss")
    ax_pre.legend()

    for init, color in (("pretrained", "tab:blue"), ("scratch", "tab:orange")):
        rows = finetuning[init]
        ax_fine.plot([r["step"] for r in rows], [r["task_loss"] for r in rows], color=color, label=f"from {init}")
    ax_fine.set(title="Fine-tuning (seed 1): task loss", xlabel="step", ylabel="cross-entropy")
    ax_fine.legend()

    f = summary["finetune"]
    for x, (init, color) in enumerate((("pretrained", "tab:blue"), ("scratch", "tab:orange"))):
        values = f[f"{init}_accuracy"]
        ax_acc.bar(x, np.mean(values), color=color, alpha=0.7)
        ax_acc.scatter([x] * len(values), values, color="black", zorder=3, s=14)
    ax_acc.axhline(f["chance"], color="gray", linestyle="--", label="chance")
    ax_acc.set_xticks([0, 1], ["from pretrained", "from scratch"])
    ax_acc.set(title="Accuracy on held-out sentences with unseen nouns", ylim=(0, 1))
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(report: dict, file: Path) -> "matplotlib.figure.Figure":
    """confusion.png: the confusion matrix of a classification report (jft eval's), counts written in,
    white on dark cells and black on light ones (text_colors). Returns the (closed) figure."""
    labels, matrix = report["labels"], report["confusion_matrix"]
    size = max(4, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=f"{report['records']} records")
    for i, (row, colors) in enumerate(zip(matrix, text_colors(matrix))):
        for j, (count, color) in enumerate(zip(row, colors)):
            ax.text(j, i, str(count), ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)
    return fig


def text_colors(matrix) -> list[list[str]]:
    """The color of each cell's count on a sequential colormap (light for low, dark for high, as
    Blues): white above the middle of the range, (max + min) / 2, black at or below it, as
    scikit-learn's ConfusionMatrixDisplay chooses; all black when every cell is the same."""
    values = np.asarray(matrix, dtype=float)
    middle = (values.max() + values.min()) / 2 if values.size else 0.0
    return [["white" if value > middle else "black" for value in row] for row in values]

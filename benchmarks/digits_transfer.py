"""Does pretraining help an image model? A small ResNet pretrained on handwritten digits 0-4,
fine-tuned on 5-9 from a few labels a class, against the same model from scratch.

    python benchmarks/digits_transfer.py [--labels 3] [--seeds 3] [--workdir runs/digits]

The data are scikit-learn's load_digits (1,797 real 8×8 scans, shipped with scikit-learn: no
download), written as PNG folders a class. Pretraining is supervised on 800 images of 0-4
(`jft pretrain --config pretrain/resnet_tiny`, stem 32 and stages of 32 and 64 channels); each seed
draws its own --labels images of every class 5-9 to fine-tune on (finetune/resnet_tiny, L2-SP from
the pretrained run, L2 toward 0 from scratch, the same steps, augmentation and seed) and scores
both on every other image of 5-9. Prints accuracies a seed and the difference with its 95%
interval (jft.quickstart.difference_95).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from jft.config import load_config
from jft.data.images import write_folder
from jft.finetune import train_and_evaluate
from jft.quickstart import difference_95

# The model, as --config.KEY=VALUE would set it: a stem of 32 channels, stages of 32 and 64.
MODEL = ["model.embedding_size=32", "model.hidden_sizes=(32, 64)", "progress=false"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=3, help="labeled images a class to fine-tune on")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--workdir", default="runs/digits")
    args = parser.parse_args(argv)
    from sklearn.datasets import load_digits

    root = Path(args.workdir).absolute()
    digits = load_digits()
    images, target = np.round(digits.images * 255 / 16).astype(np.uint8), digits.target
    low, high = np.flatnonzero(target < 5), np.flatnonzero(target >= 5)
    order = np.random.default_rng(0).permutation(low)
    write_folder(root / "pre_train", images[order[:800]], target[order[:800]])
    write_folder(root / "pre_dev", images[order[800:]], target[order[800:]])
    data = [f"data.train={root / 'pre_train'}", f"data.eval={root / 'pre_dev'}"]
    config = load_config("pretrain/resnet_tiny", [*MODEL, *data, f"epochs={args.pretrain_epochs}"])
    pretrained = train_and_evaluate(config, root / "pretrain", stage="pretraining")

    accuracy = {"pretrained": [], "scratch": []}
    for seed in range(args.seeds):
        draw = np.random.default_rng(100 + seed)
        few = np.concatenate([draw.choice(high[target[high] == c], args.labels, replace=False) for c in range(5, 10)])
        rest = np.setdiff1d(high, few)
        data = root / f"seed{seed}"
        write_folder(data / "train", images[few], target[few])
        write_folder(data / "eval", images[rest], target[rest])
        for init in accuracy:
            settings = [f"data.train={data / 'train'}", f"data.eval={data / 'eval'}", f"seed={seed}"]
            settings += [f"epochs={args.finetune_epochs}", "batch_size=8", f"eval_every={10**9}"]
            if init == "pretrained":
                settings.append(f"init_from={root / 'pretrain'}")
            config = load_config("finetune/resnet_tiny", [*MODEL, *settings])
            final = train_and_evaluate(config, root / f"{init}{seed}")
            accuracy[init].append(float(final["eval_accuracy"]))
    difference, interval = difference_95(accuracy["pretrained"], accuracy["scratch"], len(rest))
    summary = {
        "labels_a_class": args.labels,
        "pretraining_dev_accuracy": float(pretrained["eval_accuracy"]),
        "held_out_images": int(len(rest)),
        **{f"{init}_accuracy": values for init, values in accuracy.items()},
        "difference": difference,
        "difference_95": interval,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"pretraining on 0-4: dev accuracy {summary['pretraining_dev_accuracy']:.3f}")
    for init, values in accuracy.items():
        print(f"5-9 from {args.labels} labels a class, from {init}: {np.mean(values):.3f} (seeds: {values})")
    print(f"difference {difference:+.3f} (95% interval {interval[0]:+.3f} to {interval[1]:+.3f})")
    return summary


if __name__ == "__main__":
    main()

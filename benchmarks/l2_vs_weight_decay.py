"""Coupled L2 (the penalty in the loss, through Adam) against decoupled weight decay (AdamW),
on a small task where pretraining matters. Runs on a CPU in a few minutes:

    python benchmarks/l2_vs_weight_decay.py --workdir /tmp/l2-experiment

A tiny BERT is pretrained on synthetic topic documents (jft.data.synthetic); then fine-tuned on
16 labeled sentences that use half of each topic's nouns, and evaluated on 200 sentences that use
the other half, with: no regulariser; coupled L2 toward 0 (λ = 0.01); coupled L2-SP toward the
pretrained weights (λ = 0.01); and AdamW's decoupled decay s = 0.02 (s·θ equals the coupled
penalty's gradient 2λθ before Adam's normalisation, so the two shrink by the same raw amount).
"""

import argparse
from pathlib import Path

import numpy as np

from jft.data.synthetic import write_corpus, write_topic_task, write_vocab
from jft.defaults import finetune as finetune_config
from jft.defaults import model_group
from jft.defaults import pretrain as pretrain_config
from jft.finetune import train_and_evaluate as finetune
from jft.pretrain import train_and_evaluate as pretrain

SIZE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=64
)
VARIANTS = {
    "none": dict(l2_weight=0.0, reference="zero", weight_decay=0.0),
    "coupled L2, θ_ref = 0, λ = 0.01": dict(l2_weight=0.01, reference="zero", weight_decay=0.0),
    "coupled L2-SP, θ_ref = init, λ = 0.01": dict(l2_weight=0.01, reference="init", weight_decay=0.0),
    "decoupled AdamW decay, s = 0.02": dict(l2_weight=0.0, reference="zero", weight_decay=0.02),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)

    config = pretrain_config()
    config.model = model_group("tiny", **SIZE)
    config.data.corpus = str(write_corpus(root / "corpus.txt", documents=300))
    config.data.vocab, config.data.seq_len = str(write_vocab(root / "vocab.txt")), 64
    config.masking.max_predictions, config.batch_size, config.total_steps = 10, 32, 1000
    config.optim.lr, config.optim.warmup_steps = 2e-3, 20
    config.log_every = config.eval_every = config.checkpoint_every = 1000
    config.progress, config.parallel.backend = False, "jit"
    pretrain(config, root / "pretrained")

    dev = write_topic_task(root / "dev.csv", 200, seed=999, nouns=slice(4, None))
    results = {name: [] for name in VARIANTS}
    for seed in range(args.seeds):
        train = write_topic_task(root / f"train{seed}.csv", 16, seed=100 + seed, nouns=slice(0, 4))
        for name, variant in VARIANTS.items():
            run = finetune_config()
            run.init_from, run.data.train, run.data.eval = str(root / "pretrained"), str(train), str(dev)
            run.data.seq_len, run.batch_size, run.epochs, run.seed = 32, 8, 30, seed
            run.optim.lr, run.optim.weight_decay = 2e-4, variant["weight_decay"]
            run.l2.weight, run.l2.reference = variant["l2_weight"], variant["reference"]
            run.log_every, run.eval_every, run.progress, run.parallel.backend = 1000, 10_000, False, "jit"
            workdir = root / f"{seed}-{list(VARIANTS).index(name)}"
            results[name].append(finetune(run, workdir)["eval_accuracy"])
    print("\n| regulariser | accuracy on unseen nouns, mean ± sd over seeds | per seed |\n|---|---|---|")
    for name, accuracies in results.items():
        print(
            f"| {name} | {np.mean(accuracies):.3f} ± {np.std(accuracies):.3f} | "
            f"{', '.join(f'{a:.3f}' for a in accuracies)} |"
        )


if __name__ == "__main__":
    main()

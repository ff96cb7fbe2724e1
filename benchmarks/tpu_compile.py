"""The TPU memory table: BERT-base and -large pretraining compiled for each TPU generation, here.

    pip install 'jft[tpu]'
    python benchmarks/tpu_compile.py [--out table.md]
    python benchmarks/tpu_compile.py --sizes modernbert_base --seqs 512,8192 --topologies v5e:2x2,v6e:2x2 \
        --records benchmarks/tpu_compile_modernbert.jsonl

ModernBERT's cases mask 30% of a row and keep the splash kernel (global and sliding-window
attention; XLA's attention would hold a row's 8192 × 8192 probabilities a head).

Each case is `jft bench --config bench:SIZE --topology T --largest-batch` for pretraining at one
sequence length (BERT's 20 masked predictions a 128 tokens): libtpu compiles the step for the
topology's chips on this machine, XLA's memory analysis gives the per-device peak, and a search
over compiles finds the largest batch a device holds without remat and with remat 'dots'. A
compile takes one to three minutes on 2 cores (BERT-base or -large alike: the layers are one
loop), so a case is 10-30 minutes: the records file (benchmarks/tpu_compile.jsonl, kept in the
repository) keeps each finished case, and a rerun skips them. --shard-states optimizer,all compiles
the cases with the state split over the devices; --tables prints the tables of the records alone.
"""

import argparse
import json
import re
import time
from pathlib import Path

from jft.config import load_config
from jft.perf import bench

TOPOLOGIES = ("v5e:2x2", "v6e:2x2", "v5p:2x2x1", "v4:2x2x1")
# A per-device batch to start the search from: BERT's own batch (256 of 128 tokens over 4 chips),
# and 8 rows a device at 512 tokens.
START = {128: 64, 512: 8, 8192: 1}
# parallel.shard_state from the least split state to the most: a case holds at least the batch of the one before.
SPLITS = ("none", "optimizer", "all")


def case(
    topology: str, size: str, seq: int, shard_state: str = "none", remats: tuple = ("none", "dots"), fits: int = 0
) -> dict:
    config = load_config(f"bench:{size}", [], "bench")
    config.shard_state = shard_state
    modernbert = size.startswith("modernbert")
    config.workloads, config.seq_len = "pretrain", seq
    config.max_predictions = seq * 3 // 10 if modernbert else seq * 20 // 128
    if not modernbert:
        config.model.attention_impl = "xla"  # the table's attention (vocab_padding.py and the README compare splash)
    devices = 4  # every topology of TOPOLOGIES has 4 devices
    # the search's secant starts at half a batch known to fit and that batch (fewer compiles than from START)
    config.batch_size = max(START[seq], fits // 2 // 8 * 8) * devices
    start = time.perf_counter()
    report = bench.compile_for(config, topology, search=True, remats=remats)
    (row,) = report["results"]
    return {
        "topology": topology,
        "chip": report["chip"],
        "hbm_gib": report["hbm_gib_per_device"],
        "size": size,
        "seq": seq,
        "shard_state": shard_state,
        "batch": row["batch_per_device"],
        "peak_gib": row["peak_gib"],
        "error": row["error"],
        "compile_seconds": row["compile_seconds"],
        "largest": row["largest_batch_per_device"],
        "minutes": (time.perf_counter() - start) / 60,
        "jax": report["environment"]["jax"],
        "libtpu": report["libtpu"],
        "date": report["environment"]["date"],
    }


def recorded_case(record: dict) -> tuple:
    """A record's case: (topology, size, seq, shard_state)."""
    return record["topology"], record["size"], record["seq"], record.get("shard_state", "none")


def known_fit(records: list[dict], key: tuple) -> int:
    """The largest batch a device (no remat) that a less split state of the same case holds: a lower bound."""
    topology, size, seq, shard_state = key
    less_split = SPLITS[: SPLITS.index(shard_state)] if shard_state in SPLITS else ()
    fits = [r["largest"]["none"] for r in records if recorded_case(r) in {(topology, size, seq, s) for s in less_split}]
    return max(fits, default=0)


def refusal(error: str) -> str:
    """libtpu's out-of-memory error, short: what the temporaries need against what it can use."""
    found = re.search(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", error)
    return f"does not fit, {found[1]} GiB of temporaries ({found[2]} usable)" if found else error


def table(records: list[dict]) -> str:
    first = records[0]
    dates = sorted({r["date"][:10] for r in records})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    lines = [
        f"jax {first['jax']}, libtpu {first['libtpu']}, compiled on a 2-core CPU machine, {when}; "
        "pretraining step (BERT: MLM + NSP; ModernBERT: MLM at 30%, splash attention), bf16 compute, float32 "
        "state replicated over the devices or split (shard_state: optimizer, the Adam moments; all, parameters "
        "and moments)",
        "",
        "| TPU (HBM a device) | model | seq | shard_state | peak GiB at batch/device | largest batch/device, no remat "
        "| largest, remat dots | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        peak = f"{r['peak_gib']:.1f} at {r['batch']}" if not r["error"] else f"at {r['batch']}: {refusal(r['error'])}"
        lines.append(
            f"| {r['topology']} {r['chip']} ({r['hbm_gib']:.0f} GiB) | {r['size']} | {r['seq']} | "
            f"{r.get('shard_state', 'none')} | {peak} | {r['largest']['none']} | {r['largest'].get('dots', '—')} | "
            f"{r['compile_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def split_table(records: list[dict]) -> str:
    """The largest batch a device holds with each shard_state, a row a case (—: not compiled)."""
    found = {recorded_case(r): r["largest"] for r in records}
    cases = sorted(
        {key[:3] for key in found},
        key=lambda c: ([t.split(":")[0] for t in TOPOLOGIES].index(c[0].split(":")[0]), c[1], c[2]),
    )
    hbm = {r["topology"]: r["hbm_gib"] for r in records}
    lines = [
        f"| TPU (HBM a device) | model | seq | no remat: {' → '.join(SPLITS)} | remat dots: {' → '.join(SPLITS)} |",
        "|---|---|---|---|---|",
    ]
    for topology, size, seq in cases:
        cells = [
            " → ".join(str(found.get((topology, size, seq, split), {}).get(remat, "—")) for split in SPLITS)
            for remat in ("none", "dots")
        ]
        lines.append(f"| {topology} ({hbm[topology]:.0f} GiB) | {size} | {seq} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default=str(Path(__file__).with_name("tpu_compile.jsonl")), help="finished cases")
    parser.add_argument("--out", default="", help="the Markdown table")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--sizes", default="base,large")
    parser.add_argument("--seqs", default="128,512")
    parser.add_argument("--shard-states", default="none", help="parallel.shard_state values: none, optimizer, all")
    parser.add_argument("--remats", default="none,dots", help="the remat choices each case searches")
    parser.add_argument("--tables", action="store_true", help="print the tables of the records, compiling nothing")
    args = parser.parse_args()
    records_path = Path(args.records)
    records = [json.loads(line) for line in records_path.read_text().splitlines()] if records_path.exists() else []
    remats = tuple(args.remats.split(","))
    for shard_state in [] if args.tables else args.shard_states.split(","):
        for topology in args.topologies.split(","):
            for size in args.sizes.split(","):
                for seq in map(int, args.seqs.split(",")):
                    key = (topology, size, seq, shard_state)
                    done = next((r for r in records if recorded_case(r) == key), None)
                    todo = tuple(m for m in remats if done is None or m not in done["largest"])
                    if not todo:
                        continue
                    record = case(topology, size, seq, shard_state, todo, fits=known_fit(records, key))
                    if done is None:
                        records.append(record)
                    else:  # a finished case searched again for other remat choices: its record gains their columns
                        done["largest"].update(record["largest"])
                        done["minutes"] += record["minutes"]
                    records_path.write_text("".join(json.dumps(r) + "\n" for r in records))
                    print(f"tpu_compile: {topology} {size} seq {seq} {shard_state}: {record}", flush=True)
    text = table(records) + "\n" + split_table(records)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

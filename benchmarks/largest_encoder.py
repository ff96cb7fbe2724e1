"""The deepest BERT-style encoder a TPU slice trains at 8 rows of 512 tokens a device, with the
state replicated or split over the devices (parallel.shard_state none, optimizer, all): BERT
pretraining compiled here for the slice (libtpu), XLA's peak memory against the chip's HBM, and
a search over the layer count (memory grows linearly with it; secants, then bisection).

    pip install 'jft[tpu]'
    python benchmarks/largest_encoder.py --topologies v5e:2x2,v5e:4x4 --width 2048
    python benchmarks/largest_encoder.py --topologies v5e:2x2 --shard-states all --width 1024

Width W: W/64 heads of 64, a feed-forward of 4W, BERT's 30,522 tokens, remat `full` (each
layer keeps only its input), bf16 compute, float32 state and Adam. Records: one line a case in
--records (a rerun skips the cases it holds); a compile is minutes on 2 cores, the layer loop
compiling as one layer at any depth.
"""

import argparse
import json
import math
import time
from pathlib import Path

from jft.config import load_config
from jft.perf import bench, tpu

ROWS, SEQ = 8, 512  # a device's rows, and their tokens


def peak_gib(topology: str, width: int, layers: int, shard_state: str) -> float:
    """XLA's peak GiB a device of BERT pretraining with `layers` layers of `width` (inf: no count)."""
    config = load_config("bench:base", [], "bench")
    config.workloads, config.seq_len, config.max_predictions = "pretrain", SEQ, SEQ * 20 // 128
    config.shard_state = shard_state
    config.batch_size = ROWS * len(tpu.topology_devices(tpu.parse_topology(topology)))
    model = config.model
    model.hidden_size, model.num_attention_heads, model.intermediate_size = width, width // 64, 4 * width
    model.num_hidden_layers, model.remat, model.attention_impl = layers, "full", "xla"
    (row,) = bench.compile_for(config, topology)["results"]
    return row["peak_gib"] if row["peak_gib"] and not row["error"] else math.inf


def case(topology: str, width: int, shard_state: str) -> dict:
    start = time.perf_counter()
    chip = tpu.parse_topology(topology)
    hbm = chip.chip.hbm_gib * chip.chips / len(tpu.topology_devices(chip))
    peaks: dict[int, float] = {}

    def peak(layers: int) -> float:
        peaks[layers] = peak_gib(topology, width, layers, shard_state)
        what = f"{topology} {shard_state} width {width}"
        print(f"largest_encoder: {what}: {layers} layers {peaks[layers]:.2f} GiB", flush=True)
        return peaks[layers] * tpu.GIB

    layers = tpu.largest_batch(peak, hbm * tpu.GIB, multiple=1, first=4, most=4096)
    parameters = layers * (4 * width * width + 2 * width * 4 * width) + (30522 + 512 + 2) * width
    return {
        "topology": topology,
        "hbm_gib": hbm,
        "width": width,
        "shard_state": shard_state,
        "layers": layers,
        "parameters": parameters,
        "peaks_gib": {str(k): v for k, v in sorted(peaks.items())},
        "minutes": (time.perf_counter() - start) / 60,
        "libtpu": tpu.libtpu_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topologies", default="v5e:2x2,v5e:4x4")
    parser.add_argument("--shard-states", default="none,optimizer,all")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--records", default=str(Path(__file__).with_name("largest_encoder.jsonl")))
    args = parser.parse_args()
    records_path = Path(args.records)
    records = [json.loads(line) for line in records_path.read_text().splitlines()] if records_path.exists() else []
    done = {(r["topology"], r["width"], r["shard_state"]) for r in records}
    for topology in args.topologies.split(","):
        for shard_state in args.shard_states.split(","):
            if (topology, args.width, shard_state) in done:
                continue
            record = case(topology, args.width, shard_state)
            with records_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

"""Attention's forward and backward on this CPU: jft's heads-first XLA attention against
jax.nn.dot_product_attention (XLA) and PyTorch, the same shapes, windows alternated, medians.

    python benchmarks/attention_layout.py                   # batch 16, seq 128, 4 heads of 64
    python benchmarks/attention_layout.py --batch 8 --seq 512 --heads 12

Each is timed as jit(value_and_grad(sum of squares of the output)) over q, k and v (PyTorch:
the same loss, backward). Ratios only: a CPU says nothing of an accelerator's speed.
"""

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jft.models.layers import attention


def _jax_runner(fn, q, k, v, mask):
    grad = jax.jit(jax.value_and_grad(lambda q, k, v: (fn(q, k, v, mask) ** 2).sum(), argnums=(0, 1, 2)))
    args = [jnp.asarray(x) for x in (q, k, v)]
    jax.block_until_ready(grad(*args))
    return lambda: jax.block_until_ready(grad(*args))


def _torch_runner(q, k, v, mask):
    tq, tk, tv = (torch.tensor(x).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    tmask = torch.tensor(mask)

    def run():
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask)
        (out**2).sum().backward()
        tq.grad = tk.grad = tv.grad = None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--window", type=int, default=5, help="calls a window")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.seq, args.heads, args.head_dim)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    lengths = rng.integers(args.seq // 4, args.seq + 1, args.batch)  # padded rows, as in a batch of texts
    mask = (np.arange(args.seq)[None, :] < lengths[:, None])[:, None, None, :]

    def jft_xla(q, k, v, m):
        return attention(q, k, v, m, implementation="xla", dropout_rate=0.0, dropout_rng=None)

    def jax_dpa(q, k, v, m):
        return jax.nn.dot_product_attention(q, k, v, mask=m, implementation="xla")

    runs = {
        "jft (heads first)": _jax_runner(jft_xla, q, k, v, mask),
        "jax.nn.dot_product_attention (xla)": _jax_runner(jax_dpa, q, k, v, mask),
        "PyTorch SDPA": _torch_runner(q, k, v, mask),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.window):
                run()
            times[name].append((time.perf_counter() - start) / args.window)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["jft (heads first)"]
    print(
        f"`python benchmarks/attention_layout.py --batch {args.batch} --seq {args.seq} --heads {args.heads} "
        f"--head-dim {args.head_dim}`: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"torch {torch.__version__}, {datetime.date.today()}, {args.rounds} alternated rounds of {args.window}\n"
    )
    print("| attention, forward and backward | ms, median | time ÷ jft's |\n|---|---|---|")
    for name, median in medians.items():
        print(f"| {name} | {median * 1e3:.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()

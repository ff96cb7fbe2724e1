"""jft's ResNet training step against Hugging Face's Flax ResNet and PyTorch eager, side by side on
this CPU: same model, shapes and optimizer, their windows of steps alternated.

    python benchmarks/image_peers.py [--preset resnet18] [--side 112] [--batch 16] [--rounds 5] [--window 3]

- jft: `jft.perf.bench`'s image workload (the trainer's own finetune_step: BatchNorm statistics
  updated in the step, the L2 penalty, AdamW, donated state), the augmentation off so that every
  implementation gets ready pixels;
- hf-flax: transformers 4.57's FlaxResNetForImageClassification, a jitted optax AdamW step that
  updates batch_stats, donated state;
- hf-torch-eager: transformers' PyTorch ResNetForImageClassification in train mode, AdamW.
All float32, random images and labels, 1,000 classes. A CPU figure: only the ratios are given.
"""

import argparse
import os
import platform
import time

import numpy as np

LABELS = 1000


def jft_step(preset: str, side: int, batch: int) -> tuple:
    """(step, sync, compile seconds) of jft's image workload."""
    import jax

    from jft import defaults
    from jft.models import config_of
    from jft.perf import bench
    from jft.train.parallel import Runner

    config = defaults.bench("resnet")
    config.model = defaults.model_fields(preset, "resnet", image_size=side, dtype="float32")
    config.batch_size, config.augment, config.finetune.batches = batch, False, 1
    work = bench.image_workload("pretrain", config, *config_of(config.model))
    runner = Runner("jit")
    state = [runner.put_replicated(work.init_state())]
    data, key = runner.put_batch(work.batches[0]), runner.put_replicated(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = runner.compile(work.step).lower(state[0], data, key).compile()
    seconds = time.perf_counter() - start

    def step():
        state[0] = compiled(state[0], data, key)[0]

    return step, lambda: jax.block_until_ready(state), seconds


def _hf_config(preset: str):
    import transformers

    from jft.models.resnet import ResNetConfig

    fields = ResNetConfig.preset(preset).hf_fields()
    return transformers.ResNetConfig(**fields, num_labels=LABELS)


def _data(side: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(batch, 3, side, side)).astype(np.float32), rng.integers(0, LABELS, batch)


def flax_step(preset: str, side: int, batch: int) -> tuple:
    """(step, sync, compile seconds) of FlaxResNetForImageClassification with a jitted optax AdamW step."""
    import jax
    import jax.numpy as jnp
    import optax
    import transformers

    model = transformers.FlaxResNetForImageClassification(_hf_config(preset), input_shape=(1, side, side, 3), seed=0)
    pixels, labels = _data(side, batch)
    pixels, labels = jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(labels)  # the module takes NHWC
    tx = optax.adamw(1e-4)

    def loss_fn(params, batch_stats):
        out, updates = model.module.apply(
            {"params": params, "batch_stats": batch_stats}, pixels, deterministic=False, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
        return loss, updates["batch_stats"]

    def train_step(params, batch_stats, opt_state):
        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    params, batch_stats = model.params["params"], model.params["batch_stats"]
    state = [params, batch_stats, tx.init(params)]
    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(*state).compile()
    seconds = time.perf_counter() - start

    def step():
        state[:] = compiled(*state)

    return step, lambda: jax.block_until_ready(state), seconds


def torch_step(preset: str, side: int, batch: int) -> tuple:
    """(step, sync, None) of PyTorch's ResNetForImageClassification, train mode, AdamW."""
    import torch
    import transformers

    model = transformers.ResNetForImageClassification(_hf_config(preset)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels, labels = (torch.from_numpy(x) for x in _data(side, batch))

    def step():
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, lambda: None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="resnet18")
    parser.add_argument("--side", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=3)
    args = parser.parse_args()
    import jax
    import torch
    import transformers

    shape = (args.preset, args.side, args.batch)
    steps = {"jft": jft_step(*shape), "hf-flax": flax_step(*shape), "hf-torch-eager": torch_step(*shape)}
    for step, sync, _ in steps.values():
        for _ in range(2):
            step()
        sync()
    names, seconds, load = list(steps), {name: [] for name in steps}, [os.getloadavg()[0]]
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            step, sync, _ = steps[name]
            start = time.perf_counter()
            for _ in range(args.window):
                step()
            sync()
            seconds[name].append((time.perf_counter() - start) / args.window)
    load.append(os.getloadavg()[0])
    jft, jft_compile = float(np.median(seconds["jft"])), steps["jft"][2]
    print(
        f"CPU, side by side: `python benchmarks/image_peers.py --preset {args.preset} --side {args.side} "
        f"--batch {args.batch} --rounds {args.rounds} --window {args.window}`, {platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}; load average {load[0]:.2f} → {load[-1]:.2f}\n"
    )
    print("| implementation | step time ÷ jft's, median (p10–p90) | compile ÷ jft's |\n|---|---|---|")
    for name, values in seconds.items():
        p10, p50, p90 = np.percentile(values, [10, 50, 90]) / jft
        compile_s = steps[name][2]
        ratio = "—" if compile_s is None else f"{compile_s / jft_compile:.2f}"
        print(f"| {name} | {p50:.2f} ({p10:.2f}–{p90:.2f}) | {ratio} |")


if __name__ == "__main__":
    main()

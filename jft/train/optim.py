"""Optimizers from optax: warmup then linear or cosine decay, AdamW or LAMB, clipping, decay masks."""

import math

import jax
import optax
from ml_collections import ConfigDict

from jft.errors import JftError, choices
from jft.models.batch_norm import is_statistic
from jft.params import flatten, unflatten

OPTIMIZERS = ("adamw", "lamb", "sgd")
DECAYS = ("linear", "cosine", "constant")


def check_optim(config: ConfigDict) -> None:
    """One error listing every setting of an `optim` group that cannot train."""
    problems = []
    if config.name not in OPTIMIZERS:
        problems.append(f"optim.name '{config.name}' is not one of {choices(OPTIMIZERS)}")
    if config.decay not in DECAYS:
        problems.append(f"optim.decay '{config.decay}' is not one of {choices(DECAYS)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        problems.append(f"optim.lr must be a positive number, got {config.lr}")
    for key in ("b1", "b2"):
        if not 0 <= config[key] < 1:
            problems.append(f"optim.{key} must be in [0, 1), got {config[key]}")
    if not (math.isfinite(config.eps) and config.eps > 0):
        problems.append(f"optim.eps must be a positive number, got {config.eps}")
    for key in ("weight_decay", "max_grad_norm", "warmup_steps"):
        if not (math.isfinite(config[key]) and config[key] >= 0):
            problems.append(f"optim.{key} must be 0 or more, got {config[key]}")
    if problems:
        raise JftError("; ".join(problems) + ".")


def learning_rate_schedule(config: ConfigDict, total_steps: int, lr=None) -> optax.Schedule:
    """Linear warmup to config.lr (or `lr`, which may be traced) over config.warmup_steps, then
    config.decay down to 0 at total_steps."""
    lr = config.lr if lr is None else lr
    if config.decay not in DECAYS:
        raise JftError(f"optim.decay '{config.decay}' is not one of {choices(DECAYS)}.")
    warmup = min(config.warmup_steps, total_steps)
    rest = max(total_steps - warmup, 1)
    decay = {
        "linear": optax.linear_schedule(lr, 0.0, rest),
        "cosine": optax.cosine_decay_schedule(lr, rest),
        "constant": optax.constant_schedule(lr),
    }[config.decay]
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def weight_decay_mask(params) -> dict:
    """True for weights that decay: kernels and embeddings. Biases and LayerNorm (and BatchNorm)
    never decay (a norm's leaves are its scale and bias, under any name: BERT's LayerNorm, GPT-2's
    ln_1, ResNet's normalization), nor do BatchNorm's statistics, which are no weights."""
    return unflatten(
        {
            path: not (path.endswith(("/bias", "/scale")) or "/LayerNorm/" in path or is_statistic(path))
            for path in flatten(params)
        }
    )


def penalty_mask(params, exclude_bias_and_layer_norm: bool) -> dict:
    """True for the leaves the L2 penalty pulls (l2.exclude_bias_and_layer_norm: as weight decay's);
    never BatchNorm's statistics."""
    if exclude_bias_and_layer_norm:
        return weight_decay_mask(params)
    return unflatten({path: not is_statistic(path) for path in flatten(params)})


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """optax.clip_by_global_norm (the same state and the same updates) that takes the gradients'
    norm from the step when given (`grad_norm=`): the step has computed it for its finite check and
    its metrics, and a second pass over the gradients to compute it again is saved."""

    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
        keep = norm < max_norm
        clipped = jax.tree.map(lambda t: jax.lax.select(keep, t, (t / norm.astype(t.dtype)) * max_norm), updates)
        return clipped, state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def make_optimizer(
    config: ConfigDict, total_steps: int, lr=None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain a run uses: global-norm clipping, then AdamW or LAMB with masked weight decay,
    or SGD with (Nesterov) momentum, weight decay added to the gradients before it (the ImageNet
    recipe's, as torch.optim.SGD). Its update takes the gradients' norm as `grad_norm=` (computed
    once by the step). `lr` (may be traced: a population member's) replaces config.lr."""
    if config.name not in OPTIMIZERS:
        raise JftError(f"optim.name '{config.name}' is not one of {choices(OPTIMIZERS)}.")
    schedule = learning_rate_schedule(config, total_steps, lr)
    if config.name == "sgd":
        decay = [optax.add_decayed_weights(config.weight_decay, weight_decay_mask)] if config.weight_decay else []
        optimizer = optax.chain(*decay, optax.sgd(schedule, momentum=config.b1 or None, nesterov=config.nesterov))
    else:
        make = {"adamw": optax.adamw, "lamb": optax.lamb}[config.name]
        optimizer = make(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=weight_decay_mask,
        )
    chain = [clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
    return optax.chain(*chain, optimizer), schedule

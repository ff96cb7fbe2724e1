"""Training and evaluation steps: pure functions `(state, batch, rng) -> (state, metrics)`.

A step is written once, per device: it sees its own share of the batch and averages with
collectives over the axis 'batch' (jft.train.parallel runs it under pmap, shard_map or plain jit,
where axis_name=None turns the collectives off). Losses are normalised by the count over all
devices, so n devices compute the same update as one device with the whole batch. The model is
any family's module (jft.models): it takes the batch's arrays named in the setup's `inputs` and
returns a dict of outputs ("logits", "mlm_logits", "nsp_logits").
"""

import contextlib
import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jft.models.batch_norm import STATS, variables
from jft.models.family import TEXT_INPUTS
from jft.models.layers import batch_rows, in_global_view, rows_split
from jft.train.augment import ImageInputs, image_inputs
from jft.train.masking import MaskingConfig, mask_batch
from jft.train.next_word import causal_inputs, task_next_tokens
from jft.train.objectives import l2_penalty, means, squared_error, weighted_cross_entropy
from jft.train.parallel import AXIS


def classic_threefry(step):
    """The step's jax.random draws (the masking's, the crops') by JAX's classic threefry
    (jax_threefry_partitionable=False), for this step only. Each device draws its own bits here
    (pmap, shard_map), so the partitionable variant, JAX's default, has nothing to partition and
    takes longer: on a CPU, a small BERT's dropout masks for one fine-tuning step took 70 ms by
    it, 26 ms classic (benchmarks/cpu_finetune_gap.py, when dropout drew by jax.random). In the
    global view (shard_state) the partitionable one: each device draws the bits of its own rows,
    the same whatever the devices, where the classic one would draw every row's on every device.
    (Dropout's masks are drawn by jft.models.layers.kept, the same in either mode.)"""

    @functools.wraps(step)
    def wrapped(*args, **kwargs):
        with jax.threefry_partitionable(in_global_view()):
            return step(*args, **kwargs)

    return wrapped


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    skipped: jax.Array  # int32 scalar: updates skipped because their results were not finite
    skipped_in_a_row: jax.Array  # int32 scalar: of those, the consecutive ones up to now


def create_state(params, tx: optax.GradientTransformation) -> TrainState:
    """Step 0 with tx's initial state of params, made by one compiled program (run op by op, an
    optimizer's init compiles a program for every shape of leaf). Parameters the init does not read
    (Adam's moments start at zero) are not even sent to the device: jit leaves unused inputs out.
    params on the host or one device (the runner places the state after): the moments come out on
    the default device, not split as split parameters would be."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=jax.jit(tx.init)(params), skipped=zero, skipped_in_a_row=zero)


@dataclasses.dataclass(frozen=True)
class PretrainSetup:
    """The static parts of a pretraining step, bound with functools.partial before compiling.

    model: a family's pretraining module; objective: "mlm" (masked-LM, with `masking`, and
    next-sentence when `nsp`) or "next_word" (every token predicts the next of its document:
    jft.train.next_word); inputs: the batch arrays the model takes by name (the family's)."""

    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    masking: MaskingConfig | None
    accum_steps: int = 1
    nsp: bool = True
    inputs: tuple[str, ...] = TEXT_INPUTS
    objective: str = "mlm"
    # λ of the coupled penalty λ·Σ‖θ − θ_ref‖² (0: none) and the leaves it applies to; θ_ref is the
    # state's `reference` (a FinetuneState: continued pretraining pulled toward its start), else 0.
    l2: float = 0.0
    penalty_mask: Any = None


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmean(x, axis_name):
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _device_index(axis_name):
    return 0 if axis_name is None else jax.lax.axis_index(axis_name)


def _masked_inputs(masking: MaskingConfig, batch: dict, key: jax.Array) -> dict:
    """batch with its input_ids masked, and masked_positions, masked_labels, masked_weights added."""
    masked = mask_batch(
        masking, key, batch["input_ids"], batch["attention_mask"], batch["word_start"], batch["row_ids"]
    )
    return {**batch, **masked}


def _candidate_rows(batch: dict) -> dict:
    """A multiple-choice batch's candidates as rows: token arrays [rows, candidates, seq] as
    [rows · candidates, seq] (each example's candidates in a run), row_ids each candidate's row."""
    if batch["input_ids"].ndim != 3:
        return batch
    candidates = batch["input_ids"].shape[1]
    rows = {name: v.reshape(-1, v.shape[-1]) if name in TEXT_INPUTS and v.ndim == 3 else v for name, v in batch.items()}
    if "row_ids" in batch:
        rows["row_ids"] = (batch["row_ids"][:, None] * candidates + jnp.arange(candidates)).reshape(-1)
    return rows


def _apply(setup, params, batch: dict, dropout_key, axis_name=None, **kwargs) -> dict:
    """setup.model on the batch arrays it takes (setup.inputs, those the batch has: packed
    batches add segment and position ids); dropout only with a key, its masks by the rows' places
    in the whole batch (batch["row_ids"], else their indices here). A model with BatchNorm
    statistics (params[STATS]) trains with the batch's, over the devices of axis_name, and returns
    the updated ones as out[STATS]; without a key it uses them. A multiple-choice batch's
    candidates are scored as rows, their scores side by side as logits [rows, candidates]."""
    candidates = batch["input_ids"].shape[1] if "input_ids" in batch and batch["input_ids"].ndim == 3 else 0
    if candidates:
        out = _apply(setup, params, _candidate_rows(batch), dropout_key, axis_name, **kwargs)
        return {**out, "logits": out["logits"].reshape(-1, candidates)}
    kwargs.update({name: batch[name] for name in setup.inputs if name in batch})
    training_statistics = STATS in params and dropout_key is not None
    model = setup.model.clone(axis_name=axis_name) if training_statistics else setup.model
    with contextlib.nullcontext() if "row_ids" not in batch else batch_rows(batch["row_ids"]):
        result = model.apply(
            variables(params),
            deterministic=dropout_key is None,
            rngs={} if dropout_key is None else {"dropout": dropout_key},
            mutable=[STATS] if training_statistics else False,
            **kwargs,
        )
    if training_statistics:
        out, updates = result
        return {**rows_split(out), STATS: updates[STATS]}
    return rows_split(result)  # kept split over the devices when the parameters are (FSDP)


def _pretraining_inputs(setup: PretrainSetup, batch: dict, key: jax.Array) -> dict:
    """The batch with what the objective predicts: masked positions and labels, or next tokens."""
    if setup.objective == "next_word":
        return causal_inputs(batch)
    return _masked_inputs(setup.masking, batch, key)


def _prediction_counts(setup: PretrainSetup, inputs: dict) -> dict:
    """This device's number of predictions of each loss term (the weights its sums are over)."""
    if setup.objective == "next_word":
        return {"lm": inputs["next_weights"].sum()}
    counts = {"mlm": inputs["masked_weights"].sum()}
    if setup.nsp:
        counts["nsp"] = (inputs["nsp_labels"] >= 0).sum()
    return counts


def _pretraining_stats(setup: PretrainSetup, params, inputs: dict, dropout_key) -> dict:
    """Sums for the losses and accuracies of one (micro-)batch: next-word ("lm"), or MLM (and NSP)."""
    if setup.objective == "next_word":
        out = _apply(setup, params, inputs, dropout_key)
        return {"lm": weighted_cross_entropy(out["lm_logits"], inputs["next_labels"], inputs["next_weights"])}
    out = _apply(setup, params, inputs, dropout_key, masked_positions=inputs["masked_positions"])
    stats = {"mlm": weighted_cross_entropy(out["mlm_logits"], inputs["masked_labels"], inputs["masked_weights"])}
    if setup.nsp:
        labels = inputs["nsp_labels"]
        stats["nsp"] = weighted_cross_entropy(out["nsp_logits"], jnp.maximum(labels, 0), (labels >= 0))
    return stats


def _summarise(stats: dict) -> dict:
    """lm_loss, lm_accuracy, or mlm_loss, mlm_accuracy (nsp_loss, nsp_accuracy), and their total
    loss, from the sums."""
    metrics = {f"{name}_{k}": v for name, sums in stats.items() for k, v in means(sums).items()}
    metrics["loss"] = sum(metrics[f"{name}_loss"] for name in stats)
    return metrics


@classic_threefry
def pretrain_step(
    state: TrainState, batch: dict, rng: jax.Array, *, setup: PretrainSetup, axis_name: str | None = AXIS
) -> tuple[TrainState, dict]:
    """One optimizer step of pretraining on this device's rows: masked-LM (+ NSP) or next-word.

    batch: input_ids, token_type_ids, attention_mask, word_start [rows, seq] (next-word: where
    documents start); nsp_labels, row_ids [rows] (the rows' places in the global batch, by which
    masks and dropout are drawn). rng: the run's key; the step folds in state.step. Gradient
    accumulation splits the rows into setup.accum_steps micro-batches.
    """
    step_key = jax.random.fold_in(rng, state.step)
    mask_key, dropout_key = jax.random.split(step_key)
    inputs = _pretraining_inputs(setup, batch, mask_key)
    num_devices = _psum(1, axis_name)
    # Mean counts per device: each device divides its sums by these, and pmean of the gradients
    # then equals the gradient of the loss over the global batch.
    norms = {name: _psum(count, axis_name) / num_devices for name, count in _prediction_counts(setup, inputs).items()}

    def loss_fn(params, micro):
        stats = _pretraining_stats(setup, params, micro, dropout_key)
        loss = sum(stats[name]["loss_sum"] / jnp.maximum(norms[name], 1e-9) for name in stats)
        return loss, stats

    grads, stats = _gradients(loss_fn, state.params, inputs, setup.accum_steps)
    grads = _pmean(grads, axis_name)
    stats = _psum(stats, axis_name)
    grads, penalty = _penalised(setup.l2, setup.penalty_mask, state, grads)

    learning_rate = setup.schedule(state.step - state.skipped)  # skipped steps do not advance optax
    new_state, grad_norm = _apply_gradients(setup.tx, state, grads, learning_rate)
    metrics = _summarise(stats)
    if _weighted(setup.l2):
        metrics |= {"loss": metrics["loss"] + penalty, "l2_penalty": penalty}
    metrics = {
        **metrics,
        "learning_rate": learning_rate,
        "grad_norm": grad_norm,
        "skipped_updates": new_state.skipped,
        "skipped_in_a_row": new_state.skipped_in_a_row,
    }
    return new_state, metrics


def _penalised(l2, mask, state, grads) -> tuple[Any, jax.Array | float]:
    """grads plus the gradient of λ·Σ‖θ − θ_ref‖² (θ_ref: the state's reference, if it has one,
    else 0), and the penalty; the same on every device, so added after the mean over them."""
    if not _weighted(l2):
        return grads, 0.0
    reference = getattr(state, "reference", None)
    penalty, penalty_grads = jax.value_and_grad(lambda p: l2 * l2_penalty(p, reference, mask))(state.params)
    return jax.tree.map(jnp.add, grads, penalty_grads), jnp.asarray(penalty, jnp.float32)


def _gradients(loss_fn, params, inputs: dict, accum_steps: int):
    """Gradients and summed stats of loss_fn(params, micro_batch) -> (loss, stats) over the rows of
    inputs, split into accum_steps micro-batches (a loop over them) whose gradients add up; a row's
    dropout masks are drawn by its row_ids, so they are the whole batch's.

    One micro-batch is no loop: XLA's CPU compiler leaves the kernel-gradient convolutions inside
    a while loop (even of one trip) uncanonicalised, as naive loops, and a ResNet-18 step took 25×
    as long (benchmarks/image_peers.py)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (_, stats), grads = grad_fn(params, inputs)
        return grads, stats

    def micro_step(grads, micro):
        (_, stats), micro_grads = grad_fn(params, micro)
        return jax.tree.map(jnp.add, grads, micro_grads), stats

    micro_batches = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), inputs)
    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, stats = jax.lax.scan(micro_step, zeros, micro_batches)
    return grads, jax.tree.map(lambda x: x.sum(0), stats)


def _apply_gradients(
    tx: optax.GradientTransformation, state: TrainState, grads, learning_rate: jax.Array
) -> tuple[TrainState, jax.Array]:
    """The optimizer update, applied only when the gradients and the learning rate are finite;
    else skipped and counted, so that a non-finite weight is never kept.

    Finite gradients and learning rate give finite new parameters and optimizer moments, since the
    old ones are finite (by this same rule) and optim.eps > 0 keeps Adam's division finite; an
    overflow past float32's 3.4e38 aside, which the checkpoint's own check refuses to save. The
    decision needs only two scalars known before the update, so the update runs under lax.cond
    and a skipped one costs nothing in the common case: checking the new state and selecting
    between it and the old one took more passes over the state (XLA counts 4.61 GB of memory
    traffic for a fine-tuning step of a small BERT that way, 4.05 GB this way, 4.01 with no check).
    """
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(learning_rate)

    def update(state):
        updates, opt_state = optax.with_extra_args_support(tx).update(
            grads, state.opt_state, state.params, grad_norm=grad_norm
        )
        return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    new_state = jax.lax.cond(finite, update, lambda state: state, state)
    skipped = (~finite).astype(jnp.int32)
    new_state = new_state.replace(
        step=state.step + 1,
        skipped=state.skipped + skipped,
        skipped_in_a_row=(state.skipped_in_a_row + 1) * skipped,
    )
    return new_state, grad_norm


@classic_threefry
def pretrain_eval_step(
    params, batch: dict, rng: jax.Array, *, setup: PretrainSetup, axis_name: str | None = AXIS
) -> dict:
    """Sums of the losses and hits on held-out rows (masked with a fixed key), no dropout."""
    inputs = _pretraining_inputs(setup, batch, rng)
    return _psum(_pretraining_stats(setup, params, inputs, None), axis_name)


@flax.struct.dataclass
class FinetuneState(TrainState):
    reference: Any = None  # θ_ref of the L2 penalty: the starting weights (L2-SP), or None for θ_ref = 0


def create_finetune_state(params, tx: optax.GradientTransformation, reference=None) -> FinetuneState:
    return with_reference(create_state(params, tx), reference)


def with_reference(state: TrainState, reference) -> FinetuneState:
    """state with θ_ref, the weights the L2 penalty pulls toward."""
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}
    return FinetuneState(**fields, reference=reference)


def without_reference(state: TrainState) -> TrainState:
    """state without θ_ref (a pretraining checkpoint holds none: the run keeps it in its own file)."""
    return TrainState(**{f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)})


# The joint objective's name in the metrics (pre_loss: an image model's pretraining classifier's),
# the key the pretraining images' crops fold in, and where their row_ids start (dropout's draws).
JOINT_METRICS = {"next_word": "lm", "classify": "pre", "mlm": "mlm"}
JOINT_IMAGES = 2**31 - 2
JOINT_ROWS = 2**30
# The logit of a padding token as a span's start or end: none (a finite value keeps the loss finite).
NO_POSITION = -1e9


@dataclasses.dataclass(frozen=True)
class FinetuneSetup:
    """The static parts of a fine-tuning step.

    l2: λ of the coupled penalty λ·Σ‖θ − θ_ref‖², part of the loss (its gradient goes through the
    optimizer); penalty_mask: a tree of bools, True where the penalty applies. l2 and mlm_weight
    may be traced scalars (a population's member's, jft.sweep): their terms are then computed.
    """

    model: Any  # a family's module with a task head (classification, token_classification, question_answering)
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    kind: str
    l2: float
    penalty_mask: Any
    # The optional joint objective: + mlm_weight (μ) · the family's pretraining loss on the batch's
    # own text (the model needs mlm=True). joint "mlm": masked as in pretraining (with `masking`);
    # "next_word": every token predicting the next, from the task's own forward pass; "classify":
    # an image model's pretraining classifier on the batch's joint_* images; None: off.
    mlm_weight: float = 0.0
    masking: MaskingConfig | None = None
    accum_steps: int = 1  # micro-batches a step (gradient accumulation)
    inputs: tuple[str, ...] = TEXT_INPUTS  # the batch arrays the model takes (the family's)
    joint: str | None = None
    images: ImageInputs | None = None  # an image model's: its batches' pixels augmented and normalised
    label_smoothing: float = 0.0  # classification's ε (jft.train.objectives.weighted_cross_entropy)


def _weighted(weight) -> bool:
    """Whether a loss term of this weight is computed: a nonzero number, or an array (traced)."""
    return not isinstance(weight, (int, float)) or weight != 0


def task_stats(kind: str, logits: jax.Array, batch: dict, smoothing: float = 0.0) -> dict:
    """Sums of the task loss (and hits) of one batch; rows and tokens of weight 0 do not count.
    smoothing: classification's label smoothing; a batch mixed by mixup carries mix_labels and
    mix_share (jft.train.augment)."""
    if kind == "regression":
        return squared_error(logits[..., 0], batch["labels"], batch["weights"])
    if kind == "question_answering":  # BERT's: the mean of the start's and the end's cross-entropy over the row
        positions = jnp.where(batch["attention_mask"][:, None, :] > 0, jnp.swapaxes(logits, 1, 2), NO_POSITION)
        # half a row's weight on each: the sums count rows, as the step's count does
        weights = jnp.broadcast_to(batch["weights"][:, None] / 2, batch["labels"].shape)
        return weighted_cross_entropy(positions, batch["labels"], weights)
    mixed = (batch["mix_labels"], batch["mix_share"]) if "mix_labels" in batch else None
    return weighted_cross_entropy(logits, jnp.maximum(batch["labels"], 0), batch["weights"], smoothing, mixed)


def _task_masked(setup: FinetuneSetup, batch: dict, key: jax.Array) -> dict:
    """The joint objective's masked copy of this device's rows of a task batch (masked_positions,
    masked_labels, masked_weights added); masks depend on global rows (row_ids), not on devices."""
    width = batch["input_ids"].shape[1]
    masking = dataclasses.replace(setup.masking, max_predictions=min(setup.masking.max_predictions, width))
    word_start = jnp.ones_like(batch["input_ids"], bool)
    return _masked_inputs(masking, {**batch, "word_start": word_start}, key)


@classic_threefry
def finetune_step(
    state: FinetuneState, batch: dict, rng: jax.Array, *, setup: FinetuneSetup, axis_name: str | None = AXIS
) -> tuple[FinetuneState, dict]:
    """One optimizer step on task loss + λ·Σ‖θ − θ_ref‖² (coupled L2; see FinetuneSetup), plus
    μ·(masked-LM loss) when setup.mlm_weight is set.

    batch: input_ids, token_type_ids, attention_mask [rows, seq]; labels, weights [rows] (or
    [rows, seq] for token classification). Packed batches add segment_ids, position_ids [rows, seq]
    and cls_positions [rows, examples], with labels and weights [rows, examples]. With
    setup.accum_steps > 1 the rows are split into micro-batches whose gradients add up to the
    whole batch's (losses are normalised by the whole batch's counts).
    """
    step_key = jax.random.fold_in(rng, state.step)
    mask_key, dropout_key, mlm_dropout_key = jax.random.split(step_key, 3)
    pretraining_images = {name.removeprefix("joint_"): v for name, v in batch.items() if name.startswith("joint_")}
    batch = {name: value for name, value in batch.items() if not name.startswith("joint_")}
    # crops, masks and dropout depend on the rows' places in the global batch, not on the devices
    rows = batch["weights"].shape[0]
    first = _device_index(axis_name) * rows
    if setup.images is not None:
        batch = image_inputs(setup.images, batch, mask_key, first)
        if pretraining_images:  # the joint objective's: crops of their own
            key = jax.random.fold_in(mask_key, JOINT_IMAGES)
            pretraining_images = image_inputs(setup.images, pretraining_images, key, first)
            pretraining_images["row_ids"] = JOINT_ROWS + first + jnp.arange(rows)
    batch = {**batch, "row_ids": first + jnp.arange(rows)}
    num_devices = _psum(1, axis_name)
    count = _psum(batch["weights"].sum(), axis_name) / num_devices
    inputs = {"task": batch}
    joint = JOINT_METRICS.get(setup.joint, "mlm")  # the joint term's name in the metrics
    if _weighted(setup.mlm_weight) and joint == "lm":
        next_labels, next_weights = task_next_tokens(batch)
        inputs["task"] = {**batch, "next_labels": next_labels, "next_weights": next_weights}
        joint_count = _psum(next_weights.sum(), axis_name) / num_devices
    elif _weighted(setup.mlm_weight) and joint == "pre":
        inputs["pre"] = pretraining_images
        joint_count = _psum(pretraining_images["weights"].sum(), axis_name) / num_devices
    elif _weighted(setup.mlm_weight):
        inputs["mlm"] = _task_masked(setup, _candidate_rows(batch), mask_key)
        joint_count = _psum(inputs["mlm"]["masked_weights"].sum(), axis_name) / num_devices

    def loss_fn(params, micro):  # a micro-batch's rows keep their row_ids: the whole batch's masks
        task = micro["task"]
        if "pre" in micro:  # one forward over the task's and the pretraining images: BatchNorm sees both
            images = {
                name: jnp.concatenate([task[name], micro["pre"][name]])
                for name in ("pixel_values", "row_mask", "row_ids")
            }
            out = _apply(setup, params, images, dropout_key, axis_name)
            rows = task["weights"].shape[0]
            pre_logits, out["logits"] = out["joint_logits"][rows:], out["logits"][:rows]
        else:
            out = _apply(setup, params, task, dropout_key, axis_name)
        stats = {"task": task_stats(setup.kind, out["logits"], task, setup.label_smoothing)}
        if "pre" in micro:
            stats["pre"] = task_stats("classification", pre_logits, micro["pre"], setup.label_smoothing)
        if STATS in out:
            stats[STATS] = out[STATS]
        loss = stats["task"]["loss_sum"] / jnp.maximum(count, 1e-9)
        if _weighted(setup.mlm_weight) and joint == "lm":  # from the task's own forward pass
            stats["lm"] = weighted_cross_entropy(out["lm_logits"], task["next_labels"], task["next_weights"])
        elif "mlm" in micro:
            masked = micro["mlm"]
            mlm_logits = _apply(setup, params, masked, mlm_dropout_key, masked_positions=masked["masked_positions"])[
                "mlm_logits"
            ]
            stats["mlm"] = weighted_cross_entropy(mlm_logits, masked["masked_labels"], masked["masked_weights"])
        if joint in stats:
            loss = loss + setup.mlm_weight * stats[joint]["loss_sum"] / jnp.maximum(joint_count, 1e-9)
        return loss, stats

    grads, stats = _gradients(loss_fn, state.params, inputs, setup.accum_steps)
    statistics = stats.pop(STATS, None)  # the same on every device: summed over micro-batches only
    stats = _psum(stats, axis_name)
    grads = _pmean(grads, axis_name)
    grads, penalty = _penalised(setup.l2, setup.penalty_mask, state, grads)
    learning_rate = setup.schedule(state.step - state.skipped)  # skipped steps do not advance optax
    new_state, grad_norm = _apply_gradients(setup.tx, state, grads, learning_rate)
    if statistics is not None:
        new_state = _with_statistics(new_state, state, statistics, setup.accum_steps)
    task = means(stats["task"])
    metrics = {
        "loss": task["loss"] + penalty,
        "task_loss": task["loss"],
        "l2_penalty": jnp.asarray(penalty, jnp.float32),
        "learning_rate": learning_rate,
        "grad_norm": grad_norm,
        "skipped_updates": new_state.skipped,
        "skipped_in_a_row": new_state.skipped_in_a_row,
    }
    if "accuracy" in task:
        metrics["accuracy"] = task["accuracy"]
    if joint in stats:
        metrics.update({f"{joint}_{k}": v for k, v in means(stats[joint]).items()})
        metrics["loss"] = metrics["loss"] + setup.mlm_weight * metrics[f"{joint}_loss"]
    return new_state, metrics


def _with_statistics(new_state: TrainState, state: TrainState, statistics, accum_steps: int) -> TrainState:
    """new_state with the BatchNorm statistics of this step's forward passes (their mean over the
    micro-batches), kept only where the update was (a skipped update changes nothing)."""
    applied = new_state.skipped == state.skipped
    moved = jax.tree.map(lambda new, old: jnp.where(applied, new / accum_steps, old), statistics, state.params[STATS])
    return new_state.replace(params={**new_state.params, STATS: moved})


def predict_step(params, batch: dict, rng: jax.Array, *, setup: FinetuneSetup, axis_name: str | None = AXIS):
    """Logits of this device's rows, no dropout: [rows, labels] or [rows, seq, labels]."""
    del rng, axis_name  # inference is per row: no randomness, no collectives
    if setup.images is not None:
        batch = image_inputs(setup.images, batch, None, 0)
    return _apply(setup, params, batch, None)["logits"]

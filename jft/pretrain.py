"""Pretraining: `train_and_evaluate(config, workdir)`, the `jft pretrain` command.

Data -> model -> state -> loop -> outputs, in the order of jft.train.session (steps 1-4 only read):
1. check the settings; start jax.distributed when the config asks for several processes;
2. hold the workdir and read its run.json (a run there is resumed), open init_from;
3. the rows (data.prepared, or <workdir>/data) and the tokenizer: the run's own; else the rows',
   data.vocab's or init_from's, or one trained on data.corpus; any other one given must agree;
4. the model (the session's rules); a resumed run must have the same settings and rows, and may
   raise total_steps; then prepare data.corpus into <workdir>/data if needed and write run.json;
5. restore the newest good checkpoint (a finished run says so and returns) or initialise, with
   init_from's weights; train to total_steps, evaluating every eval_every steps and saving every
   checkpoint_every steps, at the end and on SIGTERM/SIGINT (then RunStopped).

Each evaluation reports context_gain when the rows record their unigram entropy (jft.data.prepare):
that entropy minus the held-out loss (masked-LM or next-word), in nats, what the model knows beyond token
frequencies. A run that ends with less than guard.min_context_gain is warned about on stderr
(`context_warning` gives the same text for a run directory, for a fine-tuning that starts from it).
"""

import functools
import math
import sys
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from jft.config import value_at
from jft.data.corpus import read_documents, source_identity, sources_of
from jft.data.loader import Loader, PretrainRows, check_streams
from jft.data.prepare import MODES, is_prepared, none_held_out, prepare
from jft.data.tokenizer import load_tokenizer, train_vocab
from jft.defaults import GUARD
from jft.defaults import pretrain as default_config
from jft.errors import JftError, choices
from jft.models import Head
from jft.models import get as get_family
from jft.params import merge, subtree
from jft.tasks.finetuning import REFERENCES, describe_penalty, resolve_reference
from jft.train import rundir
from jft.train.checkpoint import Checkpoints, saved_steps
from jft.train.log import TrainingLog, check_guard, read_metrics
from jft.train.loop import train_loop
from jft.train.masking import MaskingConfig, check_max_predictions
from jft.train.objectives import means
from jft.train.optim import check_optim, learning_rate_schedule, make_optimizer, penalty_mask
from jft.train.parallel import Runner, agree
from jft.train.session import RunSession
from jft.train.steps import (
    PretrainSetup,
    create_state,
    pretrain_eval_step,
    pretrain_step,
    with_reference,
    without_reference,
)

__all__ = ["context_warning", "default_config", "train_and_evaluate"]

# The pretraining objective of the rows of each jft prepare mode.
OBJECTIVES = {"pairs": "mlm+nsp", "packed": "mlm", "causal": "next_word"}

# Settings a resumed run may change: where things are (the rows are compared by content instead),
# logging, saving, devices, and total_steps (its own rule: not below the step reached). The model
# is compared field by field (RunSession.model).
MAY_CHANGE_ON_RESUME = (
    "init_from",
    "model",
    "data.corpus",
    "data.prepared",
    "data.eval_fraction",  # the rows are compared by content (its default was 0.02 before jft prepare's 0.01)
    "data.vocab",
    "data.vocab_kind",  # a resumed run reads its own vocabulary, trained or given (compared by content)
    "data.tfds_data_dir",
    "log_every",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpoints",
    "progress",
    "parallel",
    "guard",
    "total_steps",
)


def train_and_evaluate(config: ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Pretrains per config in workdir (resuming the run it holds); returns the last metrics.
    Raises RunStopped after saving when SIGTERM or SIGINT stops the run. An image model's config
    (pretrain/resnet_tiny) pretrains supervised (is_supervised), in jft.finetune's loop."""
    if is_supervised(config):
        raise JftError(
            "this config pretrains an image model on labeled images: jft.finetune.train_and_evaluate(config, "
            "workdir, stage='pretraining') runs it (as `jft pretrain` does)."
        )
    check_settings(config)
    runner = Runner.start(config.parallel)
    runner.check_batch(config.batch_size, config.accum_steps)
    family = config.model.get("family", "")
    with RunSession.open(workdir, "pretraining", config.init_from, MAY_CHANGE_ON_RESUME, family) as session:
        workdir = session.workdir
        recorded = session.run["config"].get("l2", {}).get("reference") if session.resuming else None
        config = resolve_reference(config, recorded)  # a run keeps its θ_ref
        if session.init is not None and session.init.kind == "finetuning":
            raise JftError(
                f"init_from {session.init.path} is a fine-tuning run; pretraining starts from a pretraining run "
                "or a Hugging Face directory."
            )
        rows_dir = _prepared_rows(config, workdir)
        if rows_dir is None and session.resuming:
            raise JftError(
                f"the rows of the run in {workdir} are gone ({workdir / 'data'} is missing); set data.prepared to "
                "a copy of them, or data.corpus to prepare them again."
            )
        tokenizer = _tokenizer(config, session, rows_dir)
        family, model = session.model(config.model, tokenizer)
        if session.resuming and "l2" not in session.run["config"]:  # a run of a jft without it: it had none
            session.run["config"]["l2"] = {**config.l2.to_dict(), "weight": 0.0}
        session.compare(config.to_dict())
        if session.uses_reference() and saved_steps(workdir / rundir.CHECKPOINTS):
            session.check_reference()
        rows = PretrainRows(rows_dir, "train") if rows_dir is not None else None
        mode, seq_len = (rows.metadata["mode"], rows.seq_len) if rows else (config.data.mode, config.data.seq_len)
        objective = OBJECTIVES[mode]
        if objective not in family.objectives:
            modes = " or ".join(f"'{m}'" for m, o in OBJECTIVES.items() if o in family.objectives)
            raise JftError(
                f"a {family.name} model pretrains with {' or '.join(family.objectives)}, not {objective} "
                f"(rows in mode '{mode}'); prepare the rows in mode {modes} (data.mode, or jft prepare --mode)."
            )
        if seq_len > model.max_length:
            raise JftError(
                f"rows of {seq_len} tokens are longer than the position table "
                f"(max_position_embeddings={model.max_position_embeddings}); use data.seq_len <= "
                f"{model.max_length}, or a model with a larger table."
            )
        if objective != "next_word":  # before anything is written: the rows are prepared next
            check_max_predictions(config.masking.max_predictions, seq_len)
        if rows is not None:
            _compare_rows(config, session, rows)
        longer = _length_change(config, session)
        session.verified()

        # Everything is checked: from here on, the run writes.
        if rows_dir is None:
            rows_dir = workdir / "data"
            data = config.data
            prepared = prepare(
                data.corpus,
                tokenizer,
                rows_dir,
                seq_len=data.seq_len,
                mode=data.mode,
                seed=config.seed,
                eval_fraction=data.eval_fraction,
                text_field=data.text_field,
                tfds_data_dir=data.tfds_data_dir or None,
                progress=config.progress,
            )
            if jax.process_index() == 0:
                print(_prepared_line(rows_dir, prepared), flush=True)
                if warning := none_held_out(prepared):
                    print(f"warning: {warning}", file=sys.stderr, flush=True)
        loaders = _loaders(config, rows_dir)  # their errors (streams, missing or damaged shards) before run.json
        meta = loaders[0].data.metadata
        identity = {key: meta[key] for key in ("fingerprint", "seq_len", "mode", "sources")}
        if meta.get("unigram_entropy") is not None:
            identity["unigram_entropy"] = meta["unigram_entropy"]
        session.start(config.to_dict(), family, model, identity, tokenizer)
        if longer:
            session.record({**session.run["config"], "total_steps": config.total_steps})
            print(longer, flush=True)

        # The state: restored, or new (with init_from's weights).
        loader, eval_loader = loaders
        masking = None
        if objective != "next_word":
            masking = MaskingConfig.for_vocabulary(
                meta["special_ids"],
                meta["vocab_size"],
                max_predictions=config.masking.max_predictions,
                rate=config.masking.rate,
                whole_word=config.masking.whole_word,
            )
        head = Head("pretraining", nsp=meta["mode"] == "pairs")
        module = family.module(model, head)
        tx, schedule = make_optimizer(config.optim, config.total_steps)
        rng = jax.random.PRNGKey(config.seed)
        with runner.making_state():
            params = family.init_params(module, jax.random.fold_in(rng, 0))
        setup = PretrainSetup(
            module,
            tx,
            schedule,
            masking,
            config.accum_steps,
            head.nsp,
            family.inputs,
            objective.removesuffix("+nsp"),
            config.l2.weight,
            penalty_mask(params, config.l2.exclude_bias_and_layer_norm),
        )
        with runner.making_state():
            host_state = jax.tree.map(np.asarray, {"train": create_state(params, tx), "rng": rng})
        checkpoints = Checkpoints(
            workdir / rundir.CHECKPOINTS,
            every_steps=config.checkpoint_every,
            keep=config.keep_checkpoints,
            asynchronous=config.async_checkpoints,
        )
        restored = session.restore(checkpoints, host_state)
        if restored is not None and restored[2] == config.total_steps:
            checkpoints.close()
            return session.finished(config.total_steps)
        reference = None  # θ_ref of L2-SP: the weights init_from gave
        if restored is not None:
            host_state = restored[0]
            reference = session.saved_reference() if session.uses_reference() else None
        elif session.init is not None:
            merged, report = merge(host_state["train"].params, session.init.params)
            host_state["train"] = host_state["train"].replace(params=jax.tree.map(np.asarray, merged))
            if jax.process_index() == 0:
                print(f"init from {session.init.describe()}: {report.summary()}", flush=True)
            if config.l2.weight and config.l2.reference == "init":
                reference = subtree(merged, report.loaded)
                session.save_reference(reference)
        start = int(host_state["train"].step)
        if jax.process_index() == 0:
            num_params = sum(x.size for x in jax.tree.leaves(host_state["train"].params))
            where = f"resuming at step {start} of {config.total_steps}" if start else "starting at step 0"
            epoch = f" ({config.data.streams} streams, {loader.epoch_rows * config.data.streams:,} an epoch)"
            print(
                f"pretraining {num_params:,} parameters on {runner.num_devices} {jax.default_backend()} device(s) "
                f"({runner.backend}); {len(loader.data):,} rows of {meta['seq_len']} tokens"
                f"{epoch if config.data.streams > 1 else ''}; {where}",
                flush=True,
            )
            if config.l2.weight:
                print(describe_penalty(config, reference is not None), flush=True)

        # The loop.
        state = host_state["train"] if reference is None else with_reference(host_state["train"], reference)
        state, rng = runner.put_state(state), runner.put_replicated(host_state["rng"])
        log = TrainingLog(workdir, config.total_steps, start, "pretraining", "sequences", config.progress, config.guard)
        evaluator = _evaluator(config, eval_loader, runner, setup, meta.get("unigram_entropy"))

        def evaluate(step, state) -> bool:
            log.write(step, "eval", evaluator(state.params))
            return False

        def save(step, state, final):
            saved = {"train": runner.replica(without_reference(state)), "rng": host_state["rng"]}
            checkpoints.save(step, saved, {"loader_position": step * config.batch_size}, force=final)

        try:
            train_loop(
                state,
                ((config.batch_size, batch) for batch in loader.iterate(start, runner.put_batch)),
                step=runner.compile(functools.partial(pretrain_step, setup=setup)),
                rng=rng,
                runner=runner,
                start=start,
                total_steps=config.total_steps,
                log_every=config.log_every,
                log=log,
                evaluate=evaluate if evaluator else None,
                eval_every=config.eval_every,
                save=save,
                save_every=config.checkpoint_every,
            )
        finally:
            checkpoints.wait()
            checkpoints.close()
            log.close()
        gain = log.last.get("eval_context_gain")
        if gain is not None and jax.process_index() == 0:
            text = _context_text(*_held_out_loss(log.last, "eval_"), gain, config.guard.min_context_gain)
            if text:
                print(f"warning: {text}", file=sys.stderr, flush=True)
        return log.last


def is_supervised(config: ConfigDict) -> bool:
    """Whether config pretrains supervised: an image model on labeled images (L_pre: cross-entropy
    on the pretraining classes, + λ‖θ‖²), which runs in jft.finetune's labeled loop as a pretraining
    run (init_from reads its newest checkpoint; its classifier is dropped for the new task's). A
    text pretraining config that names an image family, or the reverse, is refused."""
    labeled = "epochs" in config
    family = get_family(config.model.family or "bert")
    if labeled != (family.modality == "image"):
        what = (
            f"this config pretrains on labeled images (epochs, data.train), and names a {family.name} model, a text one"
            if labeled
            else f"model.family={family.name} is an image model, and this config pretrains on text (data.corpus)"
        )
        raise JftError(
            f"{what}: use --config pretrain/resnet_tiny or pretrain/vgg_tiny for images, pretrain/tiny (or "
            "pretrain/gpt2_tiny, roberta_tiny, modernbert_tiny) for text."
        )
    return labeled


def context_warning(workdir: str | Path, min_gain: float | None = None) -> str | None:
    """The warning (without "warning: ") that the pretraining run in `workdir`, finished or
    stopped, learned token frequencies and not context: its last held-out masked-LM loss is not
    `min_gain` nats (None: the run's own guard.min_context_gain) below the unigram entropy of its
    rows. None when it is, when min_gain is 0, and for a directory that holds no pretraining run,
    or one without a context_gain in its metrics (rows prepared by an earlier jft, no evaluation)."""
    workdir = Path(workdir)
    try:
        run = rundir.read_run(workdir)
    except JftError:
        return None
    if run is None or run.get("stage") != "pretraining":
        return None
    if min_gain is None:
        guard = run.get("config", {}).get("guard", {})
        min_gain = guard.get("min_context_gain", GUARD["guard.min_context_gain"][0])
    evaluations = [
        row
        for row in read_metrics(workdir)
        if row["split"] == "eval" and row.get("context_gain") is not None and _held_out_loss(row)[1] is not None
    ]
    if not evaluations:
        return None
    return _context_text(*_held_out_loss(evaluations[-1]), evaluations[-1]["context_gain"], min_gain)


def _held_out_loss(metrics: dict, prefix: str = "") -> tuple[str, float | None]:
    """The pretraining objective's name and held-out loss in a row of metrics: next-word or MLM."""
    if f"{prefix}lm_loss" in metrics:
        return "next-word", metrics[f"{prefix}lm_loss"]
    return "MLM", metrics.get(f"{prefix}mlm_loss")


def _context_text(objective: str, loss: float, gain: float, min_gain: float) -> str | None:
    """The warning about a context gain below min_gain (None: not below, or min_gain 0)."""
    if not min_gain or not math.isfinite(gain) or gain >= min_gain:
        return None
    return (
        f"the held-out {objective} loss ({loss:.2f}) is not below the unigram entropy of the data "
        f"({loss + gain:.2f}) by guard.min_context_gain ({min_gain:g}): this pretraining has learned token "
        "frequencies, not context; fine-tuning from it may do worse than from scratch. Train longer, or with a "
        "higher optim.lr."
    )


def _prepared_line(rows_dir: Path, meta: dict) -> str:
    """What the run's own prepare wrote (meta: its metadata): its rows, settings and fingerprint,
    the same that `jft prepare` writes with the same vocabulary and settings (its defaults are the run's)."""
    rows = ", ".join(f"{split} {info['rows']:,}" for split, info in meta["splits"].items())
    settings = ", ".join(
        f"{key} {meta[key]}"
        for key in ("seq_len", "mode", "seed", "eval_fraction", "short_seq_prob", "window_documents", "rows_per_shard")
    )
    return (
        f"prepared {rows_dir}: {meta['documents']:,} documents, {meta['tokens']:,} tokens, rows: {rows} ({settings}; "
        f"fingerprint {meta['fingerprint'][:12]})"
    )


def check_settings(config: ConfigDict) -> None:
    """Settings that are wrong whatever the workdir holds."""
    for key in ("total_steps", "batch_size", "accum_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[key] < 1:
            raise JftError(f"{key} must be at least 1, got {config[key]}.")
    check_optim(config.optim)
    check_guard(config.guard)
    if not config.l2.weight >= 0 or config.l2.reference not in REFERENCES:
        raise JftError(
            f"l2.weight must be 0 or more and l2.reference one of {choices(REFERENCES)}, got {config.l2.weight} and "
            f"'{config.l2.reference}'."
        )
    if not config.guard.min_context_gain >= 0:
        raise JftError(f"guard.min_context_gain must be 0 (off) or more, got {config.guard.min_context_gain}.")
    if not 0 < config.masking.rate < 1 or config.masking.max_predictions < 1:
        raise JftError(
            f"masking.rate must be between 0 and 1 and masking.max_predictions at least 1, got "
            f"{config.masking.rate} and {config.masking.max_predictions}."
        )
    check_streams(config.data.streams, config.batch_size)
    if config.data.mode not in MODES:
        raise JftError(f"data.mode '{config.data.mode}' is not one of {choices(MODES)}.")
    if config.eval_batches < 0:
        raise JftError(f"eval_batches must be 0 (no evaluation) or more, got {config.eval_batches}.")
    if config.keep_checkpoints < 1:
        raise JftError(
            f"keep_checkpoints must be at least 1, got {config.keep_checkpoints}: the newest checkpoint is the run."
        )
    if config.data.prepared and config.data.corpus:
        raise JftError(
            "set data.corpus (prepared into <workdir>/data) or data.prepared (a `jft prepare` directory), not both."
        )


def _prepared_rows(config: ConfigDict, workdir: Path) -> Path | None:
    """The directory of the run's rows when they exist already: data.prepared, or <workdir>/data."""
    if config.data.prepared:
        directory = Path(config.data.prepared)
        if not (directory / "metadata.json").is_file():
            raise JftError(f"data.prepared {directory} is not a prepared corpus (no metadata.json); run `jft prepare`.")
        return directory
    return workdir / "data" if is_prepared(workdir / "data") else None


def _compare_rows(config: ConfigDict, session: RunSession, rows: PretrainRows) -> None:
    """Rows found in <workdir>/data must be what the config asks for (data.corpus by content, when
    it is at hand; a new run's preparation settings); a resumed run's rows must be its own."""
    meta, workdir = rows.metadata, session.workdir
    if session.resuming and meta["fingerprint"] != session.run["data"]["fingerprint"]:
        session.differ(f"data: the rows in {rows.directory} are not the ones the run was trained on")
    if rows.directory != workdir / "data":
        return
    changed = []
    if not session.resuming:  # a resumed run compares its whole config instead
        wanted = {key: value_at(config, key) for key in ("data.seq_len", "data.mode", "data.eval_fraction", "seed")}
        changed = [
            f"{key}: prepared {meta.get(key.split('.')[-1])!r}, config {value!r}"
            for key, value in wanted.items()
            if meta.get(key.split(".")[-1]) != value
        ]
    try:
        sources = sources_of(config.data.corpus)
    except JftError:  # a glob that matches nothing (any more): the text is not at hand
        sources = []
    if sources and all(s.startswith("tfds:") or Path(s).is_file() for s in sources):
        prepared = [{k: v for k, v in s.items() if k != "source"} for s in meta["sources"]]
        if prepared != [source_identity(s) for s in sources]:
            changed.append(f"data.corpus: {config.data.corpus} is not the text the rows were prepared from")
    if changed and not session.resuming:
        raise JftError(
            f"{rows.directory} was prepared with other data settings ({'; '.join(changed)}). Set them back, "
            f"delete {rows.directory} to prepare the rows again, or use a new --workdir."
        )
    session.differ(*changed)


def _length_change(config: ConfigDict, session: RunSession) -> str:
    """A resumed run's new total_steps: refused below the step it has reached; else the line that
    says what the learning-rate schedule does from there ('' when unchanged)."""
    if not session.resuming or session.run["config"]["total_steps"] == config.total_steps:
        return ""
    before, now = session.run["config"]["total_steps"], config.total_steps
    reached = max(saved_steps(session.workdir / rundir.CHECKPOINTS), default=0)
    if now < reached:
        session.differ(f"total_steps: run {before}, now {now}, below step {reached} that the run has reached")
        return ""
    old, new = (float(learning_rate_schedule(config.optim, total)(reached)) for total in (before, now))
    return (
        f"total_steps {before} -> {now}: from step {reached} on, the learning rate follows the schedule of a "
        f"{now}-step run ({config.optim.decay} decay to 0 at step {now}): {new:.3g} at step {reached}, where the "
        f"{before}-step schedule had {old:.3g}; the optimizer's moments go on as they are."
    )


def _tokenizer(config: ConfigDict, session: RunSession, rows_dir: Path | None):
    """The run's tokenizer (step 3 of the module docstring); any other one given must agree."""
    init = session.init
    given = load_tokenizer(config.data.vocab, lowercase=config.data.lowercase) if config.data.vocab else None
    if session.resuming:
        tokenizer, source = rundir.run_tokenizer(session.workdir), "the run's own"
    elif rows_dir is not None:
        tokenizer, source = load_tokenizer(rows_dir / "tokenizer.json"), f"the one the rows in {rows_dir} hold"
    elif given is not None or (init is not None and init.tokenizer is not None):
        tokenizer, source = given or init.tokenizer, "init_from's"
    elif init is not None:
        raise JftError(f"init_from {init.path} has no tokenizer.json or vocab.txt; set data.vocab to its vocabulary.")
    else:
        if not config.data.corpus:
            raise JftError("no data: set data.corpus (your text file) or data.prepared (a `jft prepare` directory).")
        if jax.process_count() > 1:
            raise JftError("with several processes, run `jft prepare` first and set data.prepared.")
        data = config.data

        def lines():
            documents = read_documents(
                data.corpus, text_field=data.text_field, tfds_data_dir=data.tfds_data_dir or None
            )
            return (line for document in documents for line in document)

        kind = data.vocab_kind or get_family(config.model.family or "bert").vocabulary
        tokenizer, source = train_vocab(lines, vocab_size=data.vocab_size, lowercase=data.lowercase, kind=kind), ""
    if given is not None and given is not tokenizer:
        advice = f"Leave data.vocab empty to use {source}."
        rundir.check_same_vocabulary(tokenizer, given, f"data.vocab {config.data.vocab}", advice)
    if init is not None and init.tokenizer is not None and init.tokenizer is not tokenizer:
        advice = (
            "Leave data.vocab empty to use init_from's."
            if tokenizer is given
            else "Prepare the rows with init_from's vocabulary (`jft prepare --vocab` with its tokenizer.json or "
            "vocab.txt), or leave init_from empty."
        )
        rundir.check_same_vocabulary(tokenizer, init.tokenizer, f"init_from {init.path}", advice)
    return tokenizer


def _loaders(config: ConfigDict, data_dir: Path) -> tuple[Loader, Loader | None]:
    """This process's loaders of the training rows and of the held-out rows (None: none held out).
    With several processes each checks the shards it reads (sizes, SHA-256) here and all agree on
    what any found: a damaged shard that one process alone met in a step would leave the others
    waiting in the next collective."""
    here = dict(process_index=jax.process_index(), process_count=jax.process_count(), streams=config.data.streams)
    error, loaders = None, (None, None)
    try:
        train = Loader(PretrainRows(data_dir, "train"), config.batch_size, config.seed, **here)
        eval_rows = PretrainRows(data_dir, "eval")
        held_out = len(eval_rows) > 0 and config.eval_batches > 0
        loaders = (
            train,
            Loader(eval_rows, config.batch_size, config.seed, single_pass=True, **here) if held_out else None,
        )
        if jax.process_count() > 1:  # one process: each shard is checked at its first use, in the prefetch thread
            for loader in filter(None, loaders):
                loader.verify()
    except JftError as found:
        error = found
    agree(error)
    return loaders


def _evaluator(
    config: ConfigDict, loader: Loader | None, runner: Runner, setup: PretrainSetup, unigram_entropy: float | None
):
    """evaluate(params) -> the objective's loss, accuracy and perplexity on the held-out rows
    (lm_* for next-word, mlm_* and nsp_accuracy for masked-LM), and context_gain (unigram_entropy
    minus that loss, nats) when the rows record their unigram entropy."""
    if loader is None:
        return None
    eval_step = runner.compile(functools.partial(pretrain_eval_step, setup=setup), state_argnum=None)
    num_batches = min(config.eval_batches, loader.passes)
    eval_key = runner.put_replicated(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))

    def evaluate(params):
        totals = None
        for index in range(num_batches):
            sums = runner.get(eval_step(params, runner.put_batch(loader.batch(index)), eval_key))
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        name = "lm" if "lm" in totals else "mlm"
        found = means(totals[name])
        metrics = {f"{name}_loss": float(found["loss"]), f"{name}_accuracy": float(found["accuracy"])}
        metrics["perplexity"] = float(np.exp(metrics[f"{name}_loss"]))
        if unigram_entropy is not None:
            metrics["context_gain"] = unigram_entropy - metrics[f"{name}_loss"]
        if "nsp" in totals:
            metrics["nsp_accuracy"] = float(means(totals["nsp"])["accuracy"])
        return metrics

    return evaluate

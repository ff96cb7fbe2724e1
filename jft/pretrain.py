"""Pretraining: `train_and_evaluate(config, workdir)` wires data, step, checkpoints and metrics.

Order of a (re)start, the same for a fresh run and a resumed one. Steps 1-5 only read, so a
refusal leaves the workdir as it was:
1. check the settings; start jax.distributed when the config asks for several processes;
2. hold the workdir (run.lock, jft.rundir) and read its run.json: a run there is resumed;
3. the tokenizer: the run's own; else that of the prepared rows (data.prepared, or rows already
   in <workdir>/data), of data.vocab or of init_from, or one trained on data.corpus; any other
   vocabulary given must be the same;
4. the model: the run's own; else init_from's architecture; else model.preset and model.*;
5. a resumed run must have the same settings (but for logging, saving and devices) and the same
   rows, by content: else refuse, naming every difference;
6. prepare data.corpus into <workdir>/data when it is not there; check that the rows deal into
   data.streams and that this process's shards are there; write run.json and the tokenizer;
7. restore state, rng and loader position from the latest checkpoint (a finished run says so and
   returns), or initialise from config.seed, with init_from's weights;
8. train to total_steps, logging every log_every steps, evaluating every eval_every steps,
   saving every checkpoint_every steps, at the last step, and on SIGTERM/SIGINT (then RunStopped).
"""

import functools
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from jft import rundir
from jft.checkpoint import Checkpoints, StopRequest
from jft.config import model_group
from jft.data.corpus import read_documents, source_identity, sources_of
from jft.data.loader import Loader, PretrainRows, check_streams
from jft.data.prepare import is_prepared, prepare
from jft.data.tokenizer import load_tokenizer, train_vocab
from jft.errors import JftError
from jft.masking import MaskingConfig
from jft.models import BertConfig, BertForPreTraining, init_params
from jft.objectives import means
from jft.optim import check_optim, make_optimizer
from jft.parallel import Runner, parallel_config
from jft.params import merge
from jft.steps import PretrainSetup, create_state, pretrain_eval_step, pretrain_step
from jft.training_log import TrainingLog, check_guard, guard_config

# Settings a resumed run may change: where things are (data is compared by content instead),
# logging, saving, devices. The model is compared field by field (rundir.resume_model).
MAY_CHANGE_ON_RESUME = (
    "init_from",
    "model",
    "data.corpus",
    "data.prepared",
    "data.vocab",
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
)


def default_config() -> ConfigDict:
    """Every key a pretraining config has; configs/pretrain/*.py start from this and change sizes."""
    config = ConfigDict()
    # A workdir or Hugging Face directory to start from (weights, architecture and vocabulary), e.g.
    # a 128-token run for a 512-token phase; the optimizer and schedule start anew.
    config.init_from = ""
    # The architecture of a run from scratch: a preset (tiny, mini, base, large) and any field set
    # here; vocab_size follows the vocabulary. With init_from, the checkpoint's architecture is used,
    # and only dropout, dtype, attention_impl, remat and initializer_range may be set differently.
    config.model = model_group("tiny")
    config.data = ConfigDict(
        dict(
            corpus="",  # text file(s), JSONL or tfds:NAME[:SPLIT]; prepared into <workdir>/data
            # vocab.txt or tokenizer.json; empty: init_from's, or a WordPiece vocabulary trained on the corpus
            vocab="",
            vocab_size=8000,  # when training the vocabulary
            lowercase=True,
            text_field="text",  # JSONL and TFDS
            tfds_data_dir="",  # where TFDS datasets are prepared; empty: TFDS's default
            prepared="",  # a `jft prepare` directory; takes the place of corpus
            seq_len=128,
            mode="pairs",  # pairs (MLM + NSP) | packed (MLM only)
            eval_fraction=0.02,  # documents held out for evaluation
            # Streams the rows are dealt into, whole shards each; every batch takes batch_size/streams
            # rows from each. 1: every process reads from every shard (a filesystem all hosts see);
            # the number of processes (or a multiple): each reads only its own streams' shards, so
            # each host needs only those files. The batches do not depend on the number of processes.
            streams=1,
        )
    )
    config.masking = ConfigDict(dict(rate=0.15, max_predictions=20, whole_word=False))
    config.optim = ConfigDict(
        dict(
            name="adamw",  # adamw | lamb
            lr=1e-4,
            warmup_steps=100,
            decay="linear",  # linear | cosine | constant
            b1=0.9,
            b2=0.999,
            eps=1e-6,
            weight_decay=0.01,  # decoupled; biases and LayerNorm never decay
            max_grad_norm=1.0,  # 0 turns clipping off
        )
    )
    config.batch_size = 256  # global: over all devices and processes
    config.accum_steps = 1
    config.total_steps = 1000
    config.seed = 0
    config.parallel = parallel_config()
    config.guard = guard_config()
    config.log_every = 50
    config.eval_every = 500
    config.eval_batches = 10
    config.checkpoint_every = 500
    config.keep_checkpoints = 3  # at least 1: the newest checkpoint is the run
    config.async_checkpoints = True
    config.progress = True
    return config


def _check_settings(config: ConfigDict) -> None:
    """Settings that are wrong whatever the workdir holds."""
    for key in ("total_steps", "batch_size", "accum_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[key] < 1:
            raise JftError(f"{key} must be at least 1, got {config[key]}.")
    check_optim(config.optim)
    check_guard(config.guard)
    if not 0 < config.masking.rate < 1 or config.masking.max_predictions < 1:
        raise JftError(
            f"masking.rate must be between 0 and 1 and masking.max_predictions at least 1, got "
            f"{config.masking.rate} and {config.masking.max_predictions}."
        )
    check_streams(config.data.streams, config.batch_size)
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


def _rows_differences(config: ConfigDict, workdir: Path, rows: PretrainRows, resuming: bool) -> list[str]:
    """How rows found in <workdir>/data differ from what the config asks for: data.corpus (by
    content, when it is at hand) and, for a new run, the preparation settings."""
    meta = rows.metadata
    if rows.directory != workdir / "data":
        return []
    changed = []
    if not resuming:  # a resumed run compares its whole config instead
        wanted = {"seq_len": config.data.seq_len, "mode": config.data.mode, "seed": config.seed}
        changed = [f"{k}: prepared {meta.get(k)!r}, config {v!r}" for k, v in wanted.items() if meta.get(k) != v]
    try:
        sources = sources_of(config.data.corpus)
    except JftError:  # a glob that matches nothing (any more): the text is not at hand
        sources = []
    if sources and all(s.startswith("tfds:") or Path(s).is_file() for s in sources):
        prepared = [{k: v for k, v in s.items() if k != "source"} for s in meta["sources"]]
        if prepared != [source_identity(s) for s in sources]:
            changed.append(f"data.corpus: {config.data.corpus} is not the text the rows were prepared from")
    return changed


def _tokenizer(config: ConfigDict, run: dict | None, workdir: Path, rows_dir: Path | None, init):
    """The run's tokenizer (see step 3 of the module docstring); any other one given must agree."""
    given = load_tokenizer(config.data.vocab, lowercase=config.data.lowercase) if config.data.vocab else None
    others = [(given, f"data.vocab {config.data.vocab}")]
    if init is not None:
        others.append((init.tokenizer, f"init_from {init.path}"))
    if run is not None:
        tokenizer = rundir.run_tokenizer(workdir)
    elif rows_dir is not None:
        tokenizer = load_tokenizer(rows_dir / "tokenizer.json")
    elif given is not None or (init is not None and init.tokenizer is not None):
        tokenizer = given or init.tokenizer
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

        tokenizer = train_vocab(lines, vocab_size=data.vocab_size, lowercase=data.lowercase)
    for other, what in others:
        if other is not None and other is not tokenizer:
            rundir.check_same_vocabulary(tokenizer, other, what)
    return tokenizer


def train_and_evaluate(config: ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Pretrains per config in workdir (resuming the run it holds); returns the last metrics.

    Raises RunStopped after saving when SIGTERM or SIGINT stops the run.
    """
    _check_settings(config)
    runner = Runner.start(config.parallel)
    workdir = Path(workdir).absolute()
    runner.check_batch(config.batch_size, config.accum_steps)
    with rundir.hold(workdir):
        run, init = rundir.open_run(workdir, "pretraining", config.init_from)
        if init is not None and init.kind == "finetuning":
            raise JftError(
                f"init_from {init.path} is a fine-tuning run; pretraining starts from a pretraining run or a "
                "Hugging Face directory."
            )
        rows_dir = _prepared_rows(config, workdir)
        if rows_dir is None and run is not None:
            raise JftError(
                f"the rows of the run in {workdir} are gone ({workdir / 'data'} is missing); set data.prepared to "
                "a copy of them, or data.corpus to prepare them again."
            )
        tokenizer = _tokenizer(config, run, workdir, rows_dir, init)
        model_cfg, differences = rundir.run_model(config.model, run, init, tokenizer.get_vocab_size())
        if run is not None:
            differences += rundir.config_differences(run["config"], config.to_dict(), MAY_CHANGE_ON_RESUME)
        seq_len = PretrainRows(rows_dir, "train").seq_len if rows_dir is not None else config.data.seq_len
        if seq_len > model_cfg.max_position_embeddings:
            raise JftError(
                f"rows of {seq_len} tokens are longer than the position table "
                f"(max_position_embeddings={model_cfg.max_position_embeddings}); use data.seq_len <= "
                f"{model_cfg.max_position_embeddings}, or a model with a larger table."
            )
        if rows_dir is not None:
            rows = PretrainRows(rows_dir, "train")
            changed = _rows_differences(config, workdir, rows, resuming=run is not None)
            if changed and run is None:
                raise JftError(
                    f"{rows_dir} was prepared with other data settings ({'; '.join(changed)}). Use a new --workdir "
                    "(with --config.init_from=<this workdir> to continue from its weights, e.g. for a 512-token phase)."
                )
            differences += changed
            if run is not None and rows.metadata["fingerprint"] != run["data"]["fingerprint"]:
                differences.append(f"data: the rows in {rows_dir} are not the ones the run was trained on")
        if run is not None:
            rundir.refuse_resume(workdir, "pretraining", differences)

        # Everything is checked: from here on, the run writes.
        if rows_dir is None:
            rows_dir = workdir / "data"
            data = config.data
            prepare(
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
        loaders = _loaders(config, rows_dir)  # their errors (streams, missing shards) before the run is written
        if run is None and jax.process_index() == 0:
            meta = loaders[0].data.metadata
            identity = {key: meta[key] for key in ("fingerprint", "seq_len", "mode", "sources")}
            origin = {"from": init.describe()} if init is not None else None
            run = rundir.new_run("pretraining", config.to_dict(), model_cfg, identity, init=origin)
            rundir.write_run(workdir, run, tokenizer)
        return _train(config, workdir, runner, model_cfg, loaders, init)


def _train(config: ConfigDict, workdir: Path, runner: Runner, model_cfg: BertConfig, loaders, init):
    """Steps 7-8 of the module docstring."""
    loader, eval_loader = loaders
    train_rows, meta = loader.data, loader.data.metadata
    masking = MaskingConfig.for_vocabulary(
        meta["special_ids"],
        meta["vocab_size"],
        max_predictions=config.masking.max_predictions,
        rate=config.masking.rate,
        whole_word=config.masking.whole_word,
    )
    model = BertForPreTraining(model_cfg, nsp=meta["mode"] == "pairs")
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    setup = PretrainSetup(model, tx, schedule, masking, config.accum_steps)

    rng = jax.random.PRNGKey(config.seed)
    host_state = {"train": create_state(init_params(model, jax.random.fold_in(rng, 0)), tx), "rng": rng}
    host_state = jax.tree.map(np.asarray, host_state)
    checkpoints = Checkpoints(
        workdir / rundir.CHECKPOINTS,
        every_steps=config.checkpoint_every,
        keep=config.keep_checkpoints,
        asynchronous=config.async_checkpoints,
    )
    restored = rundir.restore_run(checkpoints, host_state, workdir)
    if restored is not None and restored[2] == config.total_steps:
        checkpoints.close()
        return rundir.finished(workdir, config.total_steps)
    if restored is not None:
        host_state = restored[0]
    elif init is not None:
        merged, report = merge(host_state["train"].params, init.params)
        host_state["train"] = host_state["train"].replace(params=jax.tree.map(np.asarray, merged))
        if jax.process_index() == 0:
            print(f"init from {init.describe()}: {report.summary()}", flush=True)
    train_step = runner.compile(functools.partial(pretrain_step, setup=setup))
    eval_step = runner.compile(functools.partial(pretrain_eval_step, setup=setup), state_argnum=None)
    state, rng = runner.put_replicated(host_state["train"]), runner.put_replicated(host_state["rng"])
    start = int(host_state["train"].step)
    if jax.process_index() == 0:
        num_params = sum(x.size for x in jax.tree.leaves(host_state["train"].params))
        where = f"resuming at step {start} of {config.total_steps}" if start else "starting at step 0"
        epoch = f" ({config.data.streams} streams, {loader.epoch_rows * config.data.streams:,} an epoch)"
        print(
            f"pretraining {num_params:,} parameters on {runner.num_devices} {jax.default_backend()} device(s) "
            f"({runner.backend}); {len(train_rows):,} rows of {meta['seq_len']} tokens"
            f"{epoch if config.data.streams > 1 else ''}; {where}",
            flush=True,
        )
    evaluate = _evaluator(config, eval_loader, runner, eval_step)
    log = TrainingLog(workdir, config.total_steps, start, "pretraining", "sequences", config.progress, config.guard)
    batches = loader.iterate(start, runner.put_batch)
    stopped = None
    try:
        with StopRequest() as stop:
            for step in range(start + 1, config.total_steps + 1):
                state, metrics = train_step(state, next(batches), rng)
                log.step(step, config.batch_size)
                stopping = stop.agreed(step % config.log_every == 0)
                if step % config.log_every == 0 or step == config.total_steps or stopping:
                    log.train(step, {k: float(v) for k, v in runner.get(metrics).items()})  # the one host sync
                if evaluate and (step % config.eval_every == 0 or step == config.total_steps):
                    log.write(step, "eval", evaluate(state.params))
                done = step == config.total_steps or stopping
                if done or step % config.checkpoint_every == 0:
                    saved = {"train": runner.replica(state), "rng": host_state["rng"]}
                    position = {"loader_position": step * config.batch_size}
                    checkpoints.save(step, saved, position, force=done)
                if stopping:
                    stopped = stop.stopped(step)
                    break
    finally:
        batches.close()  # stops the prefetching thread
        checkpoints.wait()
        checkpoints.close()
        log.close()
    if stopped:
        raise stopped
    return log.last


def _loaders(config: ConfigDict, data_dir: Path) -> tuple[Loader, Loader | None]:
    """This process's loaders of the training rows and of the held-out rows (None: none held out)."""
    here = dict(process_index=jax.process_index(), process_count=jax.process_count(), streams=config.data.streams)
    train = Loader(PretrainRows(data_dir, "train"), config.batch_size, config.seed, **here)
    eval_rows = PretrainRows(data_dir, "eval")
    if len(eval_rows) == 0 or config.eval_batches <= 0:
        return train, None
    return train, Loader(eval_rows, config.batch_size, config.seed, single_pass=True, **here)


def _evaluator(config: ConfigDict, loader: Loader | None, runner: Runner, eval_step):
    """evaluate(params) -> MLM accuracy, loss, perplexity (and NSP accuracy) on the held-out rows."""
    if loader is None:
        return None
    num_batches = min(config.eval_batches, loader.passes)
    eval_key = runner.put_replicated(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))

    def evaluate(params):
        totals = None
        for index in range(num_batches):
            sums = runner.get(eval_step(params, runner.put_batch(loader.batch(index)), eval_key))
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        mlm = means(totals["mlm"])
        metrics = {"mlm_loss": float(mlm["loss"]), "mlm_accuracy": float(mlm["accuracy"])}
        metrics["perplexity"] = float(np.exp(metrics["mlm_loss"]))
        if "nsp" in totals:
            metrics["nsp_accuracy"] = float(means(totals["nsp"])["accuracy"])
        return metrics

    return evaluate

"""Pretraining: `train_and_evaluate(config, workdir)` wires data, step, checkpoints and metrics.

Order of a (re)start, the same for a fresh run and a resumed one:
1. start jax.distributed when the config asks for several processes;
2. find the prepared rows (preparing them from data.corpus into <workdir>/data on first use);
3. build model, optimizer and the compiled step;
4. if <workdir>/checkpoints has a complete step: check it is the same model, restore state,
   rng and loader position from it; else initialise from config.seed;
5. train to total_steps, logging every log_every steps, evaluating every eval_every steps,
   saving every checkpoint_every steps and on SIGTERM/SIGINT, and always at the last step.
"""

import dataclasses
import functools
import json
import math
from pathlib import Path

import jax
import numpy as np
from ml_collections import ConfigDict

from jft.checkpoint import Checkpoints, StopRequest, check_same_model, restore_latest
from jft.config import bert_config, model_config
from jft.data.corpus import read_documents
from jft.data.loader import Loader, PretrainRows
from jft.data.prepare import prepare
from jft.data.tokenizer import train_vocab
from jft.errors import JftError
from jft.masking import MaskingConfig
from jft.models import BertForPreTraining, init_params
from jft.objectives import means
from jft.optim import make_optimizer
from jft.parallel import Runner, initialize_distributed, parallel_config
from jft.params import merge
from jft.steps import PretrainSetup, create_state, pretrain_eval_step, pretrain_step
from jft.training_log import TrainingLog


def default_config() -> ConfigDict:
    """Every key a pretraining config has; configs/pretrain/*.py start from this and change sizes."""
    config = ConfigDict()
    config.init_from = ""  # another pretraining workdir to start from (weights only), e.g. for a 512-token phase
    config.model = model_config("tiny", vocab_size=0)  # vocab_size 0: the vocabulary's size
    config.data = ConfigDict(
        dict(
            corpus="",  # text file(s), JSONL or tfds:NAME[:SPLIT]; prepared into <workdir>/data
            vocab="",  # vocab.txt or tokenizer.json; empty: train a WordPiece vocabulary on the corpus
            vocab_size=8000,  # when training the vocabulary
            lowercase=True,
            text_field="text",  # JSONL and TFDS
            tfds_data_dir="",  # where TFDS datasets are prepared; empty: TFDS's default
            prepared="",  # a `jft prepare` directory; takes the place of corpus
            seq_len=128,
            mode="pairs",  # pairs (MLM + NSP) | packed (MLM only)
            eval_fraction=0.02,  # documents held out for evaluation
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
    config.log_every = 50
    config.eval_every = 500
    config.eval_batches = 10
    config.checkpoint_every = 500
    config.keep_checkpoints = 3
    config.async_checkpoints = True
    config.progress = True
    return config


def prepared_data(config: ConfigDict, workdir: Path) -> Path:
    """The prepared rows of a run: data.prepared, or data.corpus prepared once into <workdir>/data."""
    data = config.data
    if data.prepared:
        return Path(data.prepared)
    if not data.corpus:
        raise JftError("no data: set data.corpus (your text file) or data.prepared (a `jft prepare` directory).")
    out = workdir / "data"
    if (out / "metadata.json").is_file():
        meta = json.loads((out / "metadata.json").read_text())
        wanted = {"seq_len": data.seq_len, "mode": data.mode, "sources": [data.corpus], "seed": config.seed}
        changed = [f"{k}: prepared {meta.get(k)!r}, config {v!r}" for k, v in wanted.items() if meta.get(k) != v]
        if changed:
            raise JftError(
                f"{out} was prepared with other data settings ({'; '.join(changed)}). Use a new --workdir "
                "(with --config.init_from=<this workdir> to continue from its weights, e.g. for a 512-token phase)."
            )
        return out
    if jax.process_count() > 1:
        raise JftError("with several processes, run `jft prepare` first and set data.prepared.")
    vocab = data.vocab
    if not vocab:
        documents = read_documents(data.corpus, text_field=data.text_field, tfds_data_dir=data.tfds_data_dir or None)
        texts = (line for doc in documents for line in doc)
        vocab = train_vocab(texts, workdir / "vocab", vocab_size=data.vocab_size, lowercase=data.lowercase)
    prepare(
        data.corpus,
        vocab,
        out,
        seq_len=data.seq_len,
        mode=data.mode,
        seed=config.seed,
        eval_fraction=data.eval_fraction,
        text_field=data.text_field,
        tfds_data_dir=data.tfds_data_dir or None,
        lowercase=data.lowercase,
        progress=config.progress,
    )
    return out


def train_and_evaluate(config: ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Pretrains per config in workdir (resuming if it holds a checkpoint); returns the last metrics."""
    for key in ("total_steps", "batch_size", "accum_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[key] < 1:
            raise JftError(f"{key} must be at least 1, got {config[key]}.")
    p = config.parallel
    initialize_distributed(p.coordinator_address, p.num_processes, p.process_id)
    workdir = Path(workdir)
    data_dir = prepared_data(config, workdir)
    train_rows = PretrainRows(data_dir, "train")
    meta = train_rows.metadata
    model_cfg = bert_config(config.model, vocab_size=meta["vocab_size"])
    if meta["vocab_size"] > model_cfg.vocab_size:
        raise JftError(
            f"the data's vocabulary has {meta['vocab_size']} tokens, more than model.vocab_size "
            f"{model_cfg.vocab_size}; set model.vocab_size={meta['vocab_size']} (or 0 to follow the data)."
        )
    if meta["seq_len"] > model_cfg.max_position_embeddings:
        raise JftError(
            f"the prepared rows have {meta['seq_len']} tokens, more than the position table "
            f"(model.max_position_embeddings={model_cfg.max_position_embeddings}); prepare with "
            f"seq_len <= {model_cfg.max_position_embeddings} or enlarge the table."
        )

    runner = Runner(p.backend)
    runner.check_batch(config.batch_size, config.accum_steps)
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
    train_step = runner.compile(functools.partial(pretrain_step, setup=setup))
    eval_step = runner.compile(functools.partial(pretrain_eval_step, setup=setup), state_argnum=None)

    rng = jax.random.PRNGKey(config.seed)
    host_state = {"train": create_state(init_params(model, jax.random.fold_in(rng, 0)), tx), "rng": rng}
    host_state = jax.tree.map(np.asarray, host_state)
    checkpoints = Checkpoints(
        workdir,
        every_steps=config.checkpoint_every,
        keep=config.keep_checkpoints,
        asynchronous=config.async_checkpoints,
    )
    run_meta = {"model": dataclasses.asdict(model_cfg), "config": config.to_dict(), "data": str(data_dir)}
    if checkpoints.latest_step() is not None:
        saved_meta = checkpoints.restore_meta()
        check_same_model(saved_meta, model_cfg, workdir)
        _check_same_stream(saved_meta, run_meta, workdir)
        host_state, _ = checkpoints.restore(host_state)
    elif config.init_from:
        host_state["train"] = host_state["train"].replace(
            params=_params_from_run(config.init_from, model_cfg, host_state["train"].params)
        )
    state, rng = runner.put_replicated(host_state["train"]), runner.put_replicated(host_state["rng"])
    start = int(host_state["train"].step)
    if jax.process_index() == 0:
        num_params = sum(x.size for x in jax.tree.leaves(host_state["train"].params))
        where = f"resuming at step {start} from {checkpoints.directory}" if start else "starting at step 0"
        print(
            f"pretraining {num_params:,} parameters on {runner.num_devices} {jax.default_backend()} device(s) "
            f"({runner.backend}); {len(train_rows):,} rows of {meta['seq_len']} tokens; {where}",
            flush=True,
        )

    loader = Loader(
        train_rows, config.batch_size, config.seed, process_index=jax.process_index(), process_count=jax.process_count()
    )
    evaluate = _evaluator(config, data_dir, runner, eval_step)
    log = TrainingLog(workdir, config.total_steps, start, "pretraining", "sequences", config.progress)
    batches = loader.iterate(start, runner.put_batch)
    with StopRequest() as stop:
        for step in range(start + 1, config.total_steps + 1):
            state, metrics = train_step(state, next(batches), rng)
            log.step(step, config.batch_size)
            stopping = stop.agreed(step % config.log_every == 0)
            if step % config.log_every == 0 or step == config.total_steps or stopping:
                log.train(step, {k: float(v) for k, v in runner.get(metrics).items()})  # the one host sync per log step
            if evaluate and (step % config.eval_every == 0 or step == config.total_steps):
                log.write(step, "eval", evaluate(state.params))
            done = step == config.total_steps or stopping
            if done or step % config.checkpoint_every == 0:
                saved = {"train": runner.get(state), "rng": host_state["rng"]}
                checkpoints.save(step, saved, {**run_meta, "loader_position": step * config.batch_size}, force=done)
            if stopping:
                log.stopped(step)
                break
    batches.close()  # stops the prefetching thread
    checkpoints.wait()
    checkpoints.close()
    log.close()
    return log.last


def _check_same_stream(saved: dict, current: dict, workdir: Path) -> None:
    """A resumed run must read the same batches: same data, global batch size, seed and mode."""
    keys = {
        "data": lambda m: m["data"],
        "batch_size": lambda m: m["config"]["batch_size"],
        "seed": lambda m: m["config"]["seed"],
        "mode": lambda m: m["config"]["data"]["mode"],
    }
    changed = [
        f"{k}: checkpoint {get(saved)!r}, now {get(current)!r}" for k, get in keys.items() if get(saved) != get(current)
    ]
    if changed:
        raise JftError(
            f"{workdir} holds a run with other settings ({'; '.join(changed)}); resuming would skip or repeat data. "
            "Resume with the same settings, or start a new --workdir (--config.init_from keeps the weights)."
        )


def _params_from_run(init_from: str, model_cfg, target):
    """The parameters of another pretraining workdir's latest checkpoint (same model), to continue from."""
    state, meta = restore_latest(init_from, f"init_from {init_from} has no checkpoint.")
    check_same_model(meta, model_cfg, init_from)
    merged, report = merge(target, state["train"]["params"])
    if report.created:
        raise JftError(f"init_from {init_from} lacks {', '.join(report.created)} (another pretraining mode?).")
    print(f"init from {init_from} (step {int(state['train']['step'])}): {report.summary()}", flush=True)
    return jax.tree.map(np.asarray, merged)


def _evaluator(config: ConfigDict, data_dir: Path, runner: Runner, eval_step):
    """evaluate(params) -> MLM accuracy, loss, perplexity (and NSP accuracy) on the held-out rows."""
    eval_rows = PretrainRows(data_dir, "eval")
    if len(eval_rows) == 0 or config.eval_batches <= 0:
        return None
    loader = Loader(
        eval_rows,
        config.batch_size,
        config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        single_pass=True,
    )
    num_batches = min(config.eval_batches, math.ceil(len(eval_rows) / config.batch_size))
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

"""The pretraining stage: step, backends, accumulation, skipping, the loop, resume, bad input."""

import json
import math
import os
import re
import shutil
import signal
import subprocess

import jax
import numpy as np
import optax
import pytest

from conftest import (
    SMALL_PRETRAIN,
    TINY_MODEL,
    corpus_vocab,
    final_state,
    largest_difference,
    pretrain_command,
    pretrain_steps,
    start_and_signal,
    write_corpus,
)
from jft.data.loader import Loader, PretrainRows
from jft.data.prepare import prepare
from jft.errors import JftError
from jft.models.bert import BertConfig, BertForPreTraining, init_params
from jft.params import flatten
from jft.pretrain import default_config, train_and_evaluate
from jft.train.log import read_metrics
from jft.train.masking import MaskingConfig
from jft.train.optim import clip_by_global_norm, make_optimizer, weight_decay_mask
from jft.train.parallel import Runner
from jft.train.steps import PretrainSetup


def small_config(**overrides):
    config = default_config()
    for key, value in {**SMALL_PRETRAIN, **overrides}.items():
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    text = write_corpus(root / "corpus.txt", documents=120)
    vocab = corpus_vocab(text, root / "vocab")
    prepare(str(text), vocab, root / "rows", seq_len=32, seed=0, eval_fraction=0.1, progress=False)
    return text, root / "rows"


DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


def _setup(rows: PretrainRows, accum_steps=1, **model_overrides):
    meta = rows.metadata
    fields = dict(vocab_size=meta["vocab_size"], **TINY_MODEL)
    model = BertForPreTraining(BertConfig(**{**fields, **model_overrides}))
    tx, schedule = make_optimizer(default_config().optim, 10)
    ids = meta["special_ids"]
    masking = MaskingConfig(ids["mask"], meta["vocab_size"], (ids["pad"], ids["cls"], ids["sep"]), max_predictions=5)
    return PretrainSetup(model, tx, schedule, masking, accum_steps)


@pytest.mark.parametrize("backend", ["shard_map", "pmap"])
def test_eight_devices_give_the_one_device_update(corpus, backend):
    rows = PretrainRows(corpus[1])
    setup = _setup(rows, **DROPOUT)
    one, one_metrics = pretrain_steps(setup, rows, "jit")
    eight, eight_metrics = pretrain_steps(setup, rows, backend)
    assert Runner(backend).num_devices == 8
    # Same rows, same masks and dropout (keyed by the row's place in the batch): only the order of float sums differs.
    assert largest_difference(one.params, eight.params) < 1e-6
    assert abs(one_metrics["loss"] - eight_metrics["loss"]) < 1e-5


def test_gradient_accumulation_equals_one_big_batch(corpus):
    rows = PretrainRows(corpus[1])
    whole, _ = pretrain_steps(_setup(rows, accum_steps=1, **DROPOUT), rows, "jit")
    accumulated, _ = pretrain_steps(_setup(rows, accum_steps=4, **DROPOUT), rows, "jit")
    assert largest_difference(whole.params, accumulated.params) < 1e-6


def test_a_padded_vocabulary_trains_like_the_unpadded_one_and_stores_no_padding(corpus):
    """vocab_multiple pads the decoder's matmul only: same losses, same parameters (so the same
    checkpoint and export), and the padded width is in the compiled program."""
    rows = PretrainRows(corpus[1])
    vocab = rows.metadata["vocab_size"]
    padded = -(-vocab // 128) * 128
    assert padded != vocab
    runs = {}
    for multiple in (1, 128):
        setup = _setup(rows, vocab_multiple=multiple)
        program = jax.jit(lambda p, ids, setup=setup: setup.model.apply({"params": p}, ids)["mlm_logits"])
        params = init_params(setup.model, jax.random.PRNGKey(0))
        text = program.lower(params, np.zeros((2, 8), np.int32)).as_text()
        runs[multiple] = (*pretrain_steps(setup, rows, "jit"), f"x{padded}x" in text)
    (unpadded, unpadded_metrics, _), (padded_state, padded_metrics, padded_in_program) = runs[1], runs[128]
    assert padded_in_program and not runs[1][2]
    assert jax.tree.map(np.shape, padded_state.params) == jax.tree.map(np.shape, unpadded.params)
    assert padded_state.params["cls"]["predictions"]["bias"].shape == (vocab,)
    assert largest_difference(unpadded.params, padded_state.params) < 1e-6
    assert abs(unpadded_metrics["loss"] - padded_metrics["loss"]) < 1e-5


def test_non_finite_gradients_skip_the_update_and_are_counted(corpus):
    rows = PretrainRows(corpus[1])
    setup = _setup(rows)
    params = init_params(setup.model, jax.random.PRNGKey(0))
    params["bert"]["embeddings"]["word_embeddings"]["embedding"] *= 1e38  # overflows to inf
    state, metrics = pretrain_steps(setup, rows, "jit", steps=2, params=params)
    assert int(state.step) == 2 and int(state.skipped) == 2 and metrics["skipped_updates"] == 2
    assert not np.isfinite(metrics["grad_norm"])
    np.testing.assert_array_equal(state.params["cls"]["predictions"]["bias"], params["cls"]["predictions"]["bias"])


def test_weight_decay_skips_biases_and_layer_norm():
    params = init_params(BertForPreTraining(BertConfig.preset("tiny", vocab_size=50)), jax.random.PRNGKey(0))
    mask = flatten(weight_decay_mask(params))
    assert mask["bert/encoder/layer/attention/self/query/kernel"] and mask["bert/embeddings/word_embeddings/embedding"]
    assert not mask["bert/encoder/layer/attention/self/query/bias"]
    assert not mask["bert/embeddings/LayerNorm/scale"] and not mask["cls/predictions/transform/LayerNorm/bias"]
    assert not mask["cls/predictions/bias"]


@pytest.mark.parametrize("scale", [0.1, 10.0], ids=["below the limit", "above it"])
def test_clipping_given_the_steps_norm_is_optax_clipping(scale):
    """jft's clip takes the norm the step computed (one pass over the gradients less) and gives
    optax.clip_by_global_norm's updates and state, given the norm or not."""
    grads = {"a": scale * np.arange(6.0).reshape(2, 3), "b": {"bias": -scale * np.ones(4)}}
    ours, theirs = clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
    expected, expected_state = theirs.update(grads, theirs.init(grads))
    for norm in (None, optax.tree.norm(grads)):
        clipped, state = ours.update(grads, ours.init(grads), grad_norm=norm)
        assert jax.tree.structure(state) == jax.tree.structure(expected_state)
        for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(optax.tree.norm(clipped)) == pytest.approx(min(float(optax.tree.norm(grads)), 1.0), rel=1e-5)


def test_training_learns_and_writes_metrics(corpus, tmp_path):
    config = small_config(total_steps=40, log_every=10, eval_every=20, checkpoint_every=20)
    config.data.prepared = str(corpus[1])
    config.optim.lr, config.optim.warmup_steps = 2e-3, 5
    final = train_and_evaluate(config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == [10, 20, 30, 40]
    for key in (
        "loss",
        "mlm_loss",
        "mlm_accuracy",
        "nsp_loss",
        "nsp_accuracy",
        "learning_rate",
        "grad_norm",
        "sequences_per_second",
        "skipped_updates",
    ):
        assert key in train[-1]
    assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 0.5
    evals = [m for m in lines if m["split"] == "eval"]
    assert [m["step"] for m in evals] == [20, 40] and evals[-1]["perplexity"] < evals[0]["perplexity"]
    assert final["eval_mlm_accuracy"] > 0.2 and final["step"] == 40
    assert any((tmp_path / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]


def test_lamb_cosine_packed_whole_word(corpus, tmp_path):
    text, _ = corpus
    config = small_config(total_steps=4, log_every=1, eval_every=4, checkpoint_every=4)
    config.data.corpus, config.data.vocab, config.data.mode = str(text), str(corpus[1] / "tokenizer.json"), "packed"
    config.optim.name, config.optim.decay, config.masking.whole_word = "lamb", "cosine", True
    config.optim.warmup_steps = 1
    final = train_and_evaluate(config, tmp_path)
    assert np.isfinite(final["train_loss"]) and "train_nsp_loss" not in final  # packed rows: MLM only
    assert json.loads((tmp_path / "data" / "metadata.json").read_text())["mode"] == "packed"
    # warmup over step 0, then cosine from optim.lr to 0 over the 3 steps left: lr·(1 + cos(π·t/3))/2
    logged = [r["learning_rate"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    lr = config.optim.lr
    assert logged == pytest.approx([0.0] + [lr * (1 + math.cos(math.pi * t / 3)) / 2 for t in (0, 1, 2)], abs=1e-9)


def test_bad_setups_fail_clearly(corpus, tmp_path):
    config = small_config(total_steps=2, batch_size=12)
    config.data.prepared = str(corpus[1])
    with pytest.raises(JftError, match="global batch of 12 rows does not divide over 8 devices"):
        train_and_evaluate(config, tmp_path / "a")
    config = small_config(total_steps=2)
    config.data.prepared = str(corpus[1])
    config.model.max_position_embeddings = 16
    with pytest.raises(
        JftError, match="rows of 32 tokens are longer than the position table \\(max_position_embeddings=16\\)"
    ):
        train_and_evaluate(config, tmp_path / "b")
    config = small_config(total_steps=2)
    with pytest.raises(JftError, match="no data: set data.corpus"):
        train_and_evaluate(config, tmp_path / "c")
    config.data.prepared = str(corpus[1])
    config.model.vocab_size = 50
    with pytest.raises(JftError, match="the vocabulary has 200 tokens, more than the model's vocab_size 50"):
        train_and_evaluate(config, tmp_path / "d")


def test_workdir_with_another_models_checkpoint(corpus, tmp_path):
    config = small_config(total_steps=2, log_every=1, checkpoint_every=2)
    config.data.prepared = str(corpus[1])
    train_and_evaluate(config, tmp_path)
    config.model.hidden_size, config.batch_size = 48, 8
    with pytest.raises(
        JftError,
        match="other settings \\(model.hidden_size: run 32, now 48; batch_size: run 16, now 8\\)",
    ):
        train_and_evaluate(config, tmp_path)


def test_a_pretraining_that_saved_no_step_starts_anew_on_the_rows_it_prepared(corpus, tmp_path, capsys):
    """A run stopped before its first checkpoint has nothing to resume: another batch size starts it
    anew on the rows it prepared in its workdir (not prepared again); a data setting the rows were not
    prepared with is refused before anything is written, with the ways out."""
    text, rows = corpus
    config = small_config(total_steps=2, log_every=1, checkpoint_every=2)
    config.data.corpus, config.data.vocab = str(text), str(rows / "tokenizer.json")
    train_and_evaluate(config, tmp_path)
    metadata = tmp_path / "data" / "metadata.json"
    prepared = metadata.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "checkpoints")
    config.batch_size = 8
    capsys.readouterr()
    assert train_and_evaluate(config, tmp_path)["step"] == 2
    assert "its run holds no saved step; starting it anew." in capsys.readouterr().out
    assert json.loads((tmp_path / "run.json").read_text())["config"]["batch_size"] == 8
    assert metadata.stat().st_mtime_ns == prepared
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [1, 2]  # the first attempt's lines dropped

    shutil.rmtree(tmp_path / "checkpoints")
    run = (tmp_path / "run.json").read_text()
    was = json.loads(metadata.read_text())["eval_fraction"]
    config.data.eval_fraction = 0.3
    capsys.readouterr()
    with pytest.raises(
        JftError,
        match=rf"prepared with other data settings \(data.eval_fraction: prepared {was}, config 0.3\)\. "
        rf"Set them back, delete {re.escape(str(tmp_path / 'data'))} to prepare the rows again, or use a new",
    ):
        train_and_evaluate(config, tmp_path)
    assert (tmp_path / "run.json").read_text() == run and metadata.stat().st_mtime_ns == prepared
    assert "starting it anew" not in capsys.readouterr().out  # said only of a run that starts


def test_prepared_data_in_a_workdir_must_match_the_config(corpus, tmp_path):
    text, rows = corpus
    config = small_config(total_steps=2, log_every=1, checkpoint_every=2)
    config.data.corpus, config.data.vocab = str(text), str(rows / "tokenizer.json")
    train_and_evaluate(config, tmp_path / "phase1")
    config.data.seq_len, config.model.max_position_embeddings = 48, 64
    with pytest.raises(
        JftError, match="holds a pretraining run with other settings \\(data.seq_len: run 32, now 48\\)"
    ):
        train_and_evaluate(config, tmp_path / "phase1")
    config.init_from, config.total_steps = str(tmp_path / "phase1"), 1  # a longer-sequence phase in a new workdir
    final = train_and_evaluate(config, tmp_path / "phase2")
    assert final["step"] == 1 and (tmp_path / "phase2" / "data" / "metadata.json").is_file()


def test_single_pass_loader_pads_instead_of_wrapping(corpus):
    rows = PretrainRows(corpus[1], "eval")
    loader = Loader(rows, global_batch=len(rows) + 3, seed=0, single_pass=True)
    batch = loader.batch(0)
    assert (batch["attention_mask"][len(rows) :] == 0).all() and (batch["nsp_labels"][len(rows) :] == -1).all()
    assert (batch["attention_mask"][: len(rows)].sum(1) > 0).all()


def _pretrain_command(workdir, corpus_file, vocab):
    """`jft pretrain` on a text file, as the README shows it, with a shared vocabulary (the
    tokenizers trainer breaks ties by hash order, so two trainings may differ in a few tokens)."""
    return pretrain_command(
        workdir,
        **{
            "data.corpus": corpus_file,
            "data.vocab": vocab,
            "total_steps": 150,
            "checkpoint_every": 10,
            "log_every": 10,
            "eval_every": 1000,
        },
    )


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(corpus, tmp_path):
    text, rows = corpus
    vocab = rows / "tokenizer.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    subprocess.run(_pretrain_command(tmp_path / "straight", text, vocab), env=env, check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    command = _pretrain_command(interrupted, text, vocab)
    code, output = start_and_signal(command, interrupted / "checkpoints", 20, signal.SIGTERM)
    assert code == 143 and "stopped by SIGTERM at step" in output and "run the same command to resume" in output
    code, _ = start_and_signal(command, interrupted / "checkpoints", 60, signal.SIGKILL)
    assert code == -signal.SIGKILL
    latest = max(int(p.name) for p in (interrupted / "checkpoints").iterdir() if p.name.isdigit())
    assert 60 <= latest < 150
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    straight, _ = final_state(tmp_path / "straight")
    state, meta = final_state(interrupted)
    assert meta["loader_position"] == 150 * 16
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: same device count, CPU

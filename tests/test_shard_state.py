"""parallel.shard_state: the training state split over 8 CPU devices (optimizer: Adam's moments,
ZeRO-1; all: parameters, moments and θ_ref, FSDP) steps as one device does, dropout included;
each device holds its share (XLA's own count of the program's arguments); a run's checkpoint
restores onto 1, 2 and 8 devices and another shard_state and goes on."""

import dataclasses
import functools
import os
import shutil
import subprocess

import jax
import numpy as np
import optax
import pytest

from conftest import TINY_MODEL, corpus_vocab, largest_difference, pretrain_command, write_corpus
from jft import cli
from jft import finetune as finetune_module
from jft import pretrain as pretrain_module
from jft.data.loader import Loader, PretrainRows
from jft.data.prepare import prepare
from jft.data.synthetic import write_topic_task
from jft.defaults import pretrain as pretrain_defaults
from jft.errors import JftError
from jft.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification, init_params
from jft.models.layers import global_view
from jft.train.checkpoint import Checkpoints
from jft.train.masking import MaskingConfig
from jft.train.optim import make_optimizer, weight_decay_mask
from jft.train.parallel import AXIS, Runner
from jft.train.steps import (
    FinetuneSetup,
    PretrainSetup,
    create_finetune_state,
    create_state,
    finetune_step,
    pretrain_step,
)

# the global view draws each row's dropout masks alike on any number of devices
DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_state")
    text = write_corpus(root / "corpus.txt", documents=80)
    prepare(str(text), corpus_vocab(text, root / "vocab"), root / "rows", seq_len=32, seed=0, progress=False)
    return root / "rows"


def _pretraining(rows_dir, runner: Runner, steps: int = 3):
    rows = PretrainRows(rows_dir)
    meta = rows.metadata
    model = BertForPreTraining(BertConfig(vocab_size=meta["vocab_size"], **{**TINY_MODEL, **DROPOUT}))
    tx, schedule = make_optimizer(pretrain_defaults().optim, 10)
    ids = meta["special_ids"]
    masking = MaskingConfig(ids["mask"], meta["vocab_size"], (ids["pad"], ids["cls"], ids["sep"]), max_predictions=5)
    step = runner.compile(functools.partial(pretrain_step, setup=PretrainSetup(model, tx, schedule, masking)))
    state = runner.put_state(create_state(init_params(model, jax.random.PRNGKey(0)), tx))
    rng, loader = runner.put_replicated(jax.random.PRNGKey(1)), Loader(rows, 16, seed=0)
    for index in range(steps):
        state, metrics = step(state, runner.put_batch(loader.batch(index)), rng)
    return state, runner.get(metrics)


def _finetuning(runner: Runner, steps: int = 3):
    """L2-SP toward the starting weights, with the joint masked-LM term (masks drawn by row)."""
    model = BertForSequenceClassification(BertConfig(vocab_size=120, **{**TINY_MODEL, **DROPOUT}), 3, mlm=True)
    params = init_params(model, jax.random.PRNGKey(0))
    masking = MaskingConfig(mask_id=4, vocab_size=120, special_ids=(0, 1, 2, 3), max_predictions=4)
    tx = optax.adam(1e-3, eps=1e-6)  # jft's optim.eps
    setup = FinetuneSetup(
        model, tx, optax.constant_schedule(1e-3), "classification", 0.01, weight_decay_mask(params), 0.5, masking
    )
    step = runner.compile(functools.partial(finetune_step, setup=setup))
    state = runner.put_state(create_finetune_state(params, tx, params))
    rng = runner.put_replicated(jax.random.PRNGKey(2))
    data = np.random.default_rng(0)
    for _ in range(steps):
        ids = data.integers(5, 120, (16, 12)).astype(np.int32)
        batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
        batch |= {"labels": data.integers(0, 3, 16).astype(np.int32), "weights": np.ones(16, np.float32)}
        state, metrics = step(state, runner.put_batch(batch), rng)
    return state, runner.get(metrics)


def _split(array) -> bool:
    """Whether a device array is split over the devices: each holds 1/8 of it."""
    return (
        AXIS in [name for name in array.sharding.spec if name]
        and array.addressable_shards[0].data.size * 8 == array.size
    )


@pytest.mark.parametrize("shard_state", ["optimizer", "all"])
def test_a_split_state_steps_as_one_device(rows, shard_state):
    runner = Runner("shard_map", shard_state=shard_state)
    assert runner.num_devices == 8
    for run in (functools.partial(_pretraining, rows), _finetuning):
        one, one_metrics = run(Runner("jit", shard_state=shard_state))
        split, split_metrics = run(runner)
        moments = [x for x in jax.tree.leaves(split.opt_state) if x.ndim == 2]
        assert moments and all(_split(x) for x in moments)
        kernels = [x for x in jax.tree.leaves(split.params) if x.ndim >= 2]
        assert all(_split(x) == (shard_state == "all") for x in kernels)
        if shard_state == "all" and getattr(split, "reference", None) is not None:
            assert all(_split(x) for x in jax.tree.leaves(split.reference) if x.ndim >= 2)
        assert largest_difference(runner.get(one.params), runner.get(split.params)) < 1e-6
        assert abs(float(one_metrics["loss"]) - float(split_metrics["loss"])) < 1e-5


def test_the_program_holds_a_device_share_of_the_split_state(rows):
    """XLA's count of the compiled step's arguments a device: the whole state replicated, the
    parameters and 1/8 of the moments with optimizer, 1/8 of everything with all."""
    from jft.perf.tpu import compile_step

    meta = PretrainRows(rows).metadata
    model = BertForPreTraining(BertConfig(vocab_size=meta["vocab_size"], **{**TINY_MODEL, "hidden_size": 64}))
    tx, schedule = make_optimizer(pretrain_defaults().optim, 10)
    ids = meta["special_ids"]
    masking = MaskingConfig(ids["mask"], meta["vocab_size"], (ids["pad"], ids["cls"], ids["sep"]), max_predictions=5)
    step = functools.partial(pretrain_step, setup=PretrainSetup(model, tx, schedule, masking))
    shapes = jax.eval_shape(lambda: create_state(init_params(model, jax.random.PRNGKey(0)), tx))
    batch = Loader(PretrainRows(rows), 16, seed=0).batch(0)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes.params))
    batch_bytes = sum(x.nbytes for x in batch.values()) / 8
    arguments = {}
    for shard_state in ("none", "optimizer", "all"):
        compiled = compile_step(Runner("shard_map", shard_state=shard_state), step, shapes, batch)
        arguments[shard_state] = compiled.arguments - batch_bytes - 8  # less the rows and the key
    assert arguments["none"] == pytest.approx(state_bytes, rel=0.01)
    assert arguments["optimizer"] == pytest.approx(params_bytes + (state_bytes - params_bytes) / 8, rel=0.05)
    assert arguments["all"] == pytest.approx(state_bytes / 8, rel=0.1)


def _steps_after(workdir, step, runner_env, settings, tmp_path):
    """The run in workdir, its checkpoints after `step` removed, resumed under other devices and
    settings (a new process); its final parameters."""
    copy = tmp_path / f"resumed-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(workdir, copy)
    for saved in (copy / "checkpoints").iterdir():
        if saved.name.isdigit() and int(saved.name) > step:
            shutil.rmtree(saved)
    command = pretrain_command(copy, **settings)
    done = subprocess.run(command, env={**os.environ, **runner_env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming at step {step} of" in done.stdout, done.stdout
    return _params(copy)


def _params(workdir, step=None):
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, _ = checkpoints.restore(step=step)
    checkpoints.close()
    return state["train"]


def test_a_split_run_restores_onto_other_devices_and_settings(rows, tmp_path):
    """`jft pretrain` with the state split over 8 devices, stopped after its step-4 checkpoint:
    resumed as it was it ends bit-exact; on 1 device and on 2 with optimizer it goes on from the
    same saved values to within float32 rounding of the run that was not stopped; replicated
    (shard_state none, which draws its masks another way) it goes on from them too."""
    settings = {"data.prepared": rows, "total_steps": 8, "checkpoint_every": 4, "log_every": 4, "eval_every": 8}
    settings |= {"async_checkpoints": False, "parallel.shard_state": "all"}
    assert cli.main(pretrain_command(tmp_path / "run", **settings)[3:]) == 0
    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints")
    assert "fingerprints" in checkpoints.restore()[1]  # saved as it lay, split: digested on the devices
    checkpoints.close()
    straight = _params(tmp_path / "run")
    resumed = tmp_path / "resumed"
    resumed.mkdir()

    def devices(n):
        return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}

    again = _steps_after(tmp_path / "run", 4, devices(8), settings, resumed)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    one = _steps_after(tmp_path / "run", 4, devices(1), settings, resumed)
    assert largest_difference(straight["params"], one["params"]) < 1e-6
    two = _steps_after(tmp_path / "run", 4, devices(2), {**settings, "parallel.shard_state": "optimizer"}, resumed)
    assert largest_difference(straight["params"], two["params"]) < 1e-6
    replicated = _steps_after(tmp_path / "run", 4, devices(8), {**settings, "parallel.shard_state": "none"}, resumed)
    assert 0 < largest_difference(straight["params"], replicated["params"]) < 1e-2


def test_a_split_run_makes_its_state_in_host_memory_not_on_one_device(rows, tmp_path, monkeypatch):
    """A state to be split may be more than one device holds (a v5e:2x2 trains a 3 B-parameter
    encoder split, RESULTS.md, whose weights and moments are 36 GB): `jft pretrain` and `jft
    finetune` make it on the host's CPU, not on the default device, and put_state then gives each
    device its share.
    Device 5 stands in for an accelerator as the default device; replicated, the state is made
    there, as before."""
    made = []

    def spying(create):
        def create_and_look(params, tx):
            state = create(params, tx)
            made.append({d for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array) for d in leaf.devices()})
            return state

        return create_and_look

    monkeypatch.setattr(pretrain_module, "create_state", spying(create_state))
    monkeypatch.setattr(finetune_module, "create_finetune_state", spying(create_finetune_state))
    host, accelerator = jax.local_devices(backend="cpu")[0], jax.devices()[5]
    write_topic_task(tmp_path / "train.csv", 16)
    steps = {"log_every": 2, "progress": False}
    pretraining = {"data.prepared": rows, "total_steps": 2, "eval_every": 2, "checkpoint_every": 2, **steps}
    finetuning = {"init_from": tmp_path / "split", "data.train": tmp_path / "train.csv", "data.seq_len": 32, **steps}
    finetuning |= {"batch_size": 8, "max_steps": 2}
    with jax.default_device(accelerator):
        for shard_state, run in (("all", "split"), ("none", "replicated")):
            split = {"parallel.shard_state": shard_state}
            assert cli.main(pretrain_command(tmp_path / run, **pretraining, **split)[3:]) == 0
            command = ["finetune", "--config", "tiny", "--workdir", str(tmp_path / f"task-{run}")]
            assert cli.main(command + [f"--config.{k}={v}" for k, v in {**finetuning, **split}.items()]) == 0
    # pretraining, then fine-tuning's restore target and its state with init_from's weights
    assert made == [{host}] * 3 + [{accelerator}] * 3


def test_a_split_state_needs_a_mesh():
    with pytest.raises(JftError, match="parallel.shard_state=all splits the state over a mesh .* pmap"):
        Runner("pmap", shard_state="all")
    with pytest.raises(JftError, match="'some' is not one of"):
        Runner("shard_map", shard_state="some")


def test_splash_attention_runs_each_device_s_rows_in_the_global_view(monkeypatch):
    """XLA cannot split a Mosaic kernel over the devices: in the global view splash attention runs
    in a shard_map over the rows (Pallas's interpreter here), and gives XLA's attention."""
    from conftest import make_batch
    from jft.models import layers
    from jft.models.bert import BertModel

    monkeypatch.setattr(layers, "SPLASH_INTERPRET", True)
    runner = Runner("shard_map", shard_state="all")
    config = BertConfig(vocab_size=120, **TINY_MODEL)
    params = init_params(BertModel(config), jax.random.PRNGKey(0))
    batch = make_batch(3, batch=8, seq=40, vocab=120)
    real = batch["attention_mask"].astype(bool)

    def hidden(impl, params, batch):
        model = BertModel(dataclasses.replace(config, attention_impl=impl))
        return model.apply({"params": params}, **batch)[0]

    expected = jax.jit(functools.partial(hidden, "xla"))(params, batch)
    split_params, split_batch = runner.put_state({"params": params})["params"], runner.put_batch(batch)
    with global_view(runner.mesh, AXIS, split_parameters=True):
        split = jax.jit(functools.partial(hidden, "splash"))(split_params, split_batch)
        program = str(jax.make_jaxpr(functools.partial(hidden, "splash"))(split_params, split_batch))
    assert "shard_map" in program  # the layer loop's kernel
    np.testing.assert_allclose(np.asarray(split)[real], np.asarray(expected)[real], atol=2e-5)

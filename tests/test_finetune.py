"""The fine-tuning stage: the L2 objective by hand, its pull, devices, the loop, eval/predict/export, errors."""

import collections
import dataclasses
import functools
import json
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
import scipy.stats
import sklearn.metrics
import torch
import transformers

from conftest import TINY_MODEL, largest_difference, set_keys, tiny_hf_bert, write_topic_task
from jft import cli
from jft.data.synthetic import sentence_lengths, write_vocab
from jft.errors import JftError
from jft.finetune import default_config, train_and_evaluate
from jft.models import hf
from jft.models.bert import BertConfig, BertForSequenceClassification, init_params
from jft.params import flatten, unflatten
from jft.tasks.predictor import FinetunedModel
from jft.train.masking import MaskingConfig, mask_batch
from jft.train.objectives import l2_penalty, weighted_cross_entropy
from jft.train.optim import weight_decay_mask
from jft.train.parallel import Runner
from jft.train.steps import FinetuneSetup, create_finetune_state, finetune_step, task_stats


def _batch(seed=0, rows=16, seq=12, vocab=120, classes=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (rows, seq)).astype(np.int32)
    mask = (np.arange(seq)[None] < rng.integers(4, seq + 1, rows)[:, None]).astype(np.int32)
    return {
        "input_ids": ids * mask,
        "token_type_ids": np.zeros_like(ids),
        "attention_mask": mask,
        "labels": rng.integers(0, classes, rows).astype(np.int32),
        "weights": np.ones(rows, np.float32),
    }


def _model(classes=3):
    return BertForSequenceClassification(BertConfig(vocab_size=120, **TINY_MODEL), num_labels=classes)


def test_l2_penalty_by_hand_for_both_references():
    params = {
        "dense": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0])},
        "LayerNorm": {"scale": jnp.array([2.0])},
    }
    mask = {"dense": {"kernel": True, "bias": False}, "LayerNorm": {"scale": False}}
    assert float(l2_penalty(params, None, mask)) == pytest.approx(1 + 4)
    reference = {"dense": {"kernel": jnp.array([[0.5, -1.0]])}}
    assert float(l2_penalty(params, reference, mask)) == pytest.approx(0.25 + 1)
    grad = jax.grad(lambda p: 0.1 * l2_penalty(p, reference, mask))(params)
    np.testing.assert_allclose(
        grad["dense"]["kernel"], 2 * 0.1 * (params["dense"]["kernel"] - reference["dense"]["kernel"])
    )
    assert float(grad["dense"]["bias"][0]) == 0.0 and float(grad["LayerNorm"]["scale"][0]) == 0.0


@pytest.mark.parametrize("reference_kind", ["zero", "init"])
def test_penalty_gradient_goes_through_the_optimizer_with_the_task_gradient(reference_kind):
    model, batch, lam = _model(), _batch(), 0.05
    params = init_params(model, jax.random.PRNGKey(0))
    reference = None
    if reference_kind == "init":
        reference = jax.tree.map(lambda x: x + 0.3, params)
    mask = weight_decay_mask(params)
    setup = FinetuneSetup(model, optax.sgd(1.0), optax.constant_schedule(1.0), "classification", lam, mask)
    state = create_finetune_state(params, setup.tx, reference)
    new_state, metrics = jax.jit(functools.partial(finetune_step, setup=setup, axis_name=None))(
        state, batch, jax.random.PRNGKey(1)
    )

    def task_loss(p):
        logits = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        logits = logits["logits"]
        stats = task_stats("classification", logits, batch)
        return stats["loss_sum"] / stats["count"]

    task_grad = flatten(jax.grad(task_loss)(params))
    ref = flatten(reference) if reference is not None else {}
    for path, value in flatten(params).items():
        penalty_grad = 2 * lam * (value - ref.get(path, 0.0)) if flatten(mask)[path] else 0.0
        expected = value - (task_grad[path] + penalty_grad)  # SGD with learning rate 1
        np.testing.assert_allclose(flatten(new_state.params)[path], expected, atol=2e-6, err_msg=path)
    expected_penalty = lam * float(l2_penalty(params, reference, mask))
    assert float(metrics["l2_penalty"]) == pytest.approx(expected_penalty, rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(metrics["task_loss"]) + expected_penalty, rel=1e-5)


@pytest.mark.parametrize("reference_kind", ["zero", "init"])
def test_penalty_alone_pulls_toward_its_reference(reference_kind):
    model, batch = _model(), {**_batch(), "weights": np.zeros(16, np.float32)}  # no task signal
    params = init_params(model, jax.random.PRNGKey(0))
    start = jax.tree.map(lambda x: x + 0.1, params)
    reference = params if reference_kind == "init" else None
    mask = weight_decay_mask(params)
    setup = FinetuneSetup(model, optax.adam(1e-2), optax.constant_schedule(1e-2), "classification", 1.0, mask)
    state = create_finetune_state(start, setup.tx, reference)
    step = jax.jit(functools.partial(finetune_step, setup=setup, axis_name=None))
    for _ in range(20):
        state, _ = step(state, batch, jax.random.PRNGKey(0))
    kernel = ("bert", "encoder", "layer", "intermediate", "dense", "kernel")

    def pick(tree):
        for key in kernel:
            tree = tree[key]
        return np.asarray(tree)

    target = pick(params) if reference_kind == "init" else 0.0
    assert np.linalg.norm(pick(state.params) - target) < 0.6 * np.linalg.norm(pick(start) - target)
    bias = state.params["bert"]["pooler"]["dense"]["bias"]
    np.testing.assert_array_equal(bias, start["bert"]["pooler"]["dense"]["bias"])  # biases are not penalised


def _masking():
    return MaskingConfig(mask_id=4, vocab_size=120, special_ids=(0, 1, 2, 3), max_predictions=4)


def test_joint_objective_adds_mu_times_the_masked_lm_loss_of_the_batch():
    model, batch, mu = (
        BertForSequenceClassification(BertConfig(vocab_size=120, **TINY_MODEL), 3, mlm=True),
        _batch(),
        0.5,
    )
    params = init_params(model, jax.random.PRNGKey(0))
    mask = weight_decay_mask(params)
    setup = FinetuneSetup(
        model, optax.sgd(1.0), optax.constant_schedule(1.0), "classification", 0.0, mask, mu, _masking()
    )
    rng = jax.random.PRNGKey(1)
    new_state, metrics = jax.jit(functools.partial(finetune_step, setup=setup, axis_name=None))(
        create_finetune_state(params, setup.tx), batch, rng
    )

    # By hand: the task loss on the clean text, the MLM loss on a masked copy (key: the step's first
    # split; the step draws its bits by classic threefry, steps.classic_threefry).
    ids, attention, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    with jax.threefry_partitionable(False):
        mask_key = jax.random.split(jax.random.fold_in(rng, 0), 3)[0]
        masked = mask_batch(_masking(), mask_key, ids, attention, np.ones_like(ids, bool), np.arange(len(ids)))
    assert 0 < float(masked["masked_weights"].sum()) < ids.size

    def objective(p):
        task = task_stats("classification", model.apply({"params": p}, ids, attention, types)["logits"], batch)
        mlm_logits = model.apply(
            {"params": p}, masked["input_ids"], attention, types, masked_positions=masked["masked_positions"]
        )["mlm_logits"]
        mlm = weighted_cross_entropy(mlm_logits, masked["masked_labels"], masked["masked_weights"])
        return task["loss_sum"] / task["count"] + mu * mlm["loss_sum"] / mlm["count"], mlm

    (loss, mlm), grads = jax.value_and_grad(objective, has_aux=True)(params)
    assert set(flatten(grads)) == set(flatten(new_state.params)) and "cls" in params
    for path, value in flatten(params).items():  # SGD with learning rate 1
        np.testing.assert_allclose(flatten(new_state.params)[path], value - flatten(grads)[path], atol=2e-6)
    assert float(metrics["mlm_loss"]) == pytest.approx(float(mlm["loss_sum"] / mlm["count"]), rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)


def test_eight_devices_and_accumulation_give_the_one_device_update_dropout_included():
    """With the joint objective on, so the masks are checked too, and dropout (hidden and attention):
    neither may depend on the devices or the micro-batches a row falls in."""
    mlm_weight = 0.5
    dropout = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    model = BertForSequenceClassification(BertConfig(vocab_size=120, **{**TINY_MODEL, **dropout}), 3, mlm=True)
    batch = _batch(rows=16)
    params = init_params(model, jax.random.PRNGKey(0))
    batch["weights"][3] = 0.0  # a padding row: counts are global, not per device
    setup = FinetuneSetup(
        model,
        optax.adam(1e-3),
        optax.constant_schedule(1e-3),
        "classification",
        0.01,
        weight_decay_mask(params),
        mlm_weight,
        _masking(),
    )
    results = {}
    for backend, accum_steps in (("jit", 1), ("shard_map", 1), ("pmap", 1), ("jit", 4)):
        runner = Runner(backend)
        own = dataclasses.replace(setup, accum_steps=accum_steps)
        step = runner.compile(functools.partial(finetune_step, setup=own))
        state = runner.put_replicated(create_finetune_state(params, setup.tx, params))
        state, _ = step(state, runner.put_batch(batch), runner.put_replicated(jax.random.PRNGKey(0)))
        results[backend if accum_steps == 1 else "accumulated"] = runner.get(state.params)
    without = dataclasses.replace(setup, model=model.clone(config=BertConfig(vocab_size=120, **TINY_MODEL)))
    state = create_finetune_state(params, setup.tx, params)
    state, _ = jax.jit(functools.partial(finetune_step, setup=without, axis_name=None))(
        state, batch, jax.random.PRNGKey(0)
    )
    assert largest_difference(results["jit"], state.params) > 1e-4  # dropout did drop
    for backend in ("shard_map", "pmap", "accumulated"):  # Adam's first step is about ±lr·sign(g) = 1e-3
        assert largest_difference(results["jit"], results[backend]) < 5e-6, backend


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    """A small random BERT in Hugging Face format with a vocabulary trained on the test corpus."""
    return tiny_hf_bert(tmp_path_factory.mktemp("hfbert"))


def _config(train, eval_file=None, **changes):
    config = default_config()
    config.data.train, config.data.eval = str(train), str(eval_file or "")
    config.batch_size, config.epochs, config.log_every, config.progress = 8, 2, 2, False
    config.optim.lr, config.data.seq_len = 1e-3, 32
    set_keys(config, changes)
    return config


def test_finetune_eval_predict_export_from_a_hugging_face_directory(tmp_path, tiny_hf_dir, capsys):
    train = write_topic_task(tmp_path / "train.csv", 48, seed=0)
    dev = write_topic_task(tmp_path / "dev.tsv", 24, seed=1, delimiter="\t")
    final = train_and_evaluate(_config(train, dev, init_from=str(tiny_hf_dir)), tmp_path / "run")
    assert "init from" in capsys.readouterr().out
    assert final["step"] == 2 * 6 and 0.0 <= final["eval_accuracy"] <= 1.0 and "eval_mcc" in final
    task = json.loads((tmp_path / "run" / "run.json").read_text())["task"]
    assert task["labels"] == ["city", "farm", "sea", "space"]

    assert cli.main(["eval", "--workdir", str(tmp_path / "run"), "--data", str(dev), "--json"]) == 0
    best = FinetunedModel(tmp_path / "run").meta  # the best evaluation's score, kept with its weights
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] == pytest.approx(best["value"])
    assert best["value"] >= final["eval_accuracy"] and best["metric"] == "accuracy"
    assert (
        cli.main(
            [
                "predict",
                "--workdir",
                str(tmp_path / "run"),
                "--input",
                str(dev),
                "--output",
                str(tmp_path / "pred.jsonl"),
            ]
        )
        == 0
    )
    predictions = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(predictions) == 24 and set(predictions[0]["probabilities"]) == set(task["labels"])
    assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    assert cli.main(["export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    exported = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert exported.config.id2label[2] == "sea"
    model = FinetunedModel(tmp_path / "run")
    batch = {
        k: torch.tensor(v, dtype=torch.long)
        for k, v in {
            "input_ids": [[2, 50, 60, 70, 3]],
            "attention_mask": [[1] * 5],
            "token_type_ids": [[0] * 5],
        }.items()
    }
    with torch.no_grad():
        torch_logits = exported(**batch).logits.numpy()
    jft_logits = BertForSequenceClassification(model.model_config, 4).apply(
        {"params": model.params}, *(np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    )["logits"]
    np.testing.assert_allclose(jft_logits, torch_logits, atol=1e-5)


def _first_penalty(workdir) -> float:
    return next(r["l2_penalty"] for r in map(json.loads, (workdir / "metrics.jsonl").open()) if r["split"] == "train")


def test_l2_reference_is_l2_sp_from_a_pretrained_model_and_zero_from_scratch(tmp_path, tiny_hf_dir, capsys):
    """l2.reference=auto (the default): θ_ref is the weights a run starts from when it has
    init_from, 0 from scratch; an explicit choice wins, and a resumed run keeps its own."""
    train = write_topic_task(tmp_path / "train.csv", 16, seed=0)
    common = ["--config", "finetune/tiny", f"--config.data.train={train}", "--config.data.seq_len=32"]
    common += ["--config.log_every=1", "--config.epochs=1", "--config.progress=false", "--config.l2.weight=0.01"]

    def finetune(name, *flags):
        assert cli.main(["finetune", *common, "--workdir", str(tmp_path / name), *flags]) == 0
        run = json.loads((tmp_path / name / "run.json").read_text())
        return run["config"]["l2"]["reference"], capsys.readouterr().out

    reference, out = finetune("pretrained", f"--config.init_from={tiny_hf_dir}")
    assert reference == "init" and "l2: λ = 0.01, pulling toward the weights it starts from (L2-SP)" in out
    theta_ref = flatten({"bert": hf.load(tiny_hf_dir)[1]["bert"]})
    saved = safetensors.numpy.load_file(tmp_path / "pretrained" / "reference.safetensors")
    assert set(saved) == set(theta_ref)  # the encoder; the new head is left out
    for path, value in saved.items():
        np.testing.assert_array_equal(value, theta_ref[path])
    pull = flatten(weight_decay_mask(unflatten(saved)))
    encoder = 0.01 * sum(float(np.sum(value.astype(np.float64) ** 2)) for path, value in saved.items() if pull[path])

    reference, out = finetune("scratch", f"--config.data.vocab={tiny_hf_dir / 'vocab.txt'}")
    assert reference == "zero" and "pulling toward 0 (l2.reference=zero)" in out
    assert not (tmp_path / "scratch" / "reference.safetensors").exists() and _first_penalty(tmp_path / "scratch") > 0

    explicit = (f"--config.init_from={tiny_hf_dir}", "--config.l2.reference=zero")
    reference, _ = finetune("explicit", *explicit)
    assert reference == "zero"
    # The same start (seed): pulled toward 0, the first penalty has the encoder's λ‖θ‖² more; toward
    # θ_ref the encoder adds nothing (it starts there), only the new head (L2-SP pulls it toward 0).
    first = {name: _first_penalty(tmp_path / name) for name in ("pretrained", "explicit")}
    assert first["explicit"] - first["pretrained"] == pytest.approx(encoder, rel=1e-4)
    # resumed without l2.reference (as a run made when zero was the default): it keeps zero
    reference, out = finetune("explicit", f"--config.init_from={tiny_hf_dir}", "--config.epochs=2")
    assert reference == "zero" and "resuming at step 1 of 2" in out and "(l2.reference=zero)" in out
    # resumed without init_from: it pulls toward the θ_ref it saved, and says so
    reference, out = finetune("pretrained", "--config.init_from=", "--config.epochs=2")
    assert reference == "init" and "resuming at step 1 of 2" in out
    assert "l2: λ = 0.01, pulling toward the weights it starts from (L2-SP)" in out


PACKED = {"data.layout": "packed"}


def test_regression_and_token_classification(tmp_path, tiny_hf_dir):
    rng = np.random.default_rng(0)
    rows = [
        {"a": f"the ship {w}", "b": f"the wave {w}", "score": float(rng.uniform(0, 5))}
        for w in ["sees", "finds", "likes", "paints"] * 4
    ]
    (tmp_path / "sts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Both runs pack their short examples several a row (per-example pooling, per-token labels).
    config = _config(
        tmp_path / "sts.jsonl", tmp_path / "sts.jsonl", init_from=str(tiny_hf_dir), task="regression", **PACKED
    )
    config.data.text_column, config.data.text_pair_column, config.data.label_column = "a", "b", "score"
    final = train_and_evaluate(config, tmp_path / "sts")
    assert {"eval_pearson", "eval_spearman", "eval_mse"} <= set(final)
    # eval's figures are scipy's and scikit-learn's of predict's scores against the labels
    model = FinetunedModel(tmp_path / "sts")
    scores = [row["score"] for row in model.predict(str(tmp_path / "sts.jsonl"))]
    labels = [row["score"] for row in rows]
    metrics = model.evaluate(str(tmp_path / "sts.jsonl"))
    assert metrics["pearson"] == pytest.approx(scipy.stats.pearsonr(scores, labels)[0], abs=1e-5)
    assert metrics["spearman"] == pytest.approx(scipy.stats.spearmanr(scores, labels)[0], abs=1e-5)
    assert metrics["mse"] == pytest.approx(sklearn.metrics.mean_squared_error(labels, scores), rel=1e-5)

    tagged = [
        {
            "tokens": ["the", "harbor", "sailor", "sees", "the", "moon"],
            "tags": ["O", "B-LOC", "B-PER", "O", "O", "B-LOC"],
        }
    ] * 16
    (tmp_path / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged))
    config = _config(
        tmp_path / "ner.jsonl",
        tmp_path / "ner.jsonl",
        init_from=str(tiny_hf_dir),
        task="token_classification",
        epochs=12,
        **{"optim.lr": 3e-3},
        **PACKED,
    )
    config.data.text_column, config.data.label_column = "tokens", "tags"
    config.joint_mlm.weight = 0.3  # and the joint objective: + μ·(masked-LM loss on the task's text)
    final = train_and_evaluate(config, tmp_path / "ner")
    assert final["eval_token_accuracy"] > 0.6 and "eval_entity_f1" in final
    assert 0 < final["train_mlm_loss"] < 10 and final["train_loss"] > final["train_task_loss"]
    model = FinetunedModel(tmp_path / "ner")
    assert "cls" not in model.params  # the MLM head served training only
    predicted = model.predict(str(tmp_path / "ner.jsonl"))
    assert len(predicted[0]["tags"]) == 6  # one tag a word, whatever the word-pieces


def test_bad_input_is_reported_and_nothing_is_written(tmp_path, tiny_hf_dir):
    train = write_topic_task(tmp_path / "train.csv", 16)
    (tmp_path / "odd.csv").write_text("text,label\nthe ship sails,ocean\n")
    (tmp_path / "empty.csv").write_text("text,label\n")
    (tmp_path / "nocol.csv").write_text("sentence,label\nthe ship,sea\n")
    cases = [
        (_config(train, tmp_path / "odd.csv", init_from=str(tiny_hf_dir)), "label 'ocean' is not in the task's label"),
        (_config(tmp_path / "empty.csv", init_from=str(tiny_hf_dir)), "holds no records"),
        (_config(tmp_path / "nocol.csv", init_from=str(tiny_hf_dir)), "has no column 'text'"),
        (
            _config(train, init_from=str(tiny_hf_dir), **{"model.hidden_size": 48}),
            "contradicts the architecture of init_from .*: model.hidden_size=48 \\(it has 32\\).*give init_from's "
            "values \\(--config.model.hidden_size=32\\) or remove",
        ),
        (_config(train, init_from=str(tmp_path / "nowhere")), "init_from .*nowhere does not exist"),
        (_config(train), "no vocabulary"),
        (_config(train, init_from=str(tiny_hf_dir), **{"data.layout": "packd"}), "data.layout 'packd' is not one of"),
        (
            _config(train, init_from=str(tiny_hf_dir), **{"joint_mlm.weight": 0.5, "joint_mlm.data": str(train)}),
            "is an image model's pretraining images; a text model's joint objective .* the task's own text",
        ),
    ]
    for index, (config, message) in enumerate(cases):
        with pytest.raises(JftError, match=message):  # a workdir two folders down: none of them is left
            train_and_evaluate(config, tmp_path / f"new{index}" / "deeper" / "run")
        assert not (tmp_path / f"new{index}").exists()


def _long_texts(path, examples: int, seed: int):
    """JSONL of texts with IMDb-like lengths (median about 200 words, tail past 512) and topic labels."""
    rng = np.random.default_rng(seed)
    lengths = sentence_lengths(rng, examples, 230, 700)
    words = ["ship", "cow", "street", "star", "the", "sees", "old"]
    with path.open("w") as f:
        for n in lengths:
            f.write(json.dumps({"text": " ".join(rng.choice(words, n)), "label": str(rng.integers(2))}) + "\n")
    return path


def test_an_epoch_at_seq_512_compiles_a_bounded_number_of_programs(tmp_path):
    """Bucketed batches take at most data.buckets widths: a 25-step epoch of long, varied texts
    compiles at most 4 training-step and 4 evaluation programs (one width per multiple of 16
    compiled 22 and more)."""
    train, dev = _long_texts(tmp_path / "train.jsonl", 400, 0), _long_texts(tmp_path / "dev.jsonl", 160, 1)
    config = _config(train, dev, epochs=1, batch_size=16, eval_batch_size=16, **{"data.seq_len": 512})
    config.data.vocab = str(write_vocab(tmp_path / "vocab.txt"))
    config.model.preset = "tiny"
    config.model.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    compiled = []

    class Programs(logging.Handler):
        def emit(self, record):
            match = re.match(r"Compiling (\S+) with global shapes", record.getMessage())
            if match:
                compiled.append(match.group(1))

    logger, handler = logging.getLogger("jax._src.interpreters.pxla"), Programs()
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            final = train_and_evaluate(config, tmp_path / "run")
    finally:
        logger.removeHandler(handler)
    assert final["step"] == 25
    counts = collections.Counter(compiled)
    train_steps, predictions = counts["jit(finetune_step)"], counts["jit(predict_step)"]
    assert 2 <= train_steps <= 4 and 2 <= predictions <= 4, counts


def test_label_smoothing_and_mixed_targets_are_torchs_cross_entropy():
    """Label smoothing as PyTorch's cross_entropy(label_smoothing=ε) computes it, and mixup's rows
    as (1 − s) · the loss on their labels + s · on their partners'; weights leave rows out."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels, other = np.array([0, 4, 2, 2, 1, 3]), np.array([1, 1, 0, 4, 1, 2])
    weights, share = np.array([1, 1, 1, 1, 1, 0.0]), np.array([0.3, 0, 0.5, 0.9, 0.2, 0.4], np.float32)

    def torch_loss(targets, epsilon):
        t = torch.nn.functional.cross_entropy(
            torch.from_numpy(logits), torch.from_numpy(targets), label_smoothing=epsilon, reduction="none"
        )
        return t.numpy()

    smoothed = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights), 0.1)
    np.testing.assert_allclose(float(smoothed["loss_sum"]), (torch_loss(labels, 0.1) * weights).sum(), rtol=1e-6)
    mixed = weighted_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights), 0.1, (jnp.asarray(other), jnp.asarray(share))
    )
    expected = (1 - share) * torch_loss(labels, 0.1) + share * torch_loss(other, 0.1)
    np.testing.assert_allclose(float(mixed["loss_sum"]), (expected * weights).sum(), rtol=1e-6)
    assert float(mixed["correct"]) == float(smoothed["correct"]) == ((logits.argmax(-1) == labels) * weights).sum()


def test_sgd_with_nesterov_momentum_and_weight_decay_is_torchs():
    """optim.name=sgd: torch.optim.SGD(momentum, nesterov, weight_decay) step for step."""
    from ml_collections import ConfigDict

    from jft.defaults import finetune as finetune_defaults
    from jft.train.optim import make_optimizer

    config = ConfigDict(finetune_defaults().optim.to_dict())
    config.update(name="sgd", lr=0.1, decay="constant", warmup_steps=0, weight_decay=0.01, max_grad_norm=0.0)
    tx, _ = make_optimizer(config, 10)
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 4)).astype(np.float32)
    params, state = {"dense": {"kernel": jnp.asarray(kernel)}}, None
    state = tx.init(params)
    theirs = torch.nn.Parameter(torch.from_numpy(kernel.copy()))
    sgd = torch.optim.SGD([theirs], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for _ in range(3):
        grad = rng.normal(size=(3, 4)).astype(np.float32)
        updates, state = tx.update({"dense": {"kernel": jnp.asarray(grad)}}, state, params)
        params = optax.apply_updates(params, updates)
        theirs.grad = torch.from_numpy(grad)
        sgd.step()
    np.testing.assert_allclose(np.asarray(params["dense"]["kernel"]), theirs.detach().numpy(), atol=1e-6)

"""`jft bench` on CPU: it runs the real steps and reports consistent figures (not speed)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jft import cli, defaults
from jft.config import apply_overrides
from jft.errors import JftError
from jft.models import Head, bert, config_of
from jft.models import get as get_family
from jft.models.bert import BertConfig, BertForPreTraining, BertForSequenceClassification, init_params
from jft.models.bert.modules import BertEncoder
from jft.perf import bench

sys.path.insert(0, str(REPO / "benchmarks"))
from ablations import every_row_in_the_last_layer  # noqa: E402

QUICK = [
    "--config.windows=2",
    "--config.window_steps=2",
    "--config.warmup_steps=1",
    "--config.seq_len=32",
    "--config.model.vocab_size=1000",
    "--config.finetune.batches=4",
]


def test_bench_command_times_both_steps_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--out", str(out), "--config.batch_size=16", "--config.backend=jit", *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "| pretrain |" in printed and "| finetune |" in printed
    report = json.loads(out.read_text())
    assert report["environment"]["device_count"] == 8 and report["config"]["batch_size"] == 16
    for result in report["results"]:
        step_seconds = result["step_ms"] / 1e3
        assert result["sequences_per_second"] == pytest.approx(16 / step_seconds)
        assert result["tokens_per_second"] == pytest.approx(16 * 32 / step_seconds)  # full rows: no padding
        assert result["model_tflops_per_second"] > 0 and result["compile_seconds"] > 0
        assert result["step_ms_spread"][0] <= result["step_ms"] <= result["step_ms_spread"][1]
        assert result["mfu"] is None  # no known peak for a CPU


def test_bench_out_refuses_a_file_it_did_not_write_before_measuring(tmp_path, capsys, monkeypatch):
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "results"}\n')
    measured = []
    report = {"environment": bench.environment(), "config": {}, "results": []}  # the measuring left out
    monkeypatch.setattr(bench, "run", lambda config: measured.append(config) or report)
    assert cli.main(["bench", "--out", str(notes), *QUICK]) == 2
    assert "is a file this command did not write" in capsys.readouterr().err
    assert notes.read_text() == '{"my": "results"}\n' and not measured  # refused before a step was timed
    assert cli.main(["bench", "--out", str(tmp_path), *QUICK]) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err and not measured
    # its own earlier report is replaced; another file only with --overwrite
    assert cli.main(["bench", "--out", str(notes), "--overwrite", *QUICK]) == 0
    assert bench.is_report(notes) and len(measured) == 1
    assert cli.main(["bench", "--out", str(notes), *QUICK]) == 0 and len(measured) == 2


def test_short_texts_bucketed_and_packed_count_real_tokens_and_fewer_flops():
    config = defaults.bench()
    quick = [o.removeprefix("--config.") for o in QUICK]
    apply_overrides(config, [*quick, "workloads=finetune", "backend=jit", "batch_size=8", "finetune.mean_length=8"])
    results = {}
    for layout in ("padded", "bucketed", "packed"):
        config.finetune.layout = layout
        results[layout] = bench.run(config)["results"][0]
    padded, bucketed, packed = (results[layout] for layout in ("padded", "bucketed", "packed"))
    # The same examples each way: tokens per example is the same, FLOPs per example are not.
    tokens_per_example = [r["tokens_per_second"] / r["sequences_per_second"] for r in (padded, bucketed, packed)]
    assert tokens_per_example == pytest.approx([tokens_per_example[0]] * 3) and tokens_per_example[0] < 16
    flops_per_example = [r["model_tflops_per_second"] / r["sequences_per_second"] for r in (padded, bucketed, packed)]
    assert flops_per_example[1] < 0.8 * flops_per_example[0]
    assert flops_per_example[2] < 0.5 * flops_per_example[0]
    assert "rows" in packed["shape"]


@pytest.mark.parametrize("workload", ["pretrain", "finetune"])
def test_flop_formula_agrees_with_xla_cost_analysis(workload):
    """The forward FLOPs of family FLOPs count (÷ 3) against XLA's own count of the compiled forward pass
    (unrolled layers: XLA counts a loop's body once, whatever its trip count); the last layer
    computes only the rows the heads read."""
    cfg = BertConfig(
        vocab_size=2000,
        scan_layers=False,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=128,
    )
    batch, seq, predictions = 4, 128, 20
    ids = jnp.ones((batch, seq), jnp.int32)
    if workload == "pretrain":
        model = BertForPreTraining(cfg)
        positions = jnp.zeros((batch, predictions), jnp.int32)
        forward = lambda p: model.apply({"params": p}, ids, masked_positions=positions)  # noqa: E731
        formula = bert.flops(cfg, batch, seq, predictions=predictions)
    else:
        model = BertForSequenceClassification(cfg, 2)
        forward = lambda p: model.apply({"params": p}, ids)  # noqa: E731
        formula = bert.flops(cfg, batch, seq, num_labels=2)
    params = init_params(model, jax.random.key(0))
    xla = jax.jit(forward).lower(params).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert formula / 3 == pytest.approx(xla["flops"], rel=0.1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("workloads=pretrian", "choose from"),
        ("seq_len=1024", "longer than the position table"),
        ("batch_size=12", "does not divide over 8 devices"),
        ("finetune.layout=packd", "is not one of"),
    ],
)
def test_bench_bad_input(override, message):
    config = defaults.bench()
    apply_overrides(config, [override])
    with pytest.raises(JftError, match=message):
        bench.run(config)


@pytest.mark.parametrize("workload", ["pretrain", "finetune"])
@pytest.mark.parametrize("name", ["roberta", "modernbert", "gpt2"])
def test_the_text_families_flop_formulas_agree_with_xla(name, workload):
    """RoBERTa's (BERT's without the next-sentence head), ModernBERT's (GeGLU, windowed layers) and
    GPT-2's (every token predicts the next: the whole row's logits) forward FLOPs against XLA's
    count, unrolled; ModernBERT's window covers the row here, as XLA's attention computes it all,
    and a window shorter than the row counts fewer."""
    family = get_family(name)
    sizes = dict(vocab_size=2000, hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256)
    extra = {
        "roberta": dict(max_position_embeddings=130),
        "modernbert": dict(local_attention=256),
        "gpt2": dict(vocab_size=2000, n_embd=128, n_layer=3, n_head=4, n_positions=128),
    }[name]
    cfg = family.config({**(sizes if name != "gpt2" else {}), **extra, "scan_layers": False})
    batch, seq = 4, 128
    predictions = seq if name == "gpt2" else 20
    ids = jnp.ones((batch, seq), jnp.int32)
    if workload == "pretrain":
        model = family.module(cfg, Head("pretraining"))
        positions = {} if name == "gpt2" else {"masked_positions": jnp.zeros((batch, predictions), jnp.int32)}
        forward = lambda p: model.apply({"params": p}, ids, **positions)  # noqa: E731
        formula = family.flops(cfg, batch, seq, predictions=predictions)
    else:
        model = family.module(cfg, Head("classification", 2))
        forward = lambda p: model.apply({"params": p}, ids)  # noqa: E731
        formula = family.flops(cfg, batch, seq, num_labels=2)
    params = family.init_params(model, jax.random.key(0))
    xla = jax.jit(forward).lower(params).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert formula / 3 == pytest.approx(xla["flops"], rel=0.1)
    if name == "modernbert":
        windowed = family.config({**sizes, "local_attention": 16})
        assert family.flops(windowed, batch, seq, num_labels=2) < family.flops(cfg, batch, seq, num_labels=2)


@pytest.mark.parametrize("size", ["resnet_tiny", "vgg_tiny"])
def test_image_models_bench_images_a_second_and_their_flops(size, tmp_path, capsys):
    """An image model's workloads: its classifier's step on random images at its side (1,000
    classes to pretrain, finetune.num_labels to fine-tune), images counted as the seq/s column."""
    out = tmp_path / "bench.json"
    args = ["bench", "--config", f"bench:{size}", "--out", str(out), "--config.batch_size=16", "--config.backend=jit"]
    args += ["--config.windows=2", "--config.window_steps=2", "--config.warmup_steps=1", "--config.finetune.batches=2"]
    assert cli.main([*args, "--config.model.dtype=float32"]) == 0
    assert "32×32 images, 1000 classes" in capsys.readouterr().out
    family, cfg = config_of(json.loads(out.read_text())["config"]["model"])
    for result in json.loads(out.read_text())["results"]:
        labels = 1000 if result["workload"] == "pretrain" else 2
        step_seconds = result["step_ms"] / 1e3
        assert result["sequences_per_second"] == pytest.approx(16 / step_seconds) and result["tokens_per_second"] == 0
        flops = family.flops(cfg, 16, 32, num_labels=labels)
        assert result["model_tflops_per_second"] == pytest.approx(flops / step_seconds / 1e12, rel=1e-6)


def test_the_last_layer_at_the_heads_rows_gives_what_every_row_gives():
    """The encoder's last layer computes only the rows the heads read; benchmarks/ablations.py's
    every_row_in_the_last_layer (what peers.py and gpu_session.sh time against it) computes every
    row and gathers them: the same logits, and the split is back in place after it."""
    split = BertEncoder.__call__
    sizes = {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 128}
    config = BertConfig(vocab_size=200, **sizes)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 200, (4, 32)), jnp.int32)
    masked = {"masked_positions": jnp.tile(jnp.arange(1, 6)[None], (4, 1))}
    for model, inputs in ((BertForSequenceClassification(config, 3), {}), (BertForPreTraining(config), masked)):
        params = init_params(model, jax.random.key(0))
        heads_rows = model.apply({"params": params}, ids, **inputs)
        with every_row_in_the_last_layer():
            every_row = model.apply({"params": params}, ids, **inputs)
        for name, logits in heads_rows.items():
            np.testing.assert_allclose(logits, every_row[name], atol=1e-6)
    assert BertEncoder.__call__ is split

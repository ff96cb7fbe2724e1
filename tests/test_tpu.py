"""`jft bench --topology`: compiling the training steps for a TPU on this CPU machine (jft.tpu)."""

import json
import math
import subprocess
import sys

import jax
import pytest

from jft import cli, defaults
from jft.defaults import model_fields
from jft.errors import JftError
from jft.models import config_of
from jft.models import get as get_family
from jft.perf import bench, tpu
from jft.train.parallel import Runner


@pytest.mark.parametrize(
    "text, generation, grid",
    [
        ("v5e:2x2", "v5e", (2, 2)),
        ("v6e:4x4", "v6e", (4, 4)),
        ("V4:2x2x1", "v4", (2, 2, 1)),
        ("v5p:2x2x2", "v5p", (2, 2, 2)),
    ],
)
def test_topology_names(text, generation, grid):
    topology = tpu.parse_topology(text)
    assert (topology.generation, topology.grid, topology.chips) == (generation, grid, math.prod(grid))


@pytest.mark.parametrize(
    "text, message",
    [
        ("v5e", "a 2-D grid of chips, v5e:NxN"),
        ("v5e:2x2x1", "a 2-D grid of chips"),
        ("v4:2x2", "a 3-D grid of chips, v4:NxNxN"),
        ("v5e:2x0", "a 2-D grid of chips"),
        ("v5e:two", "a 2-D grid of chips"),
        ("v3:2x2", "the generation is one of v4, v5e, v5p, v6e"),
        ("h100", "the generation is one of"),
    ],
)
def test_bad_topology_names_say_what_a_topology_is(text, message):
    with pytest.raises(JftError, match=message):
        tpu.parse_topology(text)


SPLASH = ["--config.model.attention_impl=splash", "--config.model.attention_probs_dropout_prob=0"]


def test_the_target_gets_bfloat16_and_the_splash_kernel_for_cudnn_and_keeps_what_was_chosen():
    model, changes = tpu.target_model(model_fields("base", dtype="auto", attention_impl="cudnn"))
    assert (model.dtype, model.attention_impl) == ("bfloat16", "splash") and len(changes) == 2
    model, changes = tpu.target_model(model_fields("base", dtype="float32"))
    assert (model.dtype, model.attention_impl, changes) == ("float32", "xla", [])


@pytest.mark.parametrize(
    "fixed, per_row, bend, fails_from",
    [
        (1.0, 0.5, 0.0, None),
        (3.2, 0.07, 0.0, None),
        (2.0, 0.3, 0.002, None),
        (20.0, 1.0, 0.0, None),
        (1.0, 0.01, 0.0, 100),
    ],
)
def test_the_largest_batch_search_finds_what_checking_every_batch_finds(fixed, per_row, bend, fails_from):
    """Against every batch checked: memory linear or a little superlinear, none fitting, and
    compiles that fail (inf) from some batch on, as libtpu's do when temporaries exceed the HBM."""
    compiles = []

    def peak(batch):
        compiles.append(batch)
        if fails_from and batch >= fails_from:
            return math.inf
        return fixed + per_row * batch + bend * batch**2

    limit = 16.0
    fitting = [b for b in range(8, 4096, 8) if peak(b) <= limit]
    compiles.clear()
    assert tpu.largest_batch(peak, limit) == (max(fitting) if fitting else 0)
    # each batch compiled once, a handful in all; a secant's guess that fails costs a bisection
    assert len(compiles) == len(set(compiles)) <= (12 if fails_from else 6)


def test_long_rows_are_counted_one_by_one():
    """At 8,192 tokens a row a device holds a few rows: searched in steps of one from one, not of 8
    (where 5 rows that fit would read as none)."""
    peak = lambda batch: 2.0 + 2.5 * batch  # noqa: E731
    assert tpu.largest_batch(peak, 16.0) == 0
    assert tpu.largest_batch(peak, 16.0, multiple=1, first=1) == 5


def test_abstract_inputs_compile_the_program_the_real_arrays_run():
    """The TPU path compiles from shapes alone; on the CPU's 8 devices, that program's memory
    equals the one compiled from real state and batches (bench.time_steps)."""
    config = defaults.bench()
    config.batch_size, config.windows, config.warmup_steps = 16, 1, 1
    family, cfg = config_of(config.model)
    runner = Runner("shard_map")
    work = bench.workload("pretrain", config, family, cfg)
    from_shapes = tpu.compile_step(runner, work.step, jax.eval_shape(work.init_state), work.batches[0])
    real = runner.compile(work.step).lower(
        runner.put_replicated(work.init_state()),
        runner.put_batch(work.batches[0]),
        runner.put_replicated(jax.random.PRNGKey(0)),
    )
    memory = real.compile().memory_analysis()
    assert not from_shapes.error and from_shapes.arguments == memory.argument_size_in_bytes
    assert from_shapes.temporaries == memory.temp_size_in_bytes and from_shapes.aliased == memory.alias_size_in_bytes


def test_without_libtpu_one_line_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(tpu.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["bench", "--topology", "v5e:2x2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs libtpu" in err and "pip install 'jft[tpu]'" in err and len(err.splitlines()) == 1


def test_largest_batch_without_a_topology_is_refused(capsys):
    assert cli.main(["bench", "--largest-batch"]) == 2
    assert "give --topology too" in capsys.readouterr().err


@pytest.mark.parametrize("attention", [[], SPLASH], ids=["xla attention", "splash kernel"])
def test_a_small_model_compiles_for_a_v5e_topology(attention, tmp_path):
    """The real TPU compile (libtpu, no TPU): the fine-tuning step of a small BERT for v5e:2x2, in
    bfloat16 from dtype 'auto', its memory per device set against the chip's 16 GiB; with XLA's
    attention, and with the splash kernel (Pallas, compiled by libtpu's Mosaic)."""
    command = [
        sys.executable,
        "-m",
        "jft.cli",
        "bench",
        "--topology",
        "v5e:2x2",
        "--config.workloads=finetune",
        "--config.batch_size=32",
        "--config.seq_len=64",
        "--config.model.num_hidden_layers=1",
        *attention,
        "--out",
        str(tmp_path / "tpu.json"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "tpu.json").read_text())
    assert (report["topology"], report["chip"], report["devices"], report["hbm_gib_per_device"]) == (
        "v5e:2x2",
        "TPU v5e",
        4,
        16,
    )
    (row,) = report["results"]
    assert (row["workload"], row["dtype"], row["batch_per_device"], row["fits"]) == ("finetune", "bfloat16", 8, True)
    parts = row["arguments_gib"] + row["outputs_gib"] - row["aliased_gib"] + row["temporaries_gib"]
    assert 0 < row["arguments_gib"] < row["peak_gib"] == pytest.approx(parts) and row["peak_gib"] < 1
    # The state is replicated: a device holds the parameters and both Adam moments, float32.
    family, cfg = config_of(model_fields("tiny", vocab_size=30522, num_hidden_layers=1))
    state = jax.eval_shape(bench.finetune_workload(defaults.bench(), family, cfg).init_state)
    parameters = sum(x.size for x in jax.tree.leaves(state.params))
    assert row["arguments_gib"] * 2**30 == pytest.approx(3 * 4 * parameters, rel=0.05)
    assert row["tflop_per_device_step"] == pytest.approx(family.flops(cfg, 8, 64, num_labels=2) / 1e12)
    assert "v5e:2x2 (TPU v5e, 4 devices of 16 GiB HBM)" in done.stdout and "| finetune |" in done.stdout


def test_a_small_gpt2_compiles_for_a_v5e_topology_with_the_causal_splash_kernel(tmp_path):
    """GPT-2's next-word pretraining and its classifier, compiled for v5e:2x2 by libtpu: cuDNN's
    attention becomes the splash kernel with a causal mask; the FLOPs are GPT-2's formula."""
    command = [sys.executable, "-m", "jft.cli", "bench", "--topology", "v5e:2x2", "--config", "bench:gpt2_tiny"]
    command += ["--config.batch_size=8", "--config.seq_len=128", "--config.model.vocab_size=1000"]
    command += ["--config.model.n_layer=1", "--out", str(tmp_path / "tpu.json")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "attention_impl 'cudnn' is a GPU kernel: Pallas's splash kernel on a TPU" in done.stdout + done.stderr
    report = json.loads((tmp_path / "tpu.json").read_text())
    rows = {row["workload"]: row for row in report["results"]}
    assert set(rows) == {"pretrain", "finetune"} and all(row["fits"] for row in rows.values())
    family, cfg = config_of(model_fields("tiny", "gpt2", vocab_size=1000, n_layer=1))
    assert rows["pretrain"]["tflop_per_device_step"] == pytest.approx(family.flops(cfg, 2, 128, predictions=128) / 1e12)


def test_a_small_xlm_r_compiles_for_a_v5e_topology_as_masked_lm_alone(tmp_path):
    """RoBERTa's masked-LM pretraining (no next-sentence head) and its classifier, compiled for
    v5e:2x2 by libtpu with the splash kernel; the FLOPs are BERT's formula without the NSP head."""
    command = [sys.executable, "-m", "jft.cli", "bench", "--topology", "v5e:2x2", "--config", "bench:xlm_roberta_tiny"]
    command += ["--config.batch_size=8", "--config.seq_len=128", "--config.model.vocab_size=1000"]
    command += ["--config.model.num_hidden_layers=1", "--out", str(tmp_path / "tpu.json")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "tpu.json").read_text())
    rows = {row["workload"]: row for row in report["results"]}
    assert set(rows) == {"pretrain", "finetune"} and all(row["fits"] for row in rows.values())
    family, cfg = config_of(model_fields("tiny", "roberta", vocab_size=1000, num_hidden_layers=1))
    predictions = defaults.bench().max_predictions
    flops = family.flops(cfg, 2, 128, predictions=predictions)
    assert rows["pretrain"]["tflop_per_device_step"] == pytest.approx(flops / 1e12)
    assert flops < get_family("bert").flops(cfg, 2, 128, predictions=predictions)  # no pooler, no NSP head


def test_a_small_vgg_with_batch_norm_compiles_for_a_v5e_topology(tmp_path):
    """An image model's supervised pretraining step (augmentation, BatchNorm summed over the
    devices, 1,000 classes) compiled for v5e:2x2 by libtpu; no remat choice to search."""
    command = [sys.executable, "-m", "jft.cli", "bench", "--topology", "v5e:2x2", "--config", "bench:vgg_tiny"]
    command += ["--config.batch_size=16", "--config.workloads=pretrain", "--out", str(tmp_path / "tpu.json")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((tmp_path / "tpu.json").read_text())["results"]
    assert (row["shape"], row["batch_per_device"], row["remat"], row["fits"]) == (
        "32×32 images, 1000 classes",
        4,
        "none",
        True,
    )
    family, cfg = config_of(model_fields("tiny", "vgg"))
    assert row["tflop_per_device_step"] == pytest.approx(family.flops(cfg, 4, 32, num_labels=1000) / 1e12)


def test_a_small_modernbert_compiles_for_a_v5e_topology_with_the_sliding_window_splash_kernel(tmp_path):
    """ModernBERT's masked-LM pretraining and its classifier compiled for v5e:2x2 by libtpu: a
    global layer and a local one (a window of 64 of 256 tokens), cuDNN's attention becoming the
    splash kernel with a band mask under the layer loop's cond; the FLOPs are ModernBERT's formula."""
    command = [sys.executable, "-m", "jft.cli", "bench", "--topology", "v5e:2x2", "--config", "bench:modernbert_tiny"]
    command += ["--config.batch_size=8", "--config.seq_len=256", "--config.max_predictions=77"]
    command += ["--config.model.vocab_size=1000", "--config.model.num_hidden_layers=2"]
    command += ["--config.model.local_attention=64", "--out", str(tmp_path / "tpu.json")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "attention_impl 'cudnn' is a GPU kernel: Pallas's splash kernel on a TPU" in done.stdout + done.stderr
    rows = {row["workload"]: row for row in json.loads((tmp_path / "tpu.json").read_text())["results"]}
    assert set(rows) == {"pretrain", "finetune"} and all(row["fits"] for row in rows.values())
    family, cfg = config_of(
        model_fields("tiny", "modernbert", vocab_size=1000, num_hidden_layers=2, local_attention=64)
    )
    assert not cfg.is_global(1)  # the second layer attends in its window
    assert rows["pretrain"]["tflop_per_device_step"] == pytest.approx(family.flops(cfg, 2, 256, predictions=77) / 1e12)


def test_a_small_resnet_compiles_for_a_v5e_topology(tmp_path):
    """A ResNet's supervised pretraining step (augmentation, BatchNorm summed over the devices,
    1,000 classes) compiled for v5e:2x2 by libtpu in libtpu's larger compiler stack."""
    command = [sys.executable, "-m", "jft.cli", "bench", "--topology", "v5e:2x2", "--config", "bench:resnet_tiny"]
    command += ["--config.batch_size=16", "--config.workloads=pretrain", "--out", str(tmp_path / "tpu.json")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((tmp_path / "tpu.json").read_text())["results"]
    family, cfg = config_of(model_fields("tiny", "resnet"))
    assert (row["batch_per_device"], row["remat"], row["fits"]) == (4, "none", True)
    assert row["shape"] == f"{cfg.image_size}×{cfg.image_size} images, 1000 classes"
    assert row["tflop_per_device_step"] == pytest.approx(family.flops(cfg, 4, cfg.image_size, num_labels=1000) / 1e12)

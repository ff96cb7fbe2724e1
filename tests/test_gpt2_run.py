"""GPT-2 through everything jft has: causal rows, next-word pretraining (devices, accumulation,
learning, resume), generation, export to transformers, L2-SP fine-tuning with the joint next-word
term, eval and predict, and the errors of a GPT-2 given where a BERT is needed and the reverse."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from conftest import (
    final_state,
    largest_difference,
    pretrain_steps,
    set_keys,
    start_and_signal,
    tiny_hf_bert,
    write_corpus,
    write_topic_task,
)
from jft.data.corpus import read_documents
from jft.data.loader import PretrainRows
from jft.data.prepare import prepare
from jft.data.tokenizer import END_OF_TEXT, load_tokenizer, train_vocab
from jft.defaults import pretrain as pretrain_defaults
from jft.models import Head
from jft.models import get as get_family
from jft.pretrain import train_and_evaluate
from jft.train.optim import make_optimizer
from jft.train.parallel import Runner
from jft.train.steps import PretrainSetup

# configs/pretrain/gpt2_tiny made small enough for seconds of CPU training, without dropout
# (so that device counts compare exactly).
SMALL_GPT2 = {
    "model.n_embd": 32,
    "model.n_layer": 2,
    "model.n_head": 2,
    "model.n_positions": 64,
    "model.resid_pdrop": 0.0,
    "model.embd_pdrop": 0.0,
    "model.attn_pdrop": 0.0,
    "data.seq_len": 32,
    "batch_size": 16,
    "eval_batches": 2,
    "progress": False,
}
PROMPTS = ["the cat", "a river runs", "music and", "the old engine", "ships"]


def jft_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jft.cli", *map(str, args)]


def run(command, cwd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A corpus of the test generator, a byte-level vocabulary trained on it and its causal rows."""
    root = tmp_path_factory.mktemp("gpt2")
    text = write_corpus(root / "corpus.txt", documents=120)
    lines = lambda: (line for document in read_documents(str(text)) for line in document)  # noqa: E731
    train_vocab(lines, root / "vocab", vocab_size=300, kind="bytelevel")
    prepare(str(text), root / "vocab", root / "rows", seq_len=32, mode="causal", eval_fraction=0.1, progress=False)
    return root


@pytest.fixture(scope="module")
def pretrained(corpus):
    """A tiny GPT-2 pretrained in-process for 200 steps on the causal rows; its last metrics."""
    from jft.configs.pretrain.gpt2_tiny import get_config

    config = get_config()
    set_keys(config, {**SMALL_GPT2, "data.prepared": str(corpus / "rows"), "total_steps": 200})
    set_keys(config, {"optim.lr": 3e-3, "optim.warmup_steps": 20, "eval_every": 200, "checkpoint_every": 200})
    metrics = train_and_evaluate(config, corpus / "run")
    return corpus / "run", metrics


def _documents(directory, split):
    """The documents of a split of causal rows, decoded, and whether each starts where word_start says."""
    tokenizer = load_tokenizer(directory / "tokenizer.json")
    rows = PretrainRows(directory, split)
    data = rows.rows(np.arange(len(rows)))
    lengths = data["attention_mask"].sum(1)
    assert (lengths[:-1] == 32).all()  # no padding but in the last row of the window
    stream = np.concatenate([ids[:n] for ids, n in zip(data["input_ids"], lengths)])
    starts = np.concatenate([s[:n] for s, n in zip(data["word_start"], lengths)])
    after_end = np.concatenate([[True], stream[:-1] == tokenizer.token_to_id(END_OF_TEXT)])
    assert starts[after_end].all()  # a document starts at the first token and after each end-of-text
    return tokenizer.decode(stream.tolist(), skip_special_tokens=False).split(END_OF_TEXT)


def test_causal_rows_hold_every_document_in_order_each_ended_by_end_of_text(corpus):
    expected = ["".join(line + "\n" for line in doc) for doc in read_documents(str(corpus / "corpus.txt"))]
    train, held_out = (_documents(corpus / "rows", split) for split in ("train", "eval"))
    assert train[-1] == held_out[-1] == ""  # each split's stream ends with an end-of-text
    train, held_out = train[:-1], held_out[:-1]
    assert len(train) + len(held_out) == len(expected) and held_out
    assert [doc for doc in expected if doc not in held_out] == train


def _next_word_setup(rows, accum_steps=1):
    family = get_family("gpt2")
    config = family.config(
        dict(vocab_size=rows.metadata["vocab_size"], n_embd=32, n_layer=2, n_head=2, n_positions=64)
        | dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)  # dropout's masks do not depend on the devices
    )
    model = family.module(config, Head("pretraining"))
    tx, schedule = make_optimizer(pretrain_defaults().optim, 10)
    return PretrainSetup(model, tx, schedule, None, accum_steps, False, family.inputs, "next_word")


def test_eight_devices_and_accumulation_give_the_one_device_update(corpus):
    rows = PretrainRows(corpus / "rows")
    setup = _next_word_setup(rows)
    one, one_metrics = pretrain_steps(setup, rows, "jit")
    eight, eight_metrics = pretrain_steps(setup, rows, "shard_map")
    accumulated, _ = pretrain_steps(_next_word_setup(rows, accum_steps=4), rows, "jit")
    assert largest_difference(one.params, eight.params) < 1e-6
    assert abs(one_metrics["loss"] - eight_metrics["loss"]) < 1e-5
    assert largest_difference(one.params, accumulated.params) < 1e-6
    assert set(one_metrics) >= {"lm_loss", "lm_accuracy", "loss"}


def test_next_word_pretraining_learns_more_than_token_frequencies(pretrained):
    workdir, metrics = pretrained
    evaluations = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in evaluations if row["split"] == "eval"][-1]
    assert last["context_gain"] > 0.5, last  # nats below the unigram entropy of the rows
    assert np.isclose(last["perplexity"], np.exp(last["lm_loss"]))
    assert metrics["eval_lm_loss"] == last["lm_loss"]


def test_sigterm_and_resume_end_like_an_uninterrupted_run(corpus, tmp_path):
    settings = {**SMALL_GPT2, "data.prepared": corpus / "rows", "total_steps": 60, "checkpoint_every": 10}
    settings |= {"log_every": 10, "eval_every": 1000}

    def command(workdir):
        return jft_command("pretrain", "--config", "pretrain/gpt2_tiny", "--workdir", workdir) + [
            f"--config.{key}={value}" for key, value in settings.items()
        ]

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    run(command(tmp_path / "straight"), tmp_path, env=env)
    code, output = start_and_signal(
        command(tmp_path / "stopped"), tmp_path / "stopped" / "checkpoints", 20, signal.SIGTERM
    )
    assert code == 143 and "stopped by SIGTERM at step" in output
    run(command(tmp_path / "stopped"), tmp_path, env=env)
    straight, _ = final_state(tmp_path / "straight", 60)
    resumed, _ = final_state(tmp_path / "stopped", 60)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_generate_and_the_export_agree_with_transformers(pretrained, tmp_path):
    workdir, _ = pretrained
    done = run(jft_command("generate", "--workdir", workdir, *PROMPTS, "--max-new-tokens", 12, "--json"), tmp_path)
    generated = [json.loads(line) for line in done.stdout.splitlines()]
    assert [g["prompt"] for g in generated] == PROMPTS
    run(jft_command("export", "--workdir", workdir, "--out", "hf"), tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(model).__name__ == "GPT2LMHeadModel"
    ours = load_tokenizer(workdir)
    for prompt, result in zip(PROMPTS, generated):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == ours.encode(prompt, add_special_tokens=False).ids
        out = model.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.eos_token_id)
        theirs = out[0, ids.shape[1] :].tolist()
        if tokenizer.eos_token_id in theirs:
            theirs = theirs[: theirs.index(tokenizer.eos_token_id)]
        assert theirs == result["token_ids"], prompt
        assert result["completion"] == tokenizer.decode(theirs)
    # sampled: the same seed gives the same text, another seed another one
    sampled = [
        run(
            jft_command(
                "generate", "--workdir", workdir, "the cat", "--temperature", 1.0, "--top-k", k, "--seed", seed
            ),
            tmp_path,
        ).stdout
        for k, seed in ((20, 0), (20, 0), (20, 1), (0, 0), (10**6, 0))
    ]
    assert sampled[0] == sampled[1] != sampled[2]
    assert sampled[3] == sampled[4]  # a top-k beyond the vocabulary draws from every token, as 0 does


def test_l2_sp_fine_tuning_with_the_joint_next_word_term_exports_a_classifier(pretrained, tmp_path):
    workdir, _ = pretrained
    write_topic_task(tmp_path / "train.csv", examples=64, seed=1)
    write_topic_task(tmp_path / "dev.csv", examples=32, seed=2)
    settings = {"init_from": workdir, "data.train": "train.csv", "data.eval": "dev.csv", "data.seq_len": 32}
    settings |= {"l2.weight": 0.01, "joint_mlm.weight": 0.5, "epochs": 15, "optim.lr": 3e-3, "batch_size": 8}
    settings |= {"progress": False}
    done = run(
        jft_command("finetune", "--config", "finetune/tiny", "--workdir", "task")
        + [f"--config.{key}={value}" for key, value in settings.items()],
        tmp_path,
    )
    assert "L2-SP" in done.stdout + done.stderr
    rows = [json.loads(line) for line in (tmp_path / "task" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert train and all("lm_loss" in row and "l2_penalty" in row for row in train)
    report = json.loads(run(jft_command("eval", "--workdir", "task", "--data", "dev.csv", "--json"), tmp_path).stdout)
    assert report["metrics"]["accuracy"] > 0.5
    run(jft_command("predict", "--workdir", "task", "--input", "dev.csv", "--output", "preds.jsonl"), tmp_path)
    predictions = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    generated = run(jft_command("generate", "--workdir", "task", "the cat", "--max-new-tokens", 4), tmp_path)
    assert generated.stdout.startswith("the cat")
    warning = f"warning: {tmp_path / 'task'} was fine-tuned for classification; its next words are what fine-tuning"
    assert warning in generated.stderr
    run(jft_command("export", "--workdir", "task", "--out", "hf"), tmp_path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    texts = [line.split(",")[0] for line in (tmp_path / "dev.csv").read_text().splitlines()[1:]]
    with torch.no_grad():  # one padded batch: the exported tokenizer pads with config.json's pad_token_id
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        assert tokenizer.pad_token_id == model.config.pad_token_id and (batch["attention_mask"] == 0).any()
        probabilities = torch.softmax(model(**batch).logits, -1).numpy()
    labels = [model.config.id2label[i] for i in range(probabilities.shape[1])]
    ours = np.array([[prediction["probabilities"][label] for label in labels] for prediction in predictions])
    np.testing.assert_allclose(probabilities, ours, atol=1e-5)


def test_fine_tuning_on_eight_devices_ends_where_one_device_ends(pretrained, tmp_path):
    """Three steps of `jft finetune`'s run in-process from the pretrained GPT-2: the last token's
    classifier, L2-SP, the joint next-word term and GPT-2's own dropout (set once model.family
    names the family); 8 devices end where 1 device ends."""
    from jft.config import load_config
    from jft.defaults import overridden
    from jft.finetune import train_and_evaluate as finetune

    write_topic_task(tmp_path / "train.csv", examples=64, seed=1)
    settings = {"init_from": pretrained[0], "data.train": tmp_path / "train.csv", "data.seq_len": 32}
    settings |= {"l2.weight": 0.01, "joint_mlm.weight": 0.5, "batch_size": 16, "epochs": 1, "max_steps": 3}
    settings |= {"model.family": "gpt2", "model.resid_pdrop": 0.1, "model.attn_pdrop": 0.1, "progress": False}
    params = {}
    for backend in ("jit", "shard_map"):
        changes = [f"{key}={value}" for key, value in {**settings, "parallel.backend": backend}.items()]
        finetune(overridden(load_config("finetune/tiny"), changes), tmp_path / backend)
        params[backend] = final_state(tmp_path / backend, 3)[0]["train"]["params"]
    assert largest_difference(params["jit"], params["shard_map"]) < 1e-5


def test_a_gpt2_where_a_bert_is_needed_and_the_reverse(pretrained, tmp_path):
    workdir, _ = pretrained
    bert = tiny_hf_bert(tmp_path)
    cases = {
        "generate from a BERT": (
            jft_command("generate", "--workdir", bert, "hello"),
            "holds a bert model, which does not predict the next word",
        ),
        "causal rows for a BERT": (
            jft_command("pretrain", "--config", "pretrain/tiny", "--workdir", "bert-run")
            + [f"--config.data.prepared={workdir.parent / 'rows'}", "--config.progress=false"],
            "pretrains with mlm",
        ),
        "a WordPiece vocabulary for a GPT-2": (
            jft_command("finetune", "--config", "finetune/tiny", "--workdir", "task")
            + [f"--config.init_from={workdir}", f"--config.data.vocab={bert}", "--config.data.train=x.csv"],
            "the vocabularies differ",
        ),
        "a GPT-2 export given to a BERT's joint masked-LM": (
            jft_command("finetune", "--config", "finetune/tiny", "--workdir", "task2")
            + [f"--config.init_from={bert}", f"--config.data.vocab={workdir / 'tokenizer.json'}"]
            + ["--config.data.train=x.csv"],
            "the vocabularies differ",
        ),
    }
    write_topic_task(tmp_path / "x.csv", examples=8)
    for name, (command, expected) in cases.items():
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("jft "), (name, done.stderr)
        assert expected in lines[0], (name, lines[0])


def test_a_hugging_face_gpt2_under_gpt2_tiny_is_refused_with_the_flag_that_makes_it_run(pretrained, corpus, tmp_path):
    """gpt2_tiny sets 128 positions for a new model; a GPT-2 directory with another table is refused,
    and the refusal gives the flag that starts it (the table of the directory's)."""
    workdir, _ = pretrained
    run(jft_command("export", "--workdir", workdir, "--out", tmp_path / "hf"), tmp_path)
    command = jft_command("pretrain", "--config", "pretrain/gpt2_tiny", "--workdir", "continued") + [
        f"--config.init_from={tmp_path / 'hf'}",
        f"--config.data.prepared={corpus / 'rows'}",
        "--config.data.seq_len=32",
        "--config.total_steps=2",
        "--config.batch_size=16",
        "--config.eval_every=1000",
        "--config.progress=false",
    ]
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "model.n_positions=128 (it has 64)" in lines[0] and "(--config.model.n_positions=64)" in lines[0]
    assert not (tmp_path / "continued").exists()
    run(command + ["--config.model.n_positions=64"], tmp_path)
    assert json.loads((tmp_path / "continued" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_continued_pretraining_pulls_toward_its_start_and_resumes_bit_exact(pretrained, corpus, tmp_path):
    """Next-word training on a new corpus from the pretrained run with λ‖θ − θ_pre‖² (L2-SP): θ_ref
    is the run's own file, checked on resume; stopped by SIGTERM and resumed, it ends as a run that
    was not stopped."""
    workdir, _ = pretrained
    domain = write_corpus(tmp_path / "domain.txt", documents=60, seed=7)
    settings = {**SMALL_GPT2, "init_from": workdir, "data.corpus": domain, "l2.weight": 0.1, "total_steps": 40}
    settings |= {"checkpoint_every": 10, "log_every": 10, "eval_every": 1000, "optim.lr": 3e-3}

    def command(run_dir):
        return jft_command("pretrain", "--config", "pretrain/gpt2_tiny", "--workdir", run_dir) + [
            f"--config.{key}={value}" for key, value in settings.items()
        ]

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = run(command(tmp_path / "straight"), tmp_path, env=env)
    assert "pulling toward the weights it starts from (L2-SP)" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    penalties = [row["l2_penalty"] for row in rows if row["split"] == "train"]
    assert 0 < penalties[0] < penalties[-1]  # θ moves away from θ_ref, and the penalty says how far
    assert (tmp_path / "straight" / "reference.safetensors").is_file()

    stopped = tmp_path / "stopped"
    code, output = start_and_signal(command(stopped), stopped / "checkpoints", 20, signal.SIGTERM)
    assert code == 143, output
    (stopped / "reference.safetensors").rename(stopped / "elsewhere.safetensors")
    refused = subprocess.run(command(stopped), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "reference.safetensors is missing" in refused.stderr
    (stopped / "elsewhere.safetensors").rename(stopped / "reference.safetensors")
    run(command(stopped), tmp_path, env=env)
    straight, _ = final_state(tmp_path / "straight", 40)
    resumed, _ = final_state(stopped, 40)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_sweep_member_with_the_joint_term_ends_where_its_own_run_ends(pretrained, tmp_path):
    from jft import population, sweep
    from jft.defaults import finetune
    from jft.finetune import train_and_evaluate as finetune_run
    from jft.params import flatten
    from jft.tasks.predictor import FinetunedModel

    workdir, _ = pretrained
    config = finetune()
    settings = {"init_from": str(workdir), "data.seq_len": 32, "batch_size": 8, "epochs": 2, "progress": False}
    settings |= {"data.train": str(write_topic_task(tmp_path / "train.csv", 32, seed=3)), "optim.lr": 3e-3}
    settings |= {"data.eval": str(write_topic_task(tmp_path / "dev.csv", 16, seed=4)), "parallel.backend": "jit"}
    set_keys(config, settings)
    config.sweep.grid = {"joint_mlm.weight": [0.2, 0.8]}  # one population: μ on for both (a head)
    members = sweep.plan(config)
    _, params = population.train_population(members, sweep.sweep_data(config), Runner("jit"))
    own = config.copy_and_resolve_references()
    set_keys(own, {"joint_mlm.weight": 0.8, "data.eval": ""})
    finetune_run(own, tmp_path / "own")
    ours, theirs = flatten(jax.tree.map(lambda x: x[1], params)), flatten(FinetunedModel(tmp_path / "own").params)
    assert ours.keys() == theirs.keys()
    assert max(float(np.max(np.abs(np.asarray(ours[k]) - np.asarray(theirs[k])))) for k in ours) < 1e-5
    other = flatten(jax.tree.map(lambda x: x[0], params))
    assert max(float(np.max(np.abs(np.asarray(ours[k]) - np.asarray(other[k])))) for k in ours) > 1e-4


def test_prompts_of_other_lengths_share_a_compiled_program_and_their_padding_changes_nothing(pretrained):
    from jft.generate import Generator, Sampling, _generate

    generator = Generator(pretrained[0])
    before = _generate._cache_size()
    alone = [generator.generate([prompt], Sampling(max_new_tokens=8))[0] for prompt in PROMPTS]
    together = generator.generate(PROMPTS, Sampling(max_new_tokens=8))
    assert len({len(generator.tokenizer.encode(p).ids) for p in PROMPTS}) > 1  # prompts of several lengths
    assert _generate._cache_size() - before == 2  # one program for a prompt alone, one for the five
    assert [result["token_ids"] for result in alone] == [result["token_ids"] for result in together]


def test_continued_pretraining_without_the_pull_resumes_without_a_reference_file(pretrained, corpus, tmp_path, capsys):
    """λ = 0 from init_from (l2.reference auto: init) keeps no θ_ref, and a resume asks for none."""
    from jft.configs.pretrain.gpt2_tiny import get_config

    config = get_config()
    set_keys(config, {**SMALL_GPT2, "init_from": str(pretrained[0]), "data.prepared": str(corpus / "rows")})
    set_keys(config, {"total_steps": 4, "checkpoint_every": 2, "eval_every": 100})
    train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "reference.safetensors").exists()
    set_keys(config, {"total_steps": 6})
    assert train_and_evaluate(config, tmp_path / "run")["step"] == 6
    assert "resuming at step 4 of 6" in capsys.readouterr().out

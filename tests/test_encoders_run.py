"""RoBERTa, XLM-R and ModernBERT through everything jft has: their vocabularies, packed masked-LM
rows, pretraining (devices, accumulation, learning), the export and continued pretraining from it
with L2-SP (stopped and resumed), fine-tuning with L2-SP and the joint term from a Hugging Face
directory (ModernBERT's unpadded: several texts a row), eval, predict, the export's predictions in
PyTorch, a sweep, and the refusals."""

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
from jft.config import load_config
from jft.data.corpus import read_documents
from jft.data.loader import PretrainRows
from jft.data.prepare import prepare
from jft.data.tokenizer import load_tokenizer, train_vocab
from jft.defaults import overridden
from jft.defaults import pretrain as pretrain_defaults
from jft.models import Head, family_of, hf
from jft.models import get as get_family
from jft.pretrain import train_and_evaluate
from jft.train.masking import MaskingConfig
from jft.train.optim import make_optimizer
from jft.train.parallel import Runner
from jft.train.steps import PretrainSetup

# configs/pretrain/{family}_tiny (widths of 64) on short rows, without dropout. (Width 32 is too
# narrow here: masked-LM never asks <s> for anything, and a pretrained <s> state that hardly varies
# between texts takes a narrow classifier more steps to break than these tests run.) ModernBERT's
# local layers see 4 tokens each side, global attention every second layer.
RUN = {"data.seq_len": 32, "batch_size": 16, "eval_batches": 2, "progress": False}
MODELS = {
    "roberta": {
        "model.max_position_embeddings": 34,
        "model.hidden_dropout_prob": 0.0,
        "model.attention_probs_dropout_prob": 0.0,
    },
    "modernbert": {"model.local_attention": 8, "model.global_attn_every_n_layers": 2, "masking.max_predictions": 10},
}
SMALL_ROBERTA = {**MODELS["roberta"], **RUN}
EXPORTED = {"roberta": "Roberta", "modernbert": "ModernBert"}
# What people type: accents, CJK, several spaces, a tab, punctuation, the mask token.
SENTENCES = [
    "the cat sees the moon.",
    "Ünïcödé naïve café, déjà vu",
    "東京 と 大阪 の 距離",
    "two  spaces\tand a tab",
    "a <mask> in the harbor",
    "1,234.56 kg -- (approximately)!",
]


def jft_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jft.cli", *map(str, args)]


def run(command, cwd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def settings_args(settings: dict) -> list[str]:
    return [f"--config.{key}={value}" for key, value in settings.items()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A corpus of the test generator, a RoBERTa vocabulary trained on it (every word of the generator
    whole: 448 tokens) and its packed rows."""
    root = tmp_path_factory.mktemp("roberta")
    text = write_corpus(root / "corpus.txt", documents=120)
    lines = lambda: (line for document in read_documents(str(text)) for line in document)  # noqa: E731
    train_vocab(lines, root / "vocab", vocab_size=600, kind="roberta")
    prepare(str(text), root / "vocab", root / "rows", seq_len=32, mode="packed", eval_fraction=0.1, progress=False)
    return root


@pytest.fixture(scope="module", params=["roberta", "modernbert"])
def pretrained(request, corpus):
    """A tiny RoBERTa or ModernBERT pretrained in-process for 200 steps on the packed rows; the
    run directory, its last metrics and the family's name."""
    family = request.param
    config = load_config(f"pretrain/{family}_tiny", [], "pretraining")
    set_keys(config, {**MODELS[family], **RUN, "data.prepared": str(corpus / "rows"), "total_steps": 200})
    set_keys(config, {"optim.lr": 3e-3, "optim.warmup_steps": 20, "eval_every": 200, "checkpoint_every": 200})
    metrics = train_and_evaluate(config, corpus / family)
    return corpus / family, metrics, family


def test_packed_rows_frame_each_piece_with_s_and_end_of_text(corpus):
    tokenizer = load_tokenizer(corpus / "vocab")
    rows = PretrainRows(corpus / "rows")
    data = rows.rows(np.arange(len(rows)))
    lengths = data["attention_mask"].sum(1)
    assert (data["input_ids"][:, 0] == tokenizer.token_to_id("<s>")).all()
    assert (data["input_ids"][np.arange(len(lengths)), lengths - 1] == tokenizer.token_to_id("</s>")).all()
    # whole words: a word starts at a token with the space before it ('Ġ') or at a line's start
    first = [tokenizer.id_to_token(int(i)) for i, start in zip(data["input_ids"][0, 1:20], data["word_start"][0, 1:20])]
    starts = data["word_start"][0, 1:20]
    assert all(start for token, start in zip(first, starts) if token.startswith("Ġ"))
    assert not all(starts)


# with dropout: its masks must not depend on the devices or micro-batches a row falls in
SETUP_MODELS = {
    "roberta": dict(intermediate_size=64, max_position_embeddings=34, hidden_dropout_prob=0.1)
    | dict(attention_probs_dropout_prob=0.1),
    "modernbert": dict(intermediate_size=48, local_attention=8, global_attn_every_n_layers=2)
    | dict(embedding_dropout=0.1, attention_dropout=0.1, mlp_dropout=0.1),
}


def _mlm_setup(rows, name, accum_steps=1):
    family = get_family(name)
    config = family.config(
        dict(vocab_size=rows.metadata["vocab_size"], hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
        | SETUP_MODELS[name]
    )
    model = family.module(config, Head("pretraining"))
    tx, schedule = make_optimizer(pretrain_defaults().optim, 10)
    masking = MaskingConfig.for_vocabulary(rows.metadata["special_ids"], config.vocab_size, max_predictions=5)
    return PretrainSetup(model, tx, schedule, masking, accum_steps, False, family.inputs, "mlm")


@pytest.mark.parametrize("name", ["roberta", "modernbert"])
def test_eight_devices_and_accumulation_give_the_one_device_update(corpus, name):
    rows = PretrainRows(corpus / "rows")
    setup = _mlm_setup(rows, name)
    one, one_metrics = pretrain_steps(setup, rows, "jit")
    eight, eight_metrics = pretrain_steps(setup, rows, "shard_map")
    accumulated, _ = pretrain_steps(_mlm_setup(rows, name, accum_steps=4), rows, "jit")
    assert largest_difference(one.params, eight.params) < 1e-6
    assert abs(one_metrics["loss"] - eight_metrics["loss"]) < 1e-5
    assert largest_difference(one.params, accumulated.params) < 1e-6
    assert set(one_metrics) >= {"mlm_loss", "mlm_accuracy", "loss"} and "nsp_loss" not in one_metrics


def test_masked_lm_pretraining_learns_more_than_token_frequencies(pretrained):
    workdir, metrics, _ = pretrained
    evaluations = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in evaluations if row["split"] == "eval"][-1]
    assert last["context_gain"] > 0.3, last  # nats below the unigram entropy of the rows
    assert metrics["eval_mlm_loss"] == last["mlm_loss"]


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory):
    """The pretraining run exported: a Hugging Face ...ForMaskedLM directory with its tokenizer."""
    out = tmp_path_factory.mktemp("export") / "hf"
    run(jft_command("export", "--workdir", pretrained[0], "--out", out), out.parent)
    return out


def test_the_export_loads_in_pytorch_with_jfts_tokens_and_logits(pretrained, exported):
    from jft.models import hf

    family = pretrained[2]
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    model = transformers.AutoModelForMaskedLM.from_pretrained(exported).eval()
    assert type(model).__name__ == f"{EXPORTED[family]}ForMaskedLM"
    ours = load_tokenizer(pretrained[0])
    for sentence in SENTENCES:
        assert tokenizer(sentence)["input_ids"] == ours.encode(sentence).ids, sentence
    assert set(tokenizer("a text")) == {"input_ids", "attention_mask"}  # no token_type_ids, which ModernBERT refuses
    pair = tokenizer("the first", "the second")["input_ids"]
    assert pair == ours.encode("the first", "the second").ids and pair.count(ours.token_to_id("</s>")) == 3
    config, params = hf.load(exported)
    encoded = tokenizer(SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**encoded).logits.numpy()
    module = get_family(family).module(config, Head("pretraining"))
    logits = module.apply(
        {"params": params}, input_ids=encoded["input_ids"].numpy(), attention_mask=encoded["attention_mask"].numpy()
    )["mlm_logits"]
    real = encoded["attention_mask"].numpy() == 1
    assert float(np.max(np.abs(np.asarray(logits)[real] - theirs[real]))) < 1e-4


def test_continued_pretraining_from_the_export_pulls_toward_it_and_resumes_bit_exact(pretrained, exported, tmp_path):
    """Masked-LM training on a new corpus from the Hugging Face directory with λ‖θ − θ_pre‖²,
    from another directory; stopped by SIGTERM and resumed, it ends as a run that was not stopped."""
    family = pretrained[2]
    domain = write_corpus(tmp_path / "domain.txt", documents=60, seed=7)
    settings = {**MODELS[family], **RUN, "init_from": exported, "data.corpus": domain, "l2.weight": 0.1}
    settings |= {"total_steps": 40, "checkpoint_every": 10, "log_every": 10, "eval_every": 1000, "optim.lr": 3e-3}
    changeable = get_family(family).changeable_fields  # the architecture is the export's
    settings = {k: v for k, v in settings.items() if not k.startswith("model.") or k[6:] in changeable}

    def command(run_dir):
        config = f"pretrain/{family}_tiny"
        return jft_command("pretrain", "--config", config, "--workdir", run_dir) + settings_args(settings)

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = run(command(tmp_path / "straight"), tmp_path, env=env)
    assert "pulling toward the weights it starts from (L2-SP)" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    penalties = [row["l2_penalty"] for row in rows if row["split"] == "train"]
    assert 0 < penalties[0] < penalties[-1]
    stopped = tmp_path / "stopped"
    code, output = start_and_signal(command(stopped), stopped / "checkpoints", 20, signal.SIGTERM)
    assert code == 143 and "stopped by SIGTERM at step" in output
    run(command(stopped), tmp_path, env=env)
    straight, _ = final_state(tmp_path / "straight", 40)
    resumed, _ = final_state(stopped, 40)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_l2_sp_fine_tuning_from_the_export_gives_pytorch_its_predictions(pretrained, exported, tmp_path):
    """Several texts a row (data.layout packed: for ModernBERT, unpadded computation)."""
    write_topic_task(tmp_path / "train.csv", examples=64, seed=1)
    write_topic_task(tmp_path / "dev.csv", examples=32, seed=2)
    settings = {"init_from": exported, "data.train": "train.csv", "data.eval": "dev.csv", "data.seq_len": 32}
    settings |= {"l2.weight": 0.01, "joint_mlm.weight": 0.5, "epochs": 30, "optim.lr": 3e-3, "batch_size": 8}
    settings |= {"progress": False, "data.layout": "packed"}
    done = run(
        jft_command("finetune", "--config", "finetune/tiny", "--workdir", "task") + settings_args(settings), tmp_path
    )
    assert "L2-SP" in done.stdout + done.stderr
    rows = [json.loads(line) for line in (tmp_path / "task" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert train and all("mlm_loss" in row and "l2_penalty" in row for row in train)
    report = json.loads(run(jft_command("eval", "--workdir", "task", "--data", "dev.csv", "--json"), tmp_path).stdout)
    assert report["metrics"]["accuracy"] > 0.5  # of 4 balanced topics
    run(jft_command("predict", "--workdir", "task", "--input", "dev.csv", "--output", "preds.jsonl"), tmp_path)
    predictions = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    run(jft_command("export", "--workdir", "task", "--out", "hf"), tmp_path)
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert type(model).__name__ == f"{EXPORTED[pretrained[2]]}ForSequenceClassification"
    assert not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = [line.split(",")[0] for line in (tmp_path / "dev.csv").read_text().splitlines()[1:]]
    with torch.no_grad():
        logits = model.eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    probabilities = torch.softmax(logits, -1).numpy()
    labels = [model.config.id2label[i] for i in range(probabilities.shape[1])]
    ours = np.array([[prediction["probabilities"][label] for label in labels] for prediction in predictions])
    np.testing.assert_allclose(probabilities, ours, atol=1e-5)


# Fine-tuning's dropout, by each family's names (the pretrained models had none).
FINETUNE_DROPOUT = {
    "roberta": {"model.hidden_dropout_prob": 0.1, "model.attention_probs_dropout_prob": 0.1},
    "modernbert": {"model.embedding_dropout": 0.1, "model.attention_dropout": 0.1, "model.mlp_dropout": 0.1},
}


def test_fine_tuning_on_eight_devices_ends_where_one_device_ends(pretrained, exported, tmp_path):
    """`jft finetune`'s run in-process, three steps from the export: packed rows (ModernBERT's
    unpadded computation), L2-SP, the joint masked-LM term and dropout on; 8 devices end where 1
    device ends (a split state: BERT's in tests/test_shard_state.py, the same step)."""
    from jft.finetune import train_and_evaluate as finetune

    write_topic_task(tmp_path / "train.csv", examples=64, seed=1)
    settings = {"init_from": str(exported), "data.train": str(tmp_path / "train.csv"), "data.seq_len": 32}
    settings |= {"data.layout": "packed", "l2.weight": 0.01, "joint_mlm.weight": 0.5, "batch_size": 16}
    settings |= {"epochs": 1, "max_steps": 3, "progress": False, "model.family": pretrained[2]}
    settings |= FINETUNE_DROPOUT[pretrained[2]]  # the family's own fields, once model.family names it

    def finetuned(backend):
        changes = {**settings, "parallel.backend": backend}
        finetune(
            overridden(load_config("finetune/tiny"), [f"{key}={value}" for key, value in changes.items()]),
            tmp_path / backend,
        )
        return final_state(tmp_path / backend, 3)[0]["train"]["params"]

    assert largest_difference(finetuned("jit"), finetuned("shard_map")) < 1e-5


def test_token_tagging_reads_words_as_running_text_and_the_export_tags_as_jft(pretrained, exported, tmp_path):
    """A byte-level BPE keeps a word's space in its first token (Ġ): tagged words, given apart, are
    read with their spaces (the ids of the sentence), so the model sees its pretraining's tokens, and
    transformers' ...ForTokenClassification on the sentence tags each word as `jft predict` does."""
    from jft.finetune import train_and_evaluate as finetune

    words = [["the", "harbor", "sailor", "sees", "the", "moon"], ["a", "sailor", "sees", "the", "harbor"]]
    tags = [["O", "LOC", "PER", "O", "O", "LOC"], ["O", "PER", "O", "O", "LOC"]]
    tagged = [{"tokens": w, "tags": t} for w, t in zip(words, tags)] * 16
    (tmp_path / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged))
    settings = {"init_from": str(exported), "task": "token_classification", "data.train": str(tmp_path / "ner.jsonl")}
    settings |= {"data.text_column": "tokens", "data.label_column": "tags", "data.seq_len": 32, "epochs": 8}
    settings |= {"optim.lr": 3e-3, "batch_size": 8, "progress": False}
    finetune(overridden(load_config("finetune/tiny"), [f"{k}={v}" for k, v in settings.items()]), tmp_path / "ner")
    predicted = run(
        jft_command("predict", "--workdir", "ner", "--input", "ner.jsonl", "--output", "tags.jsonl"), tmp_path
    )
    assert predicted.returncode == 0
    ours = [json.loads(line)["tags"] for line in (tmp_path / "tags.jsonl").read_text().splitlines()][:2]
    assert ours == tags  # learnt, on tokens the model knows
    run(jft_command("export", "--workdir", "ner", "--out", "hf"), tmp_path)
    model = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for sentence_words, expected in zip(words, ours):
        encoded = tokenizer(" ".join(sentence_words), return_tensors="pt")
        assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])[2].startswith("Ġ")  # the words' spaces
        with torch.no_grad():
            labels = model(**encoded).logits[0].argmax(-1).tolist()
        firsts = [encoded.word_to_tokens(0, i).start for i in range(len(sentence_words))]
        assert [model.config.id2label[labels[p]] for p in firsts] == expected


def test_question_answering_from_the_export_with_l2_sp_and_the_joint_term(pretrained, exported, tmp_path):
    """finetune/squad from the Hugging Face directory (L2-SP, μ·MLM on the windows' text), eval,
    predict, export as ...ForQuestionAnswering: transformers' question-answering pipeline gives
    jft's answer to every question whose context fits one row (over several, the pipeline weighs
    windows by softmax probabilities where run_qa and jft add logits; one-sentence contexts here)."""
    from jft.data.synthetic import write_qa_task
    from jft.tasks.records import Columns, Spans, encode, read_records

    write_qa_task(tmp_path / "qa.json", 32, seed=2, sentences=1)
    settings = {"init_from": exported, "data.train": "qa.json", "data.eval": "qa.json", "data.seq_len": 32}
    settings |= {"data.doc_stride": 8, "l2.weight": 0.01, "joint_mlm.weight": 0.3, "epochs": 4, "optim.lr": 1e-3}
    settings |= {"batch_size": 8, "progress": False}
    run(jft_command("finetune", "--config", "finetune/squad", "--workdir", "qa") + settings_args(settings), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "qa" / "metrics.jsonl").read_text().splitlines()]
    assert all("mlm_loss" in row and "l2_penalty" in row for row in rows if row["split"] == "train")
    report = json.loads(run(jft_command("eval", "--workdir", "qa", "--data", "qa.json", "--json"), tmp_path).stdout)
    assert set(report["metrics"]) == {"exact_match", "f1"}
    run(jft_command("predict", "--workdir", "qa", "--input", "qa.json", "--output", "preds.json"), tmp_path)
    predictions = json.loads((tmp_path / "preds.json").read_text())
    run(jft_command("export", "--workdir", "qa", "--out", "hf"), tmp_path)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf")
    assert type(model).__name__ == f"{EXPORTED[pretrained[2]]}ForQuestionAnswering"
    config, params = hf.load(tmp_path / "hf")  # ModernBERT's span head is 'classifier' there, 'qa_outputs' in jft
    assert family_of(config).head_of(params).kind == "question_answering"
    pipe = transformers.pipeline("question-answering", model=model, tokenizer=str(tmp_path / "hf"))
    columns = Columns("question", "context", "answers")
    records = read_records(str(tmp_path / "qa.json"), columns, "question_answering")
    windows = encode(records, load_tokenizer(tmp_path / "qa"), "question_answering", columns, [], 32, spans=Spans(8))
    single = [r for i, r in enumerate(records) if windows.questions.count(i) == 1]
    assert len(single) >= 20  # contexts of one sentence
    for record in single:
        # align_to_words: the pipeline would add up the scores of token spans that widen to the same
        # words; run_qa and jft score token spans
        question = {"question": record["question"], "context": record["context"]}
        out = pipe(**question, max_seq_len=32, doc_stride=8, align_to_words=False)
        assert out["answer"] == predictions[record["id"]], record["question"]


def test_xlm_r_from_scratch_with_its_unigram_vocabulary_tags_and_exports(corpus, tmp_path):
    """An XLM-R (model_type xlm-roberta) pretrained from scratch on a SentencePiece Unigram vocabulary,
    then fine-tuned for token classification: the loss falls, and XLMRobertaForTokenClassification
    with AutoTokenizer gives jft's tokens and logits."""
    from jft.configs.pretrain.roberta_tiny import get_config
    from jft.defaults import finetune
    from jft.finetune import train_and_evaluate as finetune_run
    from jft.models import hf
    from jft.tasks.predictor import FinetunedModel

    config = get_config()
    set_keys(config, {**SMALL_ROBERTA, "data.corpus": str(corpus / "corpus.txt"), "data.vocab_kind": "unigram"})
    set_keys(config, {"model.model_type": "xlm-roberta", "data.vocab_size": 400, "total_steps": 10})
    set_keys(config, {"eval_every": 100, "checkpoint_every": 100})
    train_and_evaluate(config, tmp_path / "xlmr")
    tokenizer = load_tokenizer(tmp_path / "xlmr")
    assert type(tokenizer.model).__name__ == "Unigram" and tokenizer.token_to_id("<mask>") == 4

    words, tags = ["the", "harbor", "sailor", "sees", "the", "moon"], ["O", "LOC", "PER", "O", "O", "LOC"]
    tagged = [{"tokens": words, "tags": tags}]
    (tmp_path / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tagged * 16))
    task = finetune()
    set_keys(task, {"init_from": str(tmp_path / "xlmr"), "task": "token_classification", "data.seq_len": 32})
    set_keys(task, {"data.train": str(tmp_path / "ner.jsonl"), "data.eval": str(tmp_path / "ner.jsonl")})
    set_keys(task, {"data.text_column": "tokens", "data.label_column": "tags", "epochs": 8, "optim.lr": 3e-3})
    set_keys(task, {"batch_size": 8, "progress": False, "l2.weight": 0.01, "log_every": 2})
    final = finetune_run(task, tmp_path / "ner")
    rows = [json.loads(line) for line in (tmp_path / "ner" / "metrics.jsonl").read_text().splitlines()]
    train = [row["task_loss"] for row in rows if row["split"] == "train"]
    assert train[-1] < train[0] and final["eval_token_accuracy"] > 0.6

    out = tmp_path / "hf"
    run(jft_command("export", "--workdir", tmp_path / "ner", "--out", out), tmp_path)
    model, info = transformers.AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert type(model).__name__ == "XLMRobertaForTokenClassification" and not info["unexpected_keys"]
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for sentence in SENTENCES:
        assert theirs(sentence)["input_ids"] == tokenizer.encode(sentence).ids, sentence
    encoded = theirs(SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**encoded).logits.numpy()
    config, params = hf.load(out)
    module = get_family("roberta").module(config, FinetunedModel(tmp_path / "ner").task.head())
    logits = module.apply(
        {"params": params}, input_ids=encoded["input_ids"].numpy(), attention_mask=encoded["attention_mask"].numpy()
    )["logits"]
    real = encoded["attention_mask"].numpy() == 1
    assert float(np.max(np.abs(np.asarray(logits)[real] - expected[real]))) < 1e-4


def test_a_sweep_member_with_the_joint_term_ends_where_its_own_run_ends(pretrained, exported, tmp_path):
    from jft import population, sweep
    from jft.defaults import finetune
    from jft.finetune import train_and_evaluate as finetune_run
    from jft.params import flatten
    from jft.tasks.predictor import FinetunedModel

    config = finetune()
    settings = {"init_from": str(exported), "data.seq_len": 32, "batch_size": 8, "epochs": 2, "progress": False}
    settings |= {"data.train": str(write_topic_task(tmp_path / "train.csv", 32, seed=3)), "optim.lr": 3e-3}
    settings |= {"data.eval": str(write_topic_task(tmp_path / "dev.csv", 16, seed=4)), "parallel.backend": "jit"}
    set_keys(config, settings)
    config.sweep.grid = {"joint_mlm.weight": [0.2, 0.8]}
    members = sweep.plan(config)
    _, params = population.train_population(members, sweep.sweep_data(config), Runner("jit"))
    own = config.copy_and_resolve_references()
    set_keys(own, {"joint_mlm.weight": 0.8, "data.eval": ""})
    finetune_run(own, tmp_path / "own")
    theirs = flatten(FinetunedModel(tmp_path / "own").params)
    ours = {k: v for k, v in flatten(jax.tree.map(lambda x: x[1], params)).items() if k in theirs}
    joint_head = get_family(pretrained[2]).joint_head
    assert ours.keys() == theirs.keys() and not any(k.startswith(f"{joint_head}/") for k in theirs)
    assert max(float(np.max(np.abs(np.asarray(ours[k]) - np.asarray(theirs[k])))) for k in ours) < 1e-5


def test_a_roberta_where_a_bert_is_given_and_the_reverse_are_one_line(corpus, tmp_path):
    from jft.export import save_hf_tokenizer
    from jft.models import hf

    roberta = get_family("roberta")
    tokenizer = load_tokenizer(corpus / "vocab")
    config = roberta.preset("tiny", vocab_size=tokenizer.get_vocab_size())
    exported = tmp_path / "roberta"
    hf.save(exported, config, roberta.init(config, Head("pretraining"), jax.random.key(0)))
    save_hf_tokenizer(tokenizer, exported, config.max_length)
    bert = tiny_hf_bert(tmp_path)
    cases = {
        "a RoBERTa export for a BERT's pretraining (next-sentence rows)": (
            jft_command("pretrain", "--config", "pretrain/tiny", "--workdir", "a")
            + [f"--config.init_from={exported}", f"--config.data.corpus={corpus / 'corpus.txt'}"],
            "a roberta model pretrains with mlm, not mlm+nsp",
        ),
        "a RoBERTa export for a config that says bert": (
            jft_command("pretrain", "--config", "pretrain/tiny", "--workdir", "b")
            + [f"--config.init_from={exported}", "--config.model.family=bert", "--config.data.mode=packed"]
            + [f"--config.data.corpus={corpus / 'corpus.txt'}"],
            "model.family='bert' (it is a 'roberta' model)",
        ),
        "a BERT export for RoBERTa's config": (
            jft_command("pretrain", "--config", "pretrain/roberta_tiny", "--workdir", "c")
            + [f"--config.init_from={bert}", f"--config.data.corpus={corpus / 'corpus.txt'}"],
            "model.family='roberta' (it is a 'bert' model)",
        ),
        "a RoBERTa export for GPT-2's config (its n_positions no field of RoBERTa's)": (
            jft_command("pretrain", "--config", "pretrain/gpt2_tiny", "--workdir", "d")
            + [f"--config.init_from={exported}", f"--config.data.corpus={corpus / 'corpus.txt'}"],
            "model.family='gpt2' (it is a 'roberta' model). A run keeps its checkpoint's architecture; use a roberta "
            "config, or init_from a gpt2 model.",
        ),
    }
    for name, (command, expected) in cases.items():
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("jft "), (name, done.stderr)
        assert expected in lines[0], (name, lines[0])

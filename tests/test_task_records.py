"""Bad labeled data, table-driven: each mistake in a CSV/TSV/JSONL task file is one JftError line
that names the file and line, says what is wrong and what to do; nothing is silently changed.

Each case writes its file in a fresh directory and reads it with jft.tasks.records.read_records;
the whole message is checked ({file}: the case's file). Valid files (long fields, numeric labels,
quoted fields over several lines) read as they are.
"""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from conftest import REPO
from jft import cli
from jft.config import load_config
from jft.data.synthetic import write_vocab
from jft.data.tokenizer import load_tokenizer
from jft.errors import JftError
from jft.tasks.finetuning import read_task
from jft.tasks.records import IGNORE, Columns, encode, label_vocabulary, read_records

FINETUNE = str(REPO / "configs" / "finetune" / "tiny.py")
LABELED = Columns()
PAIRS = Columns("premise", "hypothesis", "label")
PREDICT = Columns("text", None, None)  # prediction input: no label column

NO_STRING = '{file}:2: column {column!r} is a JSON {type}, not a string; write each text as a string ("...").'
EMPTY = (
    "{file}:{line} has an empty text in column {column!r} (nothing but spaces, or nothing); give every record its "
    "text, or remove it."
)
SURROGATE = (
    "{file}:{line}: the text in column {column!r} holds an unpaired UTF-16 surrogate ({code}), an invalid "
    "character; fix the program that wrote the file (a \\uD800-\\uDFFF escape is one half of a pair)."
)
QUOTE = (
    "{file}:{line} has text after the closing quote of a field, which is not valid CSV; quote the whole field and "
    'write each quote inside it twice ("she said ""ahoy"" twice").'
)
UNCLOSED = (
    "{file}:{line} starts a quoted field that is not closed by the end of the file; close its quote "
    '(and write each quote inside it twice: "she said ""ahoy"" twice").'
)
LONG = "x" * 300_000  # over Python csv's default field limit (131,072)


def _jsonl(*records: dict | str) -> str:
    """JSONL lines: dicts as JSON, strings as they are (to write escapes json.dumps would not)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


OK = {"text": "the ship", "label": "sea"}


@dataclasses.dataclass
class Case:
    name: str
    file: str  # its name: .csv, .tsv or .jsonl
    content: str | bytes
    message: str  # the whole message, {file}: the file's path
    columns: Columns = LABELED
    kind: str = "classification"


CASES = [
    # 1. A text that is not a string (JSONL): an error naming the JSON type, never str()'d.
    Case(
        "jsonl text number",
        "a.jsonl",
        _jsonl(OK, {"text": 5, "label": "a"}),
        NO_STRING.format(file="{file}", column="text", type="number"),
    ),
    Case(
        "jsonl text float",
        "a.jsonl",
        _jsonl(OK, {"text": 2.5, "label": "a"}),
        NO_STRING.format(file="{file}", column="text", type="number"),
    ),
    Case(
        "jsonl text boolean",
        "a.jsonl",
        _jsonl(OK, {"text": True, "label": "a"}),
        NO_STRING.format(file="{file}", column="text", type="boolean"),
    ),
    Case(
        "jsonl text array",
        "a.jsonl",
        _jsonl(OK, {"text": ["a", "b"], "label": "a"}),
        NO_STRING.format(file="{file}", column="text", type="array"),
    ),
    Case(
        "jsonl text object",
        "a.jsonl",
        _jsonl(OK, {"text": {"en": "a"}, "label": "a"}),
        NO_STRING.format(file="{file}", column="text", type="object"),
    ),
    Case(
        "jsonl text null",
        "a.jsonl",
        _jsonl(OK, {"text": None, "label": "a"}),
        NO_STRING.format(file="{file}", column="text", type="null"),
    ),
    Case(
        "jsonl text_pair number",
        "a.jsonl",
        _jsonl({"premise": "a", "hypothesis": "b", "label": "x"}, {"premise": "a", "hypothesis": 7, "label": "x"}),
        NO_STRING.format(file="{file}", column="hypothesis", type="number"),
        PAIRS,
    ),
    Case(
        "jsonl text number, to predict",
        "a.jsonl",
        _jsonl({"text": "a"}, {"text": 5}),
        NO_STRING.format(file="{file}", column="text", type="number"),
        PREDICT,
    ),
    Case(
        "jsonl record without its text key",
        "a.jsonl",
        _jsonl(OK, {"label": "a"}),
        "{file}:2 has no value in column 'text' (a text); give every record its text, or remove it.",
    ),
    Case(
        "jsonl record without its label key",
        "a.jsonl",
        _jsonl(OK, {"text": "a"}),
        "{file}:2 has no value in column 'label' (the label).",
    ),
    # 2. An unpaired surrogate (a lone JSON escape): an invalid character, named at its line.
    Case(
        "jsonl lone high surrogate",
        "a.jsonl",
        _jsonl(OK, '{"text": "\\ud800 abc", "label": "a"}'),
        SURROGATE.format(file="{file}", line=2, column="text", code="U+D800"),
    ),
    Case(
        "jsonl lone low surrogate in text_pair",
        "a.jsonl",
        _jsonl('{"premise": "a", "hypothesis": "b \\udc00", "label": "x"}'),
        SURROGATE.format(file="{file}", line=1, column="hypothesis", code="U+DC00"),
        PAIRS,
    ),
    Case(
        "jsonl surrogate pair reversed",
        "a.jsonl",
        _jsonl('{"text": "\\ude00\\ud83d"}'),
        SURROGATE.format(file="{file}", line=1, column="text", code="U+DE00"),
        PREDICT,
    ),
    Case(
        "jsonl lone surrogate in a word",
        "a.jsonl",
        _jsonl('{"text": ["the", "\\udbff"], "label": ["O", "O"]}'),
        SURROGATE.format(file="{file}", line=1, column="text", code="U+DBFF"),
        kind="token_classification",
    ),
    # 3. An empty text (docs/finetuning.md: a record without its text is an error).
    Case(
        "csv empty text cell",
        "a.csv",
        "text,label\nthe ship,sea\n,sea\n",
        EMPTY.format(file="{file}", line=3, column="text"),
    ),
    Case(
        "csv blank text cell",
        "a.csv",
        'text,label\nthe ship,sea\n"  ",sea\n',
        EMPTY.format(file="{file}", line=3, column="text"),
    ),
    Case(
        "tsv empty text cell",
        "a.tsv",
        "label\ttext\nsea\tthe ship\nsea\t\n",
        EMPTY.format(file="{file}", line=3, column="text"),
    ),
    Case(
        "csv empty text after a record over two lines",
        "a.csv",
        'text,label\n"the ship\nsails",sea\n\n,sea\n',
        EMPTY.format(file="{file}", line=5, column="text"),
    ),
    Case(
        "csv empty text_pair cell",
        "a.csv",
        "premise,hypothesis,label\na b,c d,x\ne f,,x\n",
        EMPTY.format(file="{file}", line=3, column="hypothesis"),
        PAIRS,
    ),
    Case(
        "csv empty text to predict",
        "a.csv",
        "id,text\n1,the ship\n2,\n",
        EMPTY.format(file="{file}", line=3, column="text"),
        PREDICT,
    ),
    Case(
        "jsonl empty text",
        "a.jsonl",
        _jsonl(OK, {"text": "", "label": "a"}),
        EMPTY.format(file="{file}", line=2, column="text"),
    ),
    Case(
        "jsonl blank text",
        "a.jsonl",
        _jsonl({"text": " \t\n", "label": "a"}),
        EMPTY.format(file="{file}", line=1, column="text"),
    ),
    Case(
        "jsonl empty text_pair",
        "a.jsonl",
        _jsonl({"premise": "a", "hypothesis": "", "label": "x"}),
        EMPTY.format(file="{file}", line=1, column="hypothesis"),
        PAIRS,
    ),
    Case(
        "csv row without its text field",
        "a.csv",
        "label,text\nsea,the ship\nsea\n",
        "{file}:3 has no value in column 'text' (a text); give every record its text, or remove it.",
    ),
    # 4. Malformed CSV names the line where it goes wrong, also in a file with long fields.
    Case(
        "csv quote never closed",
        "a.csv",
        'text,label\nthe ship,sea\n"the cow,land\nthe dog,land\n',
        UNCLOSED.format(file="{file}", line=3),
    ),
    Case(
        "csv quote never closed, long fields before",
        "a.csv",
        f'text,label\n{LONG},sea\n"{LONG},sea\n' + f"{LONG},land\n" * 3,
        UNCLOSED.format(file="{file}", line=3),
    ),
    Case(
        "csv text after a closing quote",
        "a.csv",
        f'text,label\n{LONG},sea\n"the "cow" moos",land\n',
        QUOTE.format(file="{file}", line=3),
    ),
    Case(
        "csv text after a closing quote, on the second line of a record",
        "a.csv",
        'text,label\nthe cow,land\n"the ship\nsails" on,sea\n',
        "{file}:4 has text after the closing quote of a field (a quoted field that opens on line 3: does its quote "
        'close there?), which is not valid CSV; quote the whole field and write each quote inside it twice ("she '
        'said ""ahoy"" twice").',
    ),
    Case(
        "csv more fields than the header",
        "a.csv",
        f'text,label\n"{LONG}",sea\nthe ship,sea,extra\n',
        "{file}:3 has more fields than the header (2); put a field that holds the separator (',') in double quotes.",
    ),
    # Labels keep their rules.
    Case(
        "regression label not a number",
        "a.jsonl",
        _jsonl({"text": "a", "label": 1.5}, {"text": "b", "label": "high"}),
        "{file}:2: the label 'high' is not a number; a regression task needs scores.",
        kind="regression",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_one_clear_line(case: Case, tmp_path):
    file = tmp_path / case.file
    file.write_bytes(case.content if isinstance(case.content, bytes) else case.content.encode())
    with pytest.raises(JftError) as error:
        read_records(str(file), case.columns, case.kind)
    message = str(error.value)
    assert "\n" not in message and re.fullmatch(re.escape(case.message.replace("{file}", str(file))), message), message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            _jsonl({"text": 5, "label": "a"}),
            "{file}:1: column 'text' is a JSON number, not a string; write each text as a string (\"...\").",
        ),
        ("text,label\nthe ship,sea\n,land\n", EMPTY.format(file="{file}", line=3, column="text")),
    ],
    ids=["jsonl text number", "csv empty text"],
)
def test_finetune_says_one_line_and_makes_no_workdir(content, message, tmp_path, capsys):
    file = tmp_path / ("a.jsonl" if content.startswith("{") else "a.csv")
    file.write_text(content)
    argv = ["finetune", "--config", FINETUNE, "--workdir", str(tmp_path / "run"), f"--config.data.train={file}"]
    code = cli.main(argv + ["--config.progress=False"])
    err = capsys.readouterr().err
    assert err == f"jft finetune: error: {message.replace('{file}', str(file))}\n"
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [file.name]


def test_labels_that_differ_only_in_case_or_spaces_are_warned_of(tmp_path, capsys):
    file = tmp_path / "a.csv"
    file.write_text("text,label\nthe ship,sea\nthe boat,Sea \nthe cow,land\nthe hen,land\n")
    task, _, _ = read_task(load_config(FINETUNE, [f"data.train={file}"], "finetune"))
    assert task.labels == ["Sea ", "land", "sea"]  # separate classes, as the data says
    assert capsys.readouterr().err == (
        f"warning: data.train {file}: labels that differ only in case or spaces are separate classes: 'Sea ' and "
        "'sea'; make them the same if they are one class.\n"
    )
    file.write_text("text,label\nthe ship,sea\nthe cow,land\n")
    read_task(load_config(FINETUNE, [f"data.train={file}"], "finetune"))
    assert capsys.readouterr().err == ""


def _read(path: Path, content: str, columns: Columns = LABELED, kind: str = "classification") -> list:
    path.write_text(content, newline="")
    return read_records(str(path), columns, kind)


def test_a_long_csv_field_reads(tmp_path):
    long = "the ship sails. " * 18_750  # 300,000 characters
    records = _read(tmp_path / "a.csv", f'text,label\n"{long}",sea\nthe cow,land\n')
    assert records == [{"text": long, "label": "sea"}, {"text": "the cow", "label": "land"}]
    assert [r.where for r in records] == [f"{tmp_path / 'a.csv'}:2", f"{tmp_path / 'a.csv'}:3"]
    tsv = _read(tmp_path / "a.tsv", f"text\tlabel\n{LONG}\tsea\n")
    assert tsv == [{"text": LONG, "label": "sea"}]


def test_upper_case_suffixes_read_as_their_formats(tmp_path):
    assert _read(tmp_path / "A.CSV", "text,label\nthe ship,sea\n") == [{"text": "the ship", "label": "sea"}]
    assert _read(tmp_path / "A.TSV", "text\tlabel\nthe, ship\tsea\n") == [{"text": "the, ship", "label": "sea"}]
    assert _read(tmp_path / "A.JSONL", '{"text": "the ship", "label": "sea"}\n') == [
        {"text": "the ship", "label": "sea"}
    ]


def test_a_tsv_reads_quotes_as_text(tmp_path):
    content = 'text\tlabel\n"You" (or "Your") shall mean you\tlicense\nshe said "ahoy\tsea\n"the ship"\tsea\n'
    records = _read(tmp_path / "a.tsv", content)
    assert records == [
        {"text": '"You" (or "Your") shall mean you', "label": "license"},
        {"text": 'she said "ahoy', "label": "sea"},
        {"text": '"the ship"', "label": "sea"},
    ]
    assert [r.where for r in records] == [f"{tmp_path / 'a.tsv'}:{line}" for line in (2, 3, 4)]


def test_a_valid_csv_reads_as_it_is(tmp_path):
    content = 'text,label\n" the ship, at sea ",sea\n\n"she said ""ahoy""\nand sailed",sea\r\ncaf\u00e9 \u2603,land\n'
    records = _read(tmp_path / "a.csv", content)
    assert records == [
        {"text": " the ship, at sea ", "label": "sea"},
        {"text": 'she said "ahoy"\nand sailed', "label": "sea"},
        {"text": "caf\u00e9 \u2603", "label": "land"},
    ]
    assert [r.where.rsplit(":", 1)[1] for r in records] == ["2", "4", "6"]  # the line each record starts on


def test_a_valid_jsonl_reads_as_it_is(tmp_path):
    content = _jsonl(
        '{"text": "smile \\ud83d\\ude00", "label": 1}',  # an escaped surrogate pair is one character
        {"text": " padded ", "label": "0", "extra": None},
    )
    records = _read(tmp_path / "a.jsonl", content)
    assert records == [{"text": "smile \U0001f600", "label": 1}, {"text": " padded ", "label": "0", "extra": None}]
    assert label_vocabulary(records, "classification", "label") == ["0", "1"]


def test_numeric_regression_labels_still_read(tmp_path):
    records = _read(
        tmp_path / "a.jsonl", _jsonl({"text": "a", "label": 3}, {"text": "b", "label": "4.5"}), kind="regression"
    )
    assert [r["label"] for r in records] == [3, "4.5"]
    csv_records = _read(tmp_path / "a.csv", "text,label\na,0.25\nb,5\n", kind="regression")
    assert [r["label"] for r in csv_records] == ["0.25", "5"]


def test_a_pair_task_and_prediction_input_read(tmp_path):
    pairs = _read(tmp_path / "p.csv", "premise,hypothesis,label\na b,c d,x\n", PAIRS)
    assert pairs == [{"premise": "a b", "hypothesis": "c d", "label": "x"}]
    to_predict = _read(tmp_path / "q.jsonl", _jsonl({"text": "a", "id": 7}), PREDICT)
    assert to_predict == [{"text": "a", "id": 7}]


@pytest.mark.parametrize(
    ("file", "train", "content", "kind", "line"),
    [
        (
            "dev.csv",
            "text,label\nthe ship,sea\nthe cow,farm\n",
            "text,label\nthe ship,sea\n\nthe wave,ocean\n",  # a blank line: the record is on line 4
            "classification",
            4,
        ),
        (
            "dev.jsonl",
            _jsonl({"text": ["the", "ship"], "label": ["O", "B-X"]}),
            _jsonl({"text": ["a"], "label": ["O"]}, {"text": ["the", "ship"], "label": ["O", "B-Y"]}),
            "token_classification",
            2,
        ),
    ],
    ids=["csv class", "jsonl tag"],
)
def test_a_label_outside_the_training_labels_names_its_file_and_line(file, train, content, kind, line, tmp_path):
    """The label set comes from the training data; an evaluation record with another label is named by file:line."""
    train_records = _read(tmp_path / f"train{Path(file).suffix}", train, kind=kind)
    labels = label_vocabulary(train_records, kind, "label")
    records = _read(tmp_path / file, content, kind=kind)
    tokenizer = load_tokenizer(write_vocab(tmp_path / "vocab.txt"))
    with pytest.raises(JftError) as error:
        encode(records, tokenizer, kind, LABELED, labels, 16)
    wrong = "ocean" if kind == "classification" else "B-Y"
    assert str(error.value) == (
        f"{tmp_path / file}:{line}: label {wrong!r} is not in the task's label set {labels}; fix the data, or "
        "fine-tune again with this label in the training data."
    )


@pytest.mark.parametrize("kind", ["roberta", "bytelevel", "unigram", "wordpiece"])
def test_tagged_words_are_read_as_the_sentence_reads(kind, tmp_path):
    """Words given apart get the ids of the sentence they make (a byte-level BPE's Ġ included), and
    each word's tag sits on its first token."""
    from jft.data.corpus import read_documents
    from jft.data.synthetic import write_corpus
    from jft.data.tokenizer import train_vocab

    text = write_corpus(tmp_path / "corpus.txt", documents=40)
    lines = lambda: (line for document in read_documents(str(text)) for line in document)  # noqa: E731
    train_vocab(lines, tmp_path / "vocab", vocab_size=400, kind=kind)
    tokenizer = load_tokenizer(tmp_path / "vocab")
    words, tags, labels = (
        ["the", "harbor", "sailor", "sees", "the", "moon"],
        ["O", "LOC", "PER", "O", "O", "LOC"],
        ["LOC", "O", "PER"],
    )
    columns = Columns("tokens", None, "tags")
    encoded = encode([{"tokens": words, "tags": tags}], tokenizer, "token_classification", columns, labels, 64)
    sentence = tokenizer.encode(" ".join(words))
    assert encoded.input_ids[0].tolist() == sentence.ids
    firsts = [sentence.word_ids.index(i) for i in range(len(words))]
    assert [labels[encoded.labels[0][i]] for i in firsts] == tags
    assert (encoded.labels[0] != IGNORE).sum() == len(words)

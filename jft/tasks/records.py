"""Labeled data for fine-tuning: records in, token arrays out (jft.tasks.batches makes batches).

Sources: CSV, TSV or JSONL files with a column mapping (text, text_pair, label), or a TFDS
dataset by name (tfds:glue/sst2:train, ...). Token classification reads a list of words and a
list of tags per record; the tag goes on the first word-piece of each word, the other pieces
are ignored by the loss. Multiple choice reads a context (text, and text_pair: the start its
candidates continue) and the candidate columns (SWAG's ending0..ending3), the label being the
right candidate's number. Question answering reads SQuAD's JSON files (or records with a question,
a context and answers {text: [...], answer_start: [...]}) and cuts each question with its context
into windows of seq_len tokens that overlap by doc_stride (`Windows`).
"""

import csv
import dataclasses
import io
import json
import math
import re
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers

from jft.data.corpus import tfds_records
from jft.data.tokenizer import as_running_text, reads_spaces
from jft.errors import JftError, choices
from jft.files import json_type, jsonl_objects, read_text
from jft.models import Head

KINDS = ("classification", "regression", "token_classification", "question_answering", "multiple_choice")
PER_TOKEN = ("token_classification", "question_answering")  # kinds whose model gives logits a token
IGNORE = -1  # label of word-pieces and padding that the token loss skips
# Python's csv reads fields of at most 128 KiB by default; long documents are fine (the largest C long).
CSV_FIELD_LIMIT = min(sys.maxsize, 2 ** (8 * struct.calcsize("l") - 1) - 1)
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class Columns:
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    choices: tuple[str, ...] = ()  # multiple choice: the candidates' columns

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(self.choices))  # run.json keeps a list


@dataclasses.dataclass(frozen=True)
class Spans:
    """Question answering's settings: the tokens two windows of a long context share (doc_stride,
    Hugging Face's stride), the longest answer in tokens, how many candidate answers a question
    keeps (n_best), whether a question may have no answer (SQuAD v2.0: unanswerable) and by how much
    the no-answer score must beat the best span's to answer nothing (null_threshold)."""

    doc_stride: int = 128
    max_answer_length: int = 30
    n_best: int = 20
    unanswerable: bool = False
    null_threshold: float = 0.0


@dataclasses.dataclass
class Task:
    """What a fine-tuned model needs to read new data and name its outputs (kept in run.json)."""

    kind: str
    labels: list[str]
    columns: Columns
    seq_len: int
    spans: Spans | None = None  # question answering's

    def to_json(self) -> dict:
        out = {
            "kind": self.kind,
            "labels": self.labels,
            "columns": dataclasses.asdict(self.columns),
            "seq_len": self.seq_len,
        }
        return {**out, "spans": dataclasses.asdict(self.spans)} if self.spans else out

    @classmethod
    def from_json(cls, values: dict) -> "Task":
        spans = Spans(**values["spans"]) if values.get("spans") else None
        return cls(values["kind"], values["labels"], Columns(**values["columns"]), values["seq_len"], spans)

    def head(self, mlm: bool = False, joint_labels: int = 0) -> Head:
        """The head of the task's model; mlm: with the joint objective's masked-LM head as well;
        joint_labels: an image model's pretraining classifier as well (the joint objective's)."""
        if self.kind in ("question_answering", "multiple_choice"):
            return Head(self.kind, 2 if self.kind == "question_answering" else 1, mlm=mlm)
        kind = "token_classification" if self.kind == "token_classification" else "classification"
        return Head(kind, max(len(self.labels), 1), mlm=mlm, joint_labels=joint_labels)

    def metrics(self) -> tuple[str, ...]:
        """The names of the evaluation metrics of this task (all: higher is better, but mse)."""
        if self.kind == "regression":
            return ("pearson", "spearman", "mse")
        if self.kind == "classification":
            return ("accuracy", "mcc", "f1" if len(self.labels) == 2 else "macro_f1")
        if self.kind == "multiple_choice":
            return ("accuracy",)
        if self.kind == "question_answering":
            both = ("HasAns_exact_match", "HasAns_f1", "NoAns_exact_match", "NoAns_f1")
            return ("exact_match", "f1", *(both if self.spans and self.spans.unanswerable else ()))
        return ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")


class Record(dict):
    """One record of task data, and where it is (file:line, or dataset and index) for messages."""

    where: str = ""
    json: bool = False  # from a JSONL file: its values' types are named as JSON's


def read_records(source: str, columns: Columns, kind: str, *, tfds_data_dir: str | None = None) -> list[Record]:
    """Records with the mapped columns, from a CSV/TSV/JSONL file or tfds:NAME[:SPLIT], each checked
    for the task kind (a text, a label, a number for regression, as many tags as words);
    columns.label None: records to predict, without labels."""
    if source.startswith("tfds:"):
        raw, features = tfds_records(source.removeprefix("tfds:"), tfds_data_dir)
        names = _class_names(features, columns.label)
        records = [_record(_decode(r, columns.label, names), f"{source} record {i}") for i, r in enumerate(raw)]
    else:
        path = Path(source)
        if path.is_dir():
            raise JftError(f"{path} is a directory; give a data file in it (.csv, .tsv or .jsonl).")
        if not path.is_file():
            raise JftError(f"data file not found: {path}")
        suffix = path.suffix.lower()  # data.CSV is a CSV file too
        if suffix == ".jsonl":
            records = _jsonl_records(path)
        elif suffix == ".json" and kind == "question_answering":
            records = _squad_records(path)
        elif suffix in (".csv", ".tsv"):
            records = _csv_records(path, "\t" if suffix == ".tsv" else ",")
        else:
            squad = ", SQuAD's .json" if kind == "question_answering" else ""
            hint = ""
            if suffix == ".json":
                hint = (
                    " A .json file is read as SQuAD's form by a question-answering run (task=question_answering, "
                    f"as --config finetune/squad); this is a {kind} run."
                )
            raise JftError(f"cannot read {path}: use .csv, .tsv or .jsonl{squad} (or tfds:NAME[:SPLIT]).{hint}")
    if not records:
        raise JftError(f"{source} holds no records.")
    wanted = [c for c in (columns.text, columns.text_pair, *columns.choices, columns.label) if c]
    missing = [c for c in wanted if c not in records[0]]
    if missing:
        raise JftError(
            f"{source} has no column {missing[0]!r} (columns: {choices(sorted(records[0]))}); map yours with "
            f"--config.data.text_column, text_pair_column{', choice_columns' if columns.choices else ''} and "
            "label_column."
        )
    for record in records:
        _check_record(record, kind, columns)
    return records


def _record(values: dict, where: str, json: bool = False) -> Record:
    record = Record(values)
    record.where, record.json = where, json
    return record


def _jsonl_records(path: Path) -> list[Record]:
    return [_record(values, f"{path}:{number}", json=True) for number, values in jsonl_objects(path)]


def _squad_records(path: Path) -> list[Record]:
    """The questions of a SQuAD v1.1 / v2.0 file ({"data": [{"title", "paragraphs": [{"context",
    "qas": [{"id", "question", "answers", "is_impossible"}]}]}]}) as records with an id, a
    question, a context and answers {"text": [...], "answer_start": [...]} (none: unanswerable)."""
    try:
        articles = json.loads(read_text(path))["data"]
        records = []
        for a, article in enumerate(articles):
            for p, paragraph in enumerate(article["paragraphs"]):
                for q, qa in enumerate(paragraph["qas"]):
                    where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                    impossible = qa.get("is_impossible", False)
                    if not isinstance(impossible, bool):
                        raise JftError(f"{where}: is_impossible must be true or false, got {impossible!r}.")
                    answers = [] if impossible else qa["answers"]
                    values = {
                        "id": qa["id"],
                        "title": article.get("title", ""),
                        "question": qa["question"],
                        "context": paragraph["context"],
                        "answers": {
                            "text": [answer["text"] for answer in answers],
                            "answer_start": [answer["answer_start"] for answer in answers],
                        },
                    }
                    records.append(_record(values, where, json=True))
    except ValueError as error:
        raise JftError(f"{path} is not valid JSON ({error}).") from None
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise JftError(
            f"{path} is not in SQuAD's format (data[].paragraphs[].qas[] with id, question and answers[] of text and "
            f"answer_start): {type(error).__name__} {error}."
        ) from None
    return records


def _csv_records(path: Path, delimiter: str) -> list[Record]:
    """The rows of a CSV/TSV file under its header (the first line); each record's where is the
    line it starts on (a quoted CSV field may span lines). CSV is strict: a quote that never closes,
    or text after a closing quote, is an error naming its line, not a record silently joined or
    changed. TSV has no quoting (its fields hold no tab or newline; GLUE's files are such): a quote
    is a character of the text."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    header, records, first = None, [], 1  # first: the line the next row starts on
    try:
        for row in rows:
            where, first = f"{path}:{first}", rows.line_num + 1
            if header is None:
                header = row
                _check_separator(path, header, delimiter)
            elif row:  # blank lines are skipped
                if len(row) > len(header):
                    raise JftError(
                        f"{where} has more fields than the header ({len(header)}); put a field that holds the "
                        f"separator ({delimiter!r}) in double quotes."
                    )
                records.append(_record(dict(zip(header, row + [None] * (len(header) - len(row)))), where))
    except csv.Error as error:
        if str(error) == "unexpected end of data":
            raise JftError(
                f"{path}:{first} starts a quoted field that is not closed by the end of the file; close its quote "
                '(and write each quote inside it twice: "she said ""ahoy"" twice").'
            ) from None
        if "expected after" in str(error):  # strict: text after a closing quote ("a"b)
            opened = f" (a quoted field that opens on line {first}: does its quote close there?)"
            raise JftError(
                f"{path}:{rows.line_num} has text after the closing quote of a field"
                f"{opened if first < rows.line_num else ''}, which is not valid CSV; quote the whole field and write "
                'each quote inside it twice ("she said ""ahoy"" twice").'
            ) from None
        raise JftError(f"{path}:{rows.line_num} is not valid CSV ({error}).") from None
    return records


def _check_separator(path: Path, header: list[str], delimiter: str) -> None:
    """A CSV header of one field that holds tabs or semicolons: the file is not comma-separated."""
    if delimiter != "," or len(header) != 1:
        return
    if "\t" in header[0]:
        raise JftError(f"{path} looks tab-separated (its header is {header[0]!r}); name it .tsv.")
    if ";" in header[0]:
        raise JftError(
            f"{path} looks semicolon-separated (its header is {header[0]!r}); jft reads CSV with commas: save it "
            "with commas (or tabs, as .tsv)."
        )


def _check_record(record: Record, kind: str, columns: Columns) -> None:
    """A JftError naming the record when it cannot be a record of this task."""
    for column in (columns.text, columns.text_pair, *columns.choices):
        if column:
            _check_text(record, column, words=kind == "token_classification" and column == columns.text)
    words = record[columns.text]
    if not columns.label:
        return
    if kind == "question_answering":
        _check_answers(record, columns)
        return
    label = record.get(columns.label)
    if label is None or label == "":
        raise JftError(f"{record.where} has no value in column {columns.label!r} (the label).")
    if kind == "regression":
        try:
            score = float(label)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise JftError(f"{record.where}: the label {label!r} is not a number; a regression task needs scores.")
    if kind == "token_classification":
        if not isinstance(label, list):
            raise JftError(f"{record.where}: column {columns.label!r} must be a list of tags, got {label!r:.80}.")
        if len(label) != len(words):
            raise JftError(f"{record.where} has {len(words)} words but {len(label)} tags; give one tag a word.")


def _check_answers(record: Record, columns: Columns) -> None:
    """A JftError naming the record unless its answers are {"text": [...], "answer_start": [...]}
    (a CSV cell: that object as JSON), each text found in the context where it is said to start;
    the record's answers are left parsed."""
    answers = record.get(columns.label)
    if isinstance(answers, str) and not record.json:
        try:
            answers = record[columns.label] = json.loads(answers)
        except ValueError:
            answers = None
    shape = '{"text": [...], "answer_start": [...]}'
    if not (
        isinstance(answers, dict)
        and isinstance(answers.get("text"), list)
        and isinstance(answers.get("answer_start"), list)
        and len(answers["text"]) == len(answers["answer_start"])
    ):
        raise JftError(
            f"{record.where}: column {columns.label!r} must be the answers as {shape} (lists of the same length; "
            f"empty for a question without an answer), got {answers!r:.80}."
        )
    context = record[columns.text_pair]
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(start, int) or isinstance(start, bool) or start < 0 or not isinstance(text, str):
            raise JftError(
                f"{record.where}: an answer is a text and the character it starts at (0 or more), got {text!r}, "
                f"{start!r}."
            )
        if not text.strip():
            raise JftError(f"{record.where}: an answer is empty or only spaces ({text!r}); give its words, or none.")
        if context[start : start + len(text)] != text:
            found = context.find(text)
            hint = f"it is at {found}" if found >= 0 else "the context does not hold it"
            raise JftError(
                f"{record.where}: the answer {text!r:.60} does not start at character {start} of the context ({hint}); "
                "answer_start counts characters from 0."
            )


def check_answered(records: list[Record], columns: Columns, advice: str) -> None:
    """Every question of records has an answer (SQuAD v1.1), else a JftError naming the first that
    has none, with advice."""
    unanswered = [r for r in records if not r[columns.label]["text"]]
    if unanswered:
        raise JftError(
            f"{unanswered[0].where} has no answer ({len(unanswered)} of {len(records)} questions there have none), "
            f"as in SQuAD v2.0: {advice}."
        )


def _check_text(record: Record, column: str, words: bool) -> None:
    """A JftError naming the record when column is not a text (words: a list of words): none, not a
    string, empty or blank, or holding an unpaired surrogate (a JSON escape like \\ud800 alone)."""
    value = record.get(column)
    if value is None and not (record.json and column in record):  # a JSON null is named below
        raise JftError(
            f"{record.where} has no value in column {column!r} (a text); give every record its text, or remove it."
        )
    if words:
        if not (isinstance(value, list) and all(isinstance(w, str) for w in value)):
            raise JftError(f"{record.where}: column {column!r} must be a list of words (strings), got {value!r:.80}.")
        texts = value  # an empty sentence (a document break in CoNLL data) has no words to tag
        blank = next((i for i, word in enumerate(value) if not word.strip()), None)
        if blank is not None:
            raise JftError(
                f"{record.where}: word {blank + 1} of column {column!r} is empty or only spaces "
                f"({value[blank]!r}); it has no token to tag: remove it (and its tag)."
            )
    elif not isinstance(value, str):
        if not record.json:
            return  # a TFDS feature: encode() takes its str()
        raise JftError(
            f"{record.where}: column {column!r} is a JSON {json_type(value)}, not a string; write each text as a "
            'string ("...").'
        )
    elif not value.strip():
        raise JftError(
            f"{record.where} has an empty text in column {column!r} (nothing but spaces, or nothing); give every "
            "record its text, or remove it."
        )
    else:
        texts = [value]
    for text in texts:
        if bad := SURROGATE.search(text):
            raise JftError(
                f"{record.where}: the text in column {column!r} holds an unpaired UTF-16 surrogate "
                f"(U+{ord(bad.group()):04X}), an invalid character; fix the program that wrote the file "
                "(a \\uD800-\\uDFFF escape is one half of a pair)."
            )


def _class_names(features, column: str | None) -> list[str] | None:
    """The names of a TFDS ClassLabel column (or of a sequence of them, as NER tags), if it is one."""
    feature = features[column] if column and column in features else None
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel
    return list(feature.names) if hasattr(feature, "names") else None


def _decode(record: dict, label_column: str | None, names: list[str] | None) -> dict:
    """A TFDS record as plain Python values, with class ids turned into their names."""

    def value(v):
        if isinstance(v, np.ndarray | np.generic):
            v = v.tolist()
        if isinstance(v, list):
            return [value(x) for x in v]
        if isinstance(v, dict):  # a TFDS feature dict, as SQuAD's answers
            return {k: value(x) for k, x in v.items()}
        return v.decode("utf-8") if isinstance(v, bytes) else v

    out = {k: value(v) for k, v in record.items()}
    if names is not None and label_column in out:
        label = out[label_column]
        # A label of -1 marks an unlabeled split (GLUE's test sets): no name.
        out[label_column] = (
            [names[i] for i in label] if isinstance(label, list) else (names[label] if label >= 0 else None)
        )
    return out


def label_vocabulary(
    records: Sequence[dict],
    kind: str,
    label_column: str,
    *,
    source: str = "",
    tfds_data_dir: str | None = None,
    choices: int = 0,
) -> list[str]:
    """The label names of a classification task (tags, for token classification; the candidates'
    numbers, 0 to choices - 1, for multiple choice): a TFDS
    dataset's own class names in its order (so class 1 stays the positive class of F1), else
    the names found in the records, sorted (as numbers when every one is an integer, so that
    class ids 0..9, 10 stay in order: logit n of an export is label n)."""
    if kind in ("regression", "question_answering"):
        return []
    if kind == "multiple_choice":
        return [str(i) for i in range(choices)]
    if source.startswith("tfds:"):
        _, features = tfds_records(source.removeprefix("tfds:"), tfds_data_dir)
        names = _class_names(features, label_column)
        if names:
            return names
    if kind == "token_classification":
        names = {str(tag) for r in records for tag in r[label_column]}
    else:
        names = {str(r[label_column]) for r in records}
    if names and all(re.fullmatch(r"[+-]?\d+", name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


@dataclasses.dataclass
class Encoded:
    """Token arrays of a task's examples (lists, one entry an example, of varying length)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: list  # int class, float score, or int array per token (IGNORE where no label)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class Choices(Encoded):
    """Multiple choice's examples: each one's candidates as rows of one array (input_ids and
    token_type_ids [candidates, longest]) with masks [candidates, longest] (1: a token)."""

    masks: list[np.ndarray] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Windows(Encoded):
    """Question answering's windows: Encoded rows (labels: [start, end] token positions of the
    answer, [0, 0] where the window does not hold it or there is none), and what turns their logits
    back into answers: each window's question (an index into ids, contexts and answers) and its
    tokens' character offsets in that context ([tokens, 2]; -1 for the question's and special tokens)."""

    questions: list[int] = dataclasses.field(default_factory=list)
    offsets: list[np.ndarray] = dataclasses.field(default_factory=list)
    ids: list[str] = dataclasses.field(default_factory=list)
    contexts: list[str] = dataclasses.field(default_factory=list)
    answers: list[list[str]] = dataclasses.field(default_factory=list)  # the gold texts, a list a question

    def subset(self, indices) -> "Windows":
        """The windows at indices, in that order (a sweep's folds: all of a question's windows
        together), with every question still indexable."""

        def pick(values):
            return [values[i] for i in indices]

        rows = (pick(self.input_ids), pick(self.token_type_ids), pick(self.labels))
        return Windows(*rows, pick(self.questions), pick(self.offsets), self.ids, self.contexts, self.answers)


def encode(
    records: Sequence[dict],
    tokenizer: tokenizers.Tokenizer,
    kind: str,
    columns: Columns,
    labels: Sequence[str],
    seq_len: int,
    *,
    with_labels: bool = True,
    spans: Spans | None = None,
) -> Encoded:
    """Tokenizes records, truncated to seq_len tokens; labels mapped to ids (checked against `labels`).
    Question answering (spans: its settings): the windows of encode_windows."""
    if kind not in KINDS:
        raise JftError(f"task kind '{kind}' is not one of {choices(KINDS)}.")
    if kind == "question_answering":
        return encode_windows(records, tokenizer, columns, seq_len, spans or Spans(), with_labels=with_labels)
    if kind == "multiple_choice":
        return encode_choices(records, tokenizer, columns, labels, seq_len, with_labels=with_labels)
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # truncation without touching the caller's
    tokenizer.enable_truncation(seq_len)
    tokenizer.no_padding()

    if kind == "token_classification":
        spaced = reads_spaces(tokenizer)
        words = [as_running_text(r[columns.text], spaced) for r in records]
        encodings = tokenizer.encode_batch(words, is_pretokenized=True)
    elif columns.text_pair:
        encodings = tokenizer.encode_batch([(str(r[columns.text]), str(r[columns.text_pair])) for r in records])
    else:
        encodings = tokenizer.encode_batch([str(r[columns.text]) for r in records])
    out = Encoded([], [], [])
    for record, encoding in zip(records, encodings):
        out.input_ids.append(np.array(encoding.ids, np.int32))
        out.token_type_ids.append(np.array(encoding.type_ids, np.int32))
        if not with_labels:
            out.labels.append(None)
        elif kind == "classification":
            out.labels.append(_label_id(record[columns.label], record, labels))
        elif kind == "regression":
            out.labels.append(float(record[columns.label]))
        else:
            tags = record[columns.label]
            token_labels, previous = np.full(len(encoding.ids), IGNORE, np.int32), None
            for position, word in enumerate(encoding.word_ids):
                if word is not None and word != previous:
                    token_labels[position] = _label_id(tags[word], record, labels)
                previous = word
            out.labels.append(token_labels)
    return out


def _label_id(name, record, labels: Sequence[str]) -> int:
    """The index of label `name` in labels, or a JftError naming the record."""
    if str(name) not in labels:
        where = getattr(record, "where", "")  # file:line (or dataset and index) of a Record
        raise JftError(
            f"{where + ': ' if where else ''}label {str(name)!r} is not in the task's label set {list(labels)}; "
            "fix the data, or fine-tune again with this label in the training data."
        )
    return list(labels).index(str(name))


def encode_windows(
    records: Sequence[dict],
    tokenizer: tokenizers.Tokenizer,
    columns: Columns,
    seq_len: int,
    spans: Spans,
    *,
    with_labels: bool = True,
) -> Windows:
    """Each record's question (columns.text) with its context (columns.text_pair) as rows of at
    most seq_len tokens: the whole question, then as much of the context as fits, the next row's
    context starting doc_stride tokens before this one's ends (Hugging Face's run_qa windows)."""
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    questions = [str(r[columns.text]).lstrip() for r in records]
    contexts = [str(r[columns.text_pair]) for r in records]
    special = tokenizer.post_processor.num_special_tokens_to_add(True) if tokenizer.post_processor else 0
    for record, question in zip(records, tokenizer.encode_batch(questions, add_special_tokens=False)):
        room = seq_len - special - len(question.ids)
        if room <= spans.doc_stride:
            where = getattr(record, "where", "")
            raise JftError(
                f"{where + ': ' if where else ''}the question has {len(question.ids)} tokens, which leaves "
                f"{max(room, 0)} of data.seq_len={seq_len} for its context: fewer than data.doc_stride="
                f"{spans.doc_stride} + 1. Raise data.seq_len or lower data.doc_stride."
            )
    tokenizer.enable_truncation(seq_len, stride=spans.doc_stride, strategy="only_second")
    out = Windows([], [], [], ids=[str(r.get("id", i)) for i, r in enumerate(records)], contexts=contexts)
    for index, (record, encoding) in enumerate(zip(records, tokenizer.encode_batch(list(zip(questions, contexts))))):
        answers = record[columns.label] if with_labels else None
        if answers is not None:
            out.answers.append(list(answers["text"]))
        for window in [encoding, *encoding.overflowing]:
            in_context = np.array([s == 1 for s in window.sequence_ids])
            offsets = np.where(in_context[:, None], np.array(window.offsets, np.int64).reshape(-1, 2), -1)
            out.input_ids.append(np.array(window.ids, np.int32))
            out.token_type_ids.append(np.array(window.type_ids, np.int32))
            out.questions.append(index)
            out.offsets.append(offsets)
            out.labels.append(None if answers is None else _answer_tokens(answers, offsets, in_context))
    return out


def _answer_tokens(answers: dict, offsets: np.ndarray, in_context: np.ndarray) -> np.ndarray:
    """[start, end]: the window's tokens that cover the first answer's characters, or [0, 0] (the
    first token's, no answer here) when the window does not hold all of it or there is none."""
    if not answers["text"]:
        return np.zeros(2, np.int32)
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = np.flatnonzero(in_context)
    if not len(context) or offsets[context[0], 0] > start_char or offsets[context[-1], 1] < end_char:
        return np.zeros(2, np.int32)
    start = context[offsets[context, 0] <= start_char][-1]
    end = context[offsets[context, 1] >= end_char][0]
    return np.array([start, end], np.int32)


def encode_choices(
    records: Sequence[dict],
    tokenizer: tokenizers.Tokenizer,
    columns: Columns,
    labels: Sequence[str],
    seq_len: int,
    *,
    with_labels: bool = True,
) -> Choices:
    """Each record's candidates as pairs (its text, its text_pair and the candidate, or the
    candidate alone without a text_pair: SWAG's sent1, sent2 + " " + ending, as Hugging Face's
    run_swag), truncated to seq_len tokens, padded to the example's longest."""
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    tokenizer.enable_truncation(seq_len)
    tokenizer.no_padding()
    count = len(columns.choices)
    pairs = []
    for record in records:
        start = f"{record[columns.text_pair]} " if columns.text_pair else ""
        pairs += [(str(record[columns.text]), start + str(record[choice])) for choice in columns.choices]
    encodings = tokenizer.encode_batch(pairs)
    out = Choices([], [], [], masks=[])
    for index, record in enumerate(records):
        candidates = encodings[index * count : (index + 1) * count]
        width = max(len(e.ids) for e in candidates)
        ids, types, mask = (np.zeros((count, width), np.int32) for _ in range(3))
        for row, encoding in enumerate(candidates):
            n = len(encoding.ids)
            ids[row, :n], types[row, :n], mask[row, :n] = encoding.ids, encoding.type_ids, 1
        out.input_ids.append(ids)
        out.token_type_ids.append(types)
        out.masks.append(mask)
        out.labels.append(_label_id(record[columns.label], record, labels) if with_labels else None)
    return out

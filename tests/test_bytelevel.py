"""GPT-2's byte-level BPE: trained the same on every run, read from tokenizer.json or from
vocab.json with merges.txt, and exported so that transformers' AutoTokenizer gives jft's ids.

transformers 4.57 (the test extra) loads the export here; transformers 5 builds a GPT2Tokenizer
from tokenizer_config.json and the vocabulary and merges of tokenizer.json instead, which
`test_export_follows_transformers_5_loading_rules` rebuilds the same way.
"""

import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import tokenizers
import transformers
from tokenizers import decoders, pre_tokenizers

from conftest import REPO, corpus_vocab, write_corpus
from jft.data.corpus import read_documents
from jft.data.tokenizer import END_OF_TEXT, end_of_text_id, load_tokenizer, tokenizer_kind, train_vocab
from jft.errors import JftError
from jft.export import save_hf_tokenizer

sys.path.insert(0, str(REPO / "benchmarks"))
from l2_reference import WORDNET, glosses  # noqa: E402
from transformers5_check import varied_sentences  # noqa: E402

JFT = [sys.executable, "-m", "jft.cli"]
VOCAB_SIZE = 400
# What a byte-level tokenizer must give back whole: odd whitespace, every script, the special token in text.
SENTENCES = [
    *varied_sentences(80),
    "",
    " ",
    "  two leading spaces",
    "trailing spaces   ",
    "many     spaces  between",
    "a line\nthe next\n\nafter a blank line\n",
    "\ttabbed\tcolumns\t",
    " \n\t mixed \r\n",
    f"one document{END_OF_TEXT}the next",
    f"{END_OF_TEXT}",
    f" {END_OF_TEXT} spaced {END_OF_TEXT}{END_OF_TEXT}",
    "Ça a été très café: naïve façade, Øresund, Ἀθῆναι",
    "日本語の文章と中文字、한국어",
    "emoji 😀 🚀🚀 👩‍💻 family 👨‍👩‍👧 flags 🇫🇷",
]


def real_lines() -> list[str]:
    """English text: 3000 WordNet glosses (apt package wordnet-base), or where WordNet is not
    installed, the docstrings of some of Python's standard modules."""
    if WORDNET.is_dir():
        return [definition for definition, _ in glosses(3000, seed=0)]
    modules = (json, os, shutil, subprocess)
    docs = [inspect.getdoc(value) or "" for module in modules for value in vars(module).values() if callable(value)]
    return [line.strip() for doc in docs for line in doc.splitlines() if line.strip()]


def corpus_lines(text):
    return lambda: (line for doc in read_documents(str(text)) for line in doc)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(corpus file, directory of the vocabulary trained on it, the tokenizer)."""
    root = tmp_path_factory.mktemp("bytelevel")
    text = root / "corpus.txt"
    text.write_text("".join(f"{line}\n" for line in real_lines()), encoding="utf-8")
    tokenizer = train_vocab(corpus_lines(text), root / "vocab", vocab_size=VOCAB_SIZE, kind="bytelevel")
    return text, root / "vocab", tokenizer


def test_training_is_the_same_in_every_process(trained):
    text, _, tokenizer = trained
    assert tokenizer.get_vocab_size() == VOCAB_SIZE and tokenizer_kind(tokenizer) == "bytelevel"
    again = train_vocab(corpus_lines(text), vocab_size=VOCAB_SIZE, kind="bytelevel")
    assert again.to_str() == tokenizer.to_str()
    script = (
        "import sys; from jft.data.corpus import read_documents; from jft.data.tokenizer import train_vocab; "
        "lines = lambda: (line for doc in read_documents(sys.argv[1]) for line in doc); "
        f"print(train_vocab(lines, vocab_size={VOCAB_SIZE}, kind='bytelevel').to_str())"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script, str(text)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == tokenizer.to_str()


def test_lowercase_is_for_wordpiece_only(trained):
    text, _, tokenizer = trained
    cased = train_vocab(corpus_lines(text), vocab_size=VOCAB_SIZE, lowercase=False, kind="bytelevel")
    assert cased.to_str() == tokenizer.to_str()
    assert tokenizer.decode(tokenizer.encode("The Harbor").ids) == "The Harbor"


def test_auto_tokenizer_gives_jft_ids_and_decodes_back(trained, tmp_path):
    _, _, tokenizer = trained
    save_hf_tokenizer(tokenizer, tmp_path, 64)
    names = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    assert {path.name for path in tmp_path.iterdir()} == names
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "GPT2Tokenizer" and config["add_prefix_space"] is False
    assert config["eos_token"] == config["bos_token"] == config["unk_token"] == config["pad_token"] == END_OF_TEXT
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf).__name__ == "GPT2TokenizerFast" and hf.model_max_length == 64
    assert hf.eos_token_id == end_of_text_id(tokenizer)
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence, add_special_tokens=False).ids
        assert hf(sentence)["input_ids"] == ids, sentence
        assert hf.decode(ids) == tokenizer.decode(ids, skip_special_tokens=False) == sentence, sentence
    assert tokenizer.encode(f"a{END_OF_TEXT}b").ids[1] == end_of_text_id(tokenizer)


def test_export_refuses_a_byte_level_tokenizer_transformers_would_not_rebuild(trained, tmp_path):
    _, _, tokenizer = trained
    normalized = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    normalized.normalizer = tokenizers.normalizers.NFC()
    with pytest.raises(JftError, match="^the run's tokenizer is not GPT-2's byte-level BPE \\(it has a normalizer"):
        save_hf_tokenizer(normalized, tmp_path, 64)


def transformers5_gpt2(directory) -> tokenizers.Tokenizer:
    """The tokenizer transformers 5 builds for an exported GPT2Tokenizer directory: a BPE model on
    the vocabulary and merges of tokenizer.json, a ByteLevel pre-tokenizer with the config's
    add_prefix_space, a ByteLevel decoder, tokenizer.json's post-processor, and bos, eos and unk
    as special tokens (transformers 5: models/gpt2/tokenization_gpt2.py and
    TokenizersBackend.convert_to_native_format)."""
    config = json.loads((directory / "tokenizer_config.json").read_text())
    written = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    model = json.loads(written.to_str())["model"]
    merges = [tuple(merge) for merge in model["merges"]]
    bpe = tokenizers.models.BPE(
        model["vocab"], merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
    )
    tokenizer = tokenizers.Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=config["add_prefix_space"])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = written.post_processor
    specials = {config[name] for name in ("bos_token", "eos_token", "unk_token")}
    tokenizer.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False) for token in specials])
    return tokenizer


def test_export_follows_transformers_5_loading_rules(trained, tmp_path):
    _, _, tokenizer = trained
    save_hf_tokenizer(tokenizer, tmp_path, 64)
    rebuilt = transformers5_gpt2(tmp_path)
    assert rebuilt.get_vocab() == tokenizer.get_vocab()
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence).ids
        assert rebuilt.encode(sentence).ids == ids and rebuilt.decode(ids, skip_special_tokens=False) == sentence


def test_vocab_json_and_merges_txt_load_as_their_tokenizer_json(trained, tmp_path):
    _, vocab, tokenizer = trained
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab / name, tmp_path / name)
    from_json = load_tokenizer(vocab / "tokenizer.json")
    # GPT-2's own algorithm on the same two files: transformers' pure-Python GPT2Tokenizer
    gpt2 = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    expected = [gpt2(s)["input_ids"] for s in SENTENCES]
    for source in (tmp_path, tmp_path / "vocab.json", tmp_path / "merges.txt"):
        loaded = load_tokenizer(source)
        assert loaded.to_str() == from_json.to_str() == tokenizer.to_str()
        assert [loaded.encode(s).ids for s in SENTENCES] == [from_json.encode(s).ids for s in SENTENCES] == expected
    shutil.copy(
        corpus_vocab(write_corpus(tmp_path / "c.txt", documents=20), tmp_path / "wp") / "tokenizer.json", tmp_path
    )
    assert tokenizer_kind(load_tokenizer(tmp_path)) == "wordpiece"  # tokenizer.json first


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("vocab.json", '{"a": 0, "b', "the vocabulary {dir}/vocab.json is not valid JSON: {*}"),
        ("vocab.json", '["a", "b"]', "the vocabulary {dir}/vocab.json holds a JSON array, not an object {...}."),
        (
            "vocab.json",
            '{"a": "0"}',
            "{dir}/vocab.json is not a vocabulary of token ids ({token: id}); it is damaged{*}",
        ),
        ("merges.txt", "#version: 0.2\nĠ t h\n", "{dir}/merges.txt:2 is not a merge of two tokens ('a b'); {*}"),
        ("merges.txt", "#version: 0.2\nzzq zzr\n", "{dir}/merges.txt does not fit {dir}/vocab.json ({*}"),
    ],
)
def test_damaged_vocab_json_or_merges_txt_is_a_line_naming_it(trained, tmp_path, file, content, message):
    _, vocab, _ = trained
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab / name, tmp_path / name)
    (tmp_path / file).write_text(content, encoding="utf-8")
    with pytest.raises(JftError) as raised:
        load_tokenizer(tmp_path / "vocab.json")
    pattern = re.escape(message.replace("{dir}", str(tmp_path))).replace(re.escape("{*}"), ".*")
    assert re.fullmatch(pattern, str(raised.value)), str(raised.value)  # one line: . matches no line end


def test_kinds_and_end_of_text(trained, tmp_path):
    _, _, tokenizer = trained
    wordpiece = load_tokenizer(corpus_vocab(write_corpus(tmp_path / "corpus.txt", documents=20), tmp_path / "wp"))
    assert tokenizer_kind(wordpiece) == "wordpiece" and tokenizer_kind(tokenizer) == "bytelevel"
    assert end_of_text_id(tokenizer) == tokenizer.token_to_id(END_OF_TEXT)
    with pytest.raises(
        JftError, match=r"^the vocabulary has no <\|endoftext\|> token; .* `jft vocab --kind bytelevel`"
    ):
        end_of_text_id(wordpiece)
    other = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(JftError, match="^the tokenizer is a WordLevel model with Whitespace pre-tokenizer; "):
        tokenizer_kind(other)
    with pytest.raises(JftError, match="no tokens beyond the 256 bytes and the special tokens"):
        train_vocab(lambda: iter([]), kind="bytelevel")
    with pytest.raises(JftError, match="unknown vocabulary kind 'bpe'; choose one of wordpiece, bytelevel"):
        train_vocab(lambda: iter(["a b"]), kind="bpe")


def test_vocab_command_writes_gpt2_files(trained, tmp_path):
    text, _, tokenizer = trained
    out = tmp_path / "vocab"
    command = [*JFT, "vocab", str(text), "--out", str(out), "--kind", "bytelevel", "--vocab-size", str(VOCAB_SIZE)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"wrote {out / 'vocab.json'}, {out / 'merges.txt'} and {out / 'tokenizer.json'} ({VOCAB_SIZE} tokens)\n"
    )
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {path.name for path in out.iterdir()}
    assert load_tokenizer(out).to_str() == tokenizer.to_str()

"""Tokenizers (Hugging Face `tokenizers`) of two kinds, and vocabulary training: BERT's WordPiece
(tokenizer.json, or vocab.txt) and GPT-2's byte-level BPE (tokenizer.json, or vocab.json with merges.txt)."""

import dataclasses
import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from tokenizers.implementations import BertWordPieceTokenizer

from jft.errors import JftError
from jft.files import atomic_write, read_json_object, read_text, write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: between documents, and its bos, eos and unk
KINDS = ("wordpiece", "bytelevel")
# The files of a tokenizer that load_tokenizer finds in a directory, in the order it tries them.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",))


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def load_tokenizer(path: str | Path, *, lowercase: bool = True) -> tokenizers.Tokenizer:
    """A fast tokenizer from tokenizer.json, from vocab.json with the merges.txt beside it (GPT-2's
    byte-level BPE, as Hub repositories without tokenizer.json ship it), from vocab.txt (WordPiece,
    lowercasing unless `lowercase` is false), or from a directory holding one of them, tried in
    that order."""
    path = Path(path)
    if path.is_dir():
        found = [path / names[0] for names in TOKENIZER_FILES if all((path / name).is_file() for name in names)]
        if not found:
            raise JftError(
                f"{path} holds no tokenizer.json, vocab.json with merges.txt, or vocab.txt; train one with `jft vocab`."
            )
        path = found[0]
    if not path.is_file():
        raise JftError(
            f"vocabulary not found: {path}; give a tokenizer.json, vocab.json (with merges.txt) or vocab.txt, or "
            "train one with `jft vocab`."
        )
    if path.name in ("vocab.json", "merges.txt"):
        return _read_bpe_files(path.with_name("vocab.json"), path.with_name("merges.txt"))
    if path.suffix == ".json":
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the tokenizers library raises its own exception type
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
            raise JftError(
                f"{path} is not a readable tokenizer ({reason}); it is damaged or not a tokenizers JSON file: copy "
                "it again from where it came from."
            ) from None
        # Padding and truncation saved with a Hub model (all-MiniLM-L6-v2: pad every text to 128)
        # would change every encoding; jft pads and truncates its batches itself.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer
    try:
        vocab = tokenizers.models.WordPiece.read_file(str(path))
    except Exception as error:
        raise JftError(f"{path} is not a readable vocabulary, one token a line ({error}).") from None
    return BertWordPieceTokenizer(vocab, lowercase=lowercase)._tokenizer


def vocabulary_fingerprint(tokenizer: tokenizers.Tokenizer) -> str:
    """SHA-256 of the vocabulary (every token with its id): equal for the same vocabulary."""
    tokens = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256("\n".join(token for token, _ in tokens).encode()).hexdigest()


def tokenizer_kind(tokenizer: tokenizers.Tokenizer) -> str:
    """The tokenizer's kind (KINDS): wordpiece for a WordPiece tokenizer (BERT's), bytelevel for a BPE
    one with a ByteLevel pre-tokenizer (GPT-2's, RoBERTa's); any other is an error."""
    if isinstance(tokenizer.model, models.WordPiece):
        return "wordpiece"
    if isinstance(tokenizer.model, models.BPE) and isinstance(tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel):
        return "bytelevel"
    pre = type(tokenizer.pre_tokenizer).__name__ if tokenizer.pre_tokenizer else "no"
    raise JftError(
        f"the tokenizer is a {type(tokenizer.model).__name__} model with {pre} pre-tokenizer; jft takes WordPiece "
        "(BERT's) and byte-level BPE (GPT-2's) tokenizers."
    )


def end_of_text_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The id of <|endoftext|>, which separates the documents of a next-word model."""
    i = tokenizer.token_to_id(END_OF_TEXT)
    if i is None:
        raise JftError(
            f"the vocabulary has no {END_OF_TEXT} token; a next-word model needs it to separate documents: train one "
            "with `jft vocab --kind bytelevel`."
        )
    return i


def special_ids(tokenizer: tokenizers.Tokenizer) -> SpecialIds:
    """The ids of BERT's special tokens; a vocabulary without one of them is an error."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, i in ids.items() if i is None]
    if missing:
        raise JftError(f"the vocabulary lacks the special tokens {missing}; BERT needs {list(SPECIAL_TOKENS)}.")
    return SpecialIds(*(ids[token] for token in SPECIAL_TOKENS))


def train_vocab(
    texts: Callable[[], Iterable[str]],
    out_dir: str | Path | None = None,
    *,
    vocab_size: int = 30522,
    lowercase: bool = True,
    min_frequency: int = 2,
    kind: str = "wordpiece",
) -> tokenizers.Tokenizer:
    """Trains a vocabulary of `kind` (KINDS), the same for the same corpus and settings; writes its
    files (save_tokenizer) into out_dir when given.

    texts: returns the corpus lines; called once or twice.
    wordpiece: BERT's, with its five special tokens; lowercased unless `lowercase` is false.
    bytelevel: GPT-2's byte-level BPE: the 256 bytes are its first tokens, so every text encodes;
    <|endoftext|> is its one special token. Always cased, as GPT-2 is: `lowercase` is ignored.
    """
    if kind not in KINDS:
        raise JftError(f"unknown vocabulary kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if kind == "bytelevel":
        trained = _train_bytelevel(texts, vocab_size, min_frequency)
    else:
        trained = _train_wordpiece(texts, vocab_size, lowercase, min_frequency)
    if out_dir is not None:
        save_tokenizer(trained, out_dir)
    return trained


def _train_wordpiece(
    texts: Callable[[], Iterable[str]], vocab_size: int, lowercase: bool, min_frequency: int
) -> tokenizers.Tokenizer:
    """The `tokenizers` trainer numbers the word-continuation pieces ('##x') in hash order and breaks
    ties between equally frequent merges by those numbers, so on its own two trainings on one
    corpus differ (huggingface/tokenizers#1794). Declaring every '##x' up front, in sorted order,
    fixes their numbers and with them every tie."""
    tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
    tokenizer.train_from_iterator(
        texts(),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *_continuation_pieces(texts(), tokenizer._tokenizer.normalizer)],
        show_progress=False,
    )
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise JftError("the corpus gave no vocabulary beyond the special tokens; is it empty?")
    # Rebuilt from the plain vocabulary, so that only BERT's five special tokens are special.
    return BertWordPieceTokenizer({token: i for i, (token, _) in enumerate(vocab)}, lowercase=lowercase)._tokenizer


def _train_bytelevel(texts: Callable[[], Iterable[str]], vocab_size: int, min_frequency: int) -> tokenizers.Tokenizer:
    """Deterministic as it is: the trainer numbers the alphabet (every byte's symbol) in character
    order, and each merge's token in the order it makes them; it breaks ties between equally
    frequent merges by those numbers (tests/test_bytelevel.py trains in two processes)."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts(), trainer)
    vocab, merges = _vocab_and_merges(tokenizer)
    if not merges:
        raise JftError(
            f"the corpus gave no tokens beyond the 256 bytes and {END_OF_TEXT} (vocab_size {vocab_size}, "
            f"min_frequency {min_frequency}); is it empty?"
        )
    # Rebuilt with GPT-2's components, as a vocab.json and merges.txt load (_read_bpe_files).
    return _bytelevel_tokenizer(vocab, merges)


def save_tokenizer(tokenizer: tokenizers.Tokenizer, out_dir: str | Path) -> Path:
    """Writes tokenizer.json into out_dir, and the vocabulary files of its kind: vocab.txt (one
    token a line, in id order) for WordPiece; vocab.json and merges.txt, as GPT-2 ships them, for
    byte-level BPE."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = tokenizer_kind(tokenizer)
    atomic_write(out_dir / "tokenizer.json", lambda path: tokenizer.save(str(path)))
    if kind == "bytelevel":
        vocab, merges = _vocab_and_merges(tokenizer)
        write_text(out_dir / "vocab.json", json.dumps(vocab, ensure_ascii=False) + "\n")
        write_text(out_dir / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    else:
        tokens = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        write_text(out_dir / "vocab.txt", "".join(f"{token}\n" for token, _ in tokens))
    return out_dir


def _vocab_and_merges(tokenizer: tokenizers.Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BPE tokenizer's vocabulary (token: id, in id order) and merges (in rank order)."""
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _bytelevel_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE tokenizer (the components of its tokenizer.json) on a vocabulary and
    its merges, <|endoftext|> special when the vocabulary has it."""
    model = models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    if END_OF_TEXT in vocab:
        tokenizer.add_special_tokens([tokenizers.AddedToken(END_OF_TEXT, special=True, normalized=False)])
    return tokenizer


def _read_bpe_files(vocab_file: Path, merges_file: Path) -> tokenizers.Tokenizer:
    """GPT-2's tokenizer from vocab.json ({token: id}) and merges.txt ('a b' a line, after a
    '#version' line); a damaged file is an error that names it."""
    again = "it is damaged: copy it again from where it came from."
    if not merges_file.is_file():
        raise JftError(f"{merges_file} not found; a vocab.json needs the merges.txt that came with it beside it.")
    vocab = read_json_object(vocab_file, "the vocabulary")
    if not all(isinstance(i, int) for i in vocab.values()):
        raise JftError(f"{vocab_file} is not a vocabulary of token ids ({{token: id}}); {again}")
    merges = []
    for number, line in enumerate(read_text(merges_file).split("\n"), start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        pair = tuple(line.split(" "))
        if len(pair) != 2:
            raise JftError(f"{merges_file}:{number} is not a merge of two tokens ('a b'); {again}")
        merges.append(pair)
    try:
        return _bytelevel_tokenizer(vocab, merges)
    except Exception as error:  # the tokenizers library raises its own exception type
        reason = str(error).strip().splitlines()[0][:160]
        raise JftError(
            f"{merges_file} does not fit {vocab_file} ({reason}); copy both again from where they came from."
        ) from None


def _continuation_pieces(texts: Iterable[str], normalizer) -> list[str]:
    """'##c' for every character c that can continue a word: the corpus's characters after
    normalization (lowercasing, accents), without whitespace, punctuation and CJK ideographs,
    which BERT's pre-tokenizer always splits off. Sorted."""
    characters: set[str] = set()
    for text in texts:
        characters.update(text)
    pieces = set()
    for character in characters:
        for c in normalizer.normalize_str(character) if normalizer else character:
            if not (c.isspace() or _is_punctuation(c) or _is_cjk(c)):
                pieces.add(f"##{c}")
    return sorted(pieces)


def _is_punctuation(c: str) -> bool:
    """BERT's definition: Unicode punctuation, and every non-alphanumeric ASCII character."""
    code = ord(c)
    return (
        33 <= code <= 47
        or 58 <= code <= 64
        or 91 <= code <= 96
        or 123 <= code <= 126
        or (unicodedata.category(c).startswith("P"))
    )


def _is_cjk(c: str) -> bool:
    code = ord(c)
    return any(
        low <= code <= high
        for low, high in (
            (0x4E00, 0x9FFF),
            (0x3400, 0x4DBF),
            (0x20000, 0x2A6DF),
            (0x2A700, 0x2B73F),
            (0x2B740, 0x2B81F),
            (0x2B820, 0x2CEAF),
            (0xF900, 0xFAFF),
            (0x2F800, 0x2FA1F),
        )
    )

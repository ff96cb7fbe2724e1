"""Tokenizers (Hugging Face `tokenizers`) and vocabulary training: BERT's WordPiece (tokenizer.json,
or vocab.txt), byte-level BPE (GPT-2's and RoBERTa's: tokenizer.json, or vocab.json with
merges.txt) and SentencePiece's Unigram (XLM-R's tokenizer.json)."""

import dataclasses
import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers.implementations import BertWordPieceTokenizer

from jft.errors import JftError
from jft.files import atomic_write, read_json_object, read_text, write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# RoBERTa's and XLM-R's names of the same five (<s> begins a text, </s> ends and separates).
ROBERTA_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: between documents, and its bos, eos and unk
ROBERTA_ORDER = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # their ids in RoBERTa's vocabulary: 0, 1, 2, 3, ...
# The vocabularies train_vocab makes: BERT's WordPiece, GPT-2's byte-level BPE, RoBERTa's (byte-level
# BPE with <s>, </s>, <pad>, <unk>, <mask>) and XLM-R's (SentencePiece Unigram, the same five).
KINDS = ("wordpiece", "bytelevel", "roberta", "unigram")
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
    """The tokenizer's model: wordpiece for a WordPiece tokenizer (BERT's), bytelevel for a BPE one
    with a ByteLevel pre-tokenizer (GPT-2's, RoBERTa's, ModernBERT's), unigram for SentencePiece's
    Unigram (XLM-R's); any other is an error."""
    if isinstance(tokenizer.model, models.WordPiece):
        return "wordpiece"
    if isinstance(tokenizer.model, models.BPE) and _has_byte_level(tokenizer):
        return "bytelevel"
    if isinstance(tokenizer.model, models.Unigram):
        return "unigram"
    pre = type(tokenizer.pre_tokenizer).__name__ if tokenizer.pre_tokenizer else "no"
    raise JftError(
        f"the tokenizer is a {type(tokenizer.model).__name__} model with {pre} pre-tokenizer; jft takes WordPiece "
        "(BERT's), byte-level BPE (GPT-2's, RoBERTa's) and Unigram (XLM-R's) tokenizers."
    )


def _has_byte_level(tokenizer: tokenizers.Tokenizer) -> bool:
    """Whether the tokenizer's pre-tokenizer is ByteLevel, alone or in a Sequence."""
    pre = json.loads(tokenizer.to_str()).get("pre_tokenizer") or {}
    return any(step.get("type") == "ByteLevel" for step in [pre, *pre.get("pretokenizers", [])])


def reads_spaces(tokenizer: tokenizers.Tokenizer) -> bool:
    """Whether the tokenizer keeps a word's leading space in the word's first token (byte-level
    BPE's Ġ: GPT-2's, RoBERTa's, ModernBERT's), which words given apart lack (as_running_text)."""
    return isinstance(tokenizer.model, models.BPE) and _has_byte_level(tokenizer)


def as_running_text(words: list[str], spaced: bool) -> list[str]:
    """Pre-split words (a tagging task's) for encode(..., is_pretokenized=True) as the tokenizer
    reads them in running text: where it keeps spaces (reads_spaces), each word but the first with
    its space back, so the ids are those of the words joined by spaces; else as they are. A word
    that has its space already keeps it (a window of a text from its middle, jft.tasks.predictor)."""
    if not spaced:
        return words
    return [word if index == 0 or word[:1].isspace() else " " + word for index, word in enumerate(words)]


def end_of_text_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The id of <|endoftext|>, which separates the documents of a next-word model."""
    i = tokenizer.token_to_id(END_OF_TEXT)
    if i is None:
        raise JftError(
            f"the vocabulary has no {END_OF_TEXT} token; a next-word model needs it to separate documents: train one "
            "with `jft vocab --kind bytelevel`."
        )
    return i


def special_tokens(tokenizer: tokenizers.Tokenizer) -> dict[str, str]:
    """The special tokens of an encoder's vocabulary by role (pad, unk, cls, sep, mask): BERT's
    [PAD] ... [MASK], or RoBERTa's <pad> ... <mask> (XLM-R's too); a vocabulary without one of
    them is an error."""
    for names in (SPECIAL_TOKENS, ROBERTA_TOKENS):
        if all(tokenizer.token_to_id(token) is not None for token in names):
            return dict(zip(("pad", "unk", "cls", "sep", "mask"), names, strict=True))
    found = [token for token in (*SPECIAL_TOKENS, *ROBERTA_TOKENS) if tokenizer.token_to_id(token) is not None]
    raise JftError(
        f"the vocabulary lacks an encoder's special tokens: it needs BERT's {list(SPECIAL_TOKENS)} or RoBERTa's "
        f"{list(ROBERTA_TOKENS)} (it has {found or 'none of them'}); train one with `jft vocab`."
    )


def special_ids(tokenizer: tokenizers.Tokenizer) -> SpecialIds:
    """The ids of an encoder's special tokens (special_tokens); a vocabulary without them is an error."""
    return SpecialIds(**{role: tokenizer.token_to_id(token) for role, token in special_tokens(tokenizer).items()})


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
    <|endoftext|> is its one special token. roberta: the same BPE with RoBERTa's five special
    tokens (ids 0-4: <s>, <pad>, </s>, <unk>, <mask>), a text framed as <s> text </s> and a pair as
    <s> a </s></s> b </s>. unigram: XLM-R's SentencePiece Unigram (NFKC, '▁' before each word) with
    the same special tokens and framing. The byte-level and Unigram kinds are always cased, as
    their models are: `lowercase` is ignored.
    """
    if kind not in KINDS:
        raise JftError(f"unknown vocabulary kind {kind!r}; choose one of {', '.join(KINDS)}.")
    if vocab_size < 1 or min_frequency < 0:
        raise JftError(
            f"the vocabulary's size must be 1 or more and its min_frequency 0 or more, got {vocab_size} and "
            f"{min_frequency} (BERT's size: 30522)."
        )
    if kind in ("bytelevel", "roberta"):
        specials = ROBERTA_ORDER if kind == "roberta" else [END_OF_TEXT]
        trained = _train_bytelevel(texts, vocab_size, min_frequency, specials)
    elif kind == "unigram":
        trained = _train_unigram(texts, vocab_size)
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


def _train_bytelevel(
    texts: Callable[[], Iterable[str]], vocab_size: int, min_frequency: int, specials: list[str]
) -> tokenizers.Tokenizer:
    """Deterministic as it is: the trainer numbers the alphabet (every byte's symbol) in character
    order, and each merge's token in the order it makes them; it breaks ties between equally
    frequent merges by those numbers (tests/test_bytelevel.py trains in two processes)."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts(), trainer)
    vocab, merges = _vocab_and_merges(tokenizer)
    if not merges:
        raise JftError(
            f"the corpus gave no tokens beyond the 256 bytes and the special tokens (vocab_size {vocab_size}, "
            f"min_frequency {min_frequency}); is it empty?"
        )
    # Rebuilt with GPT-2's components, as a vocab.json and merges.txt load (_read_bpe_files).
    return _bytelevel_tokenizer(vocab, merges)


def _train_unigram(texts: Callable[[], Iterable[str]], vocab_size: int) -> tokenizers.Tokenizer:
    """XLM-R's kind of vocabulary: SentencePiece's Unigram over NFKC-normalised text, each word
    prefixed with '▁', RoBERTa's special tokens first.

    Made the same every time: the trainer sums scores in hash order (two trainings differ in the
    last bits: rounded to 1e-9 here) and appends the corpus's characters that no piece covers in
    hash order, each 1e-4 below the one before: here in character order, with the same steps.
    """
    trained = tokenizers.Tokenizer(models.Unigram())
    trained.normalizer = normalizers.NFKC()
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=ROBERTA_ORDER, unk_token="<unk>", show_progress=False
    )
    trained.train_from_iterator(texts(), trainer)
    pieces = [(piece, score) for piece, score in json.loads(trained.to_str())["model"]["vocab"]]
    pieces = [piece for piece in pieces if piece[0] not in ROBERTA_ORDER]
    if not pieces:
        raise JftError("the corpus gave no vocabulary beyond the special tokens; is it empty?")
    lowest_word = min((score for piece, score in pieces if len(piece) > 1), default=0.0)
    characters = sorted(piece for piece, score in pieces if len(piece) == 1 and score < lowest_word)
    learned = [(piece, round(score, 9)) for piece, score in pieces if piece not in characters]
    top = max((score for piece, score in pieces if piece in characters), default=0.0)
    appended = [(c, round(top - 1e-4 * i, 9)) for i, c in enumerate(characters)]
    specials = [(token, 0.0) for token in ROBERTA_ORDER]
    ordered = sorted(learned, key=lambda p: (-p[1], p[0])) + appended
    tokenizer = tokenizers.Tokenizer(models.Unigram(specials + ordered, unk_id=ROBERTA_ORDER.index("<unk>")))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = _framing(tokenizer)
    tokenizer.add_special_tokens(_roberta_added_tokens())
    return tokenizer


def _framing(tokenizer: tokenizers.Tokenizer) -> processors.TemplateProcessing:
    """RoBERTa's framing of a text (<s> text </s>) and a pair (<s> a </s></s> b </s>), all type 0."""
    ids = [("<s>", tokenizer.token_to_id("<s>")), ("</s>", tokenizer.token_to_id("</s>"))]
    return processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=ids)


def _roberta_added_tokens() -> list[tokenizers.AddedToken]:
    """RoBERTa's special tokens as its tokenizer.json declares them: <mask> takes the space before it,
    so that "a <mask>" encodes as "a" and the mask (fill-mask's prompts)."""
    return [
        tokenizers.AddedToken(token, special=True, normalized=False, lstrip=token == "<mask>")
        for token in ROBERTA_ORDER
    ]


def save_tokenizer(tokenizer: tokenizers.Tokenizer, out_dir: str | Path) -> Path:
    """Writes tokenizer.json into out_dir, and the vocabulary files of its kind: vocab.txt (one
    token a line, in id order) for WordPiece; vocab.json and merges.txt, as GPT-2 ships them, for
    byte-level BPE."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = tokenizer_kind(tokenizer)
    atomic_write(out_dir / "tokenizer.json", lambda path: tokenizer.save(str(path)))
    if kind == "unigram":
        return out_dir  # XLM-R's vocabulary is its tokenizer.json
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
    its merges, <|endoftext|> special when the vocabulary has it; with RoBERTa's special tokens,
    RoBERTa's (its framing of texts and pairs)."""
    model = models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if all(token in vocab for token in ROBERTA_ORDER):
        tokenizer.post_processor = processors.RobertaProcessing(
            sep=("</s>", vocab["</s>"]), cls=("<s>", vocab["<s>"]), trim_offsets=True, add_prefix_space=False
        )
        tokenizer.add_special_tokens(_roberta_added_tokens())
        return tokenizer
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
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

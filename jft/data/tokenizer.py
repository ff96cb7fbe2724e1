"""WordPiece tokenizers from vocab.txt or tokenizer.json (Hugging Face `tokenizers`), and vocab training."""

import dataclasses
import hashlib
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

import tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

from jft.errors import JftError
from jft.files import atomic_write, write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def load_tokenizer(path: str | Path, *, lowercase: bool = True) -> tokenizers.Tokenizer:
    """A fast WordPiece tokenizer from tokenizer.json, vocab.txt, or a directory holding either."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("tokenizer.json", "vocab.txt") if (path / name).is_file()]
        if not found:
            raise JftError(f"{path} holds no tokenizer.json or vocab.txt; train one with `jft vocab`.")
        path = found[0]
    if not path.is_file():
        raise JftError(
            f"vocabulary not found: {path}; give a vocab.txt or tokenizer.json, or train one with `jft vocab`."
        )
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
) -> tokenizers.Tokenizer:
    """Trains a WordPiece vocabulary, the same for the same corpus and settings; writes vocab.txt
    and tokenizer.json into out_dir when given.

    texts: returns the corpus lines; called twice (once for the characters, once to train).
    The `tokenizers` trainer numbers the word-continuation pieces ('##x') in hash order and breaks
    ties between equally frequent merges by those numbers, so on its own two trainings on one
    corpus differ (huggingface/tokenizers#1794). Declaring every '##x' up front, in sorted order,
    fixes their numbers and with them every tie.
    """
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
    trained = BertWordPieceTokenizer({token: i for i, (token, _) in enumerate(vocab)}, lowercase=lowercase)._tokenizer
    if out_dir is not None:
        save_tokenizer(trained, out_dir)
    return trained


def save_tokenizer(tokenizer: tokenizers.Tokenizer, out_dir: str | Path) -> Path:
    """Writes tokenizer.json and vocab.txt (one token a line, in id order) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "tokenizer.json", lambda path: tokenizer.save(str(path)))
    tokens = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    write_text(out_dir / "vocab.txt", "".join(f"{token}\n" for token, _ in tokens))
    return out_dir


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

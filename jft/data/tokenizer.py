"""WordPiece tokenizers from vocab.txt or tokenizer.json (Hugging Face `tokenizers`), and vocab training."""

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

from jft.errors import JftError

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
        return tokenizers.Tokenizer.from_file(str(path))
    vocab = tokenizers.models.WordPiece.read_file(str(path))
    return BertWordPieceTokenizer(vocab, lowercase=lowercase)._tokenizer


def special_ids(tokenizer: tokenizers.Tokenizer) -> SpecialIds:
    """The ids of BERT's special tokens; a vocabulary without one of them is an error."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, i in ids.items() if i is None]
    if missing:
        raise JftError(f"the vocabulary lacks the special tokens {missing}; BERT needs {list(SPECIAL_TOKENS)}.")
    return SpecialIds(*(ids[token] for token in SPECIAL_TOKENS))


def train_vocab(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    vocab_size: int = 30522,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> Path:
    """Trains a WordPiece vocabulary; writes vocab.txt and tokenizer.json into out_dir.

    The `tokenizers` trainer breaks ties between equally frequent merges by hash order, so two
    trainings on one corpus can differ in a few rare tokens: keep the files a run used (`jft
    prepare` copies tokenizer.json next to its rows).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
    tokenizer.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise JftError("the corpus gave no vocabulary beyond the special tokens; is it empty?")
    tokenizer.save_model(str(out_dir))
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return out_dir

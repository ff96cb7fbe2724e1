"""Do exported tokenizers give jft's token ids in transformers 5? Run it where transformers 5 is
installed (jft's test extra pins 4.57, for its Flax reference):

    python -m venv /tmp/tf5 && /tmp/tf5/bin/pip install "transformers==5.*"
    jft export --workdir runs/task --out /tmp/export
    /tmp/tf5/bin/python benchmarks/transformers5_check.py /tmp/export [more exports ...]

For each directory it compares, on 200 varied sentences, the ids of transformers'
AutoTokenizer, of the tokenizer.json jft wrote, and of `transformers5_tokenizer` (the rebuild
tests/test_export.py checks in CI), and exits 1 on any difference. It needs only `tokenizers`
and `transformers`, not jft.

An image model's export (a directory with preprocessor_config.json) is checked against what
`jft predict` wrote for the same images: AutoImageProcessor and AutoModelForImageClassification
(PyTorch) must give its probabilities within 1e-5.

    jft predict --workdir runs/task --input images/ --output preds.jsonl
    /tmp/tf5/bin/python benchmarks/transformers5_check.py --predictions preds.jsonl /tmp/export
"""

import json
import random
import sys
from pathlib import Path

import tokenizers
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece


def varied_sentences(count: int, seed: int = 0) -> list[str]:
    """Sentences that exercise a BERT tokenizer: casing, accents, CJK, emoji, punctuation, digits,
    very long words, odd whitespace, control characters, literal special tokens, the empty string."""
    pieces = [
        "The Harbor",
        "sailor",
        "SEES",
        "the moon",
        "café",
        "naïve",
        "Résumé",
        "ÅNGSTRÖM",
        "über",
        "façade",
        "日本語",
        "中文字",
        "한국어",
        "😀",
        "🚀🚀",
        "👩‍💻",
        "don't",
        "state-of-the-art",
        "e-mail:",
        "3.14159",
        "1,000,000",
        "(parenthesis)",
        "[MASK]",
        "[CLS]",
        "#hashtag",
        "@user",
        "http://example.com/a?b=c",
        "x" * 120,
        "supercalifragilisticexpialidocious",
        "\t",
        "  ",
        "\u00a0",
        "\u200b",
        "Ω≈ç√∫",
        "¿Qué?",
        "naïve-café",
        "ﬁ",
    ]
    rng = random.Random(seed)
    sentences = ["", " ", "a"]
    while len(sentences) < count:
        sentences.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return sentences[:count]


def transformers5_tokenizer(directory: str | Path) -> tokenizers.Tokenizer:
    """The tokenizer transformers 5's BertTokenizer builds for an exported directory: a WordPiece
    model on the vocabulary of tokenizer.json, BERT's normalizer with the casing, accents and CJK
    settings of tokenizer_config.json, BERT's pre-tokenizer, [CLS] A [SEP] (B [SEP]) around the
    text, and the special tokens as added tokens (transformers 5.23, models/bert/tokenization_bert.py)."""
    directory = Path(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    vocab = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    cls, sep = config.get("cls_token", "[CLS]"), config.get("sep_token", "[SEP]")
    tokenizer = tokenizers.Tokenizer(WordPiece(vocab, unk_token=config.get("unk_token", "[UNK]")))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    tokenizer.add_special_tokens([tokenizers.AddedToken(config[name], special=True) for name in names])
    return tokenizer


def image_check(directory: str, predictions: str) -> bool:
    """Whether transformers' processor and PyTorch model of an image export give, for every image
    of a `jft predict` output, the probabilities jft gave (within 1e-5); prints the largest gap."""
    import torch
    import transformers
    from PIL import Image

    rows = [json.loads(line) for line in Path(predictions).read_text().splitlines()]
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    model = transformers.AutoModelForImageClassification.from_pretrained(directory).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    with torch.no_grad():
        pixels = processor(images=[Image.open(row["path"]) for row in rows], return_tensors="pt")["pixel_values"]
        theirs = torch.softmax(model(pixel_values=pixels).logits, -1).numpy()
    gap = max(
        abs(float(theirs[i, j]) - row["probabilities"][label])
        for i, row in enumerate(rows)
        for j, label in enumerate(labels)
    )
    print(
        f"{directory}: transformers {transformers.__version__} {type(processor).__name__} and "
        f"{type(model).__name__}: {len(rows)} images, largest probability gap {gap:.1e}"
    )
    return gap <= 1e-5


def main(arguments: list[str]) -> int:
    import transformers

    if arguments[:1] == ["--predictions"]:
        predictions, directories = arguments[1], arguments[2:]
        return 0 if all(image_check(directory, predictions) for directory in directories) else 1
    failed = 0
    for directory in arguments:
        auto = transformers.AutoTokenizer.from_pretrained(directory)
        written = tokenizers.Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        rebuilt = transformers5_tokenizer(directory)
        differ = [
            s
            for s in varied_sentences(200)
            if not auto(s)["input_ids"] == written.encode(s).ids == rebuilt.encode(s).ids
        ]
        print(
            f"{directory}: transformers {transformers.__version__} {type(auto).__name__}, {len(auto)} tokens; "
            f"{200 - len(differ)} of 200 sentences give the same ids three ways"
        )
        for sentence in differ[:5]:
            print(f"  differs: {sentence!r}")
        failed += bool(differ)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

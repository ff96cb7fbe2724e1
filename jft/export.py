"""Hugging Face out: a jft run directory as a directory that transformers loads, tokenizer included.

    config.json              architectures (the class AutoModelFor... picks), id2label/label2id and
                             problem_type for a fine-tuned classifier
    model.safetensors        and/or flax_model.msgpack (--format safetensors | msgpack | both)
    tokenizer.json           the run's tokenizer, as jft uses it
    vocab.txt                the same vocabulary, one token a line
    tokenizer_config.json    BertTokenizer, its casing and special tokens, model_max_length
    special_tokens_map.json

A pretraining run exports its newest good checkpoint with its pretraining heads (for BERT, the
masked-LM decoder tied to the word embeddings, so `pipeline("fill-mask")` works, and the
next-sentence head when it has one). A fine-tuning run exports its best model with its task
head. The family names transformers' classes (jft.models).
"""

import json
from pathlib import Path

import tokenizers

from jft.data.tokenizer import SPECIAL_TOKENS, save_tokenizer, special_ids
from jft.errors import JftError
from jft.files import write_json
from jft.models import hf
from jft.train import rundir

# transformers' names of the loss of each jft task, for config.json's problem_type
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression"}


def is_run(path: str | Path) -> bool:
    """Whether path is a jft run directory (else, for jft's commands, a Hugging Face one)."""
    return (Path(path) / rundir.RUN_FILE).is_file()


def export(
    workdir: str | Path, out: str | Path, format: str = "safetensors", max_shard_size: int | str | None = None
) -> Path:
    """Writes the model of a jft run directory, and its tokenizer, as a Hugging Face directory."""
    workdir = Path(workdir).absolute()
    run = rundir.read_run(workdir) if workdir.is_dir() else None
    rundir.require_stage(workdir, run, None, "give the directory of a jft run")
    source = rundir.open_init(workdir, role="")  # the newest good checkpoint, or the best model; finite weights
    task = source.task or {}
    out = hf.save(
        out,
        source.model,
        source.params,
        format=format,
        max_shard_size=max_shard_size,
        labels=task.get("labels") or None,
        problem_type=PROBLEM_TYPES.get(task.get("kind")),
    )
    save_hf_tokenizer(source.tokenizer, out, source.model.max_position_embeddings)
    return out


def save_hf_tokenizer(tokenizer: tokenizers.Tokenizer, out: Path, max_length: int) -> None:
    """tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json, so that
    transformers' AutoTokenizer gives the token ids jft gives."""
    special_ids(tokenizer)  # BERT's special tokens must be there
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        raise JftError(f"the run's tokenizer is not BERT's WordPiece (normalizer {normalizer.get('type')}).")
    save_tokenizer(tokenizer, out)
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS, strict=True))
    write_json(out / "special_tokens_map.json", names)
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": normalizer["lowercase"],
        "strip_accents": normalizer["strip_accents"],
        "tokenize_chinese_chars": normalizer["handle_chinese_chars"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        **names,
    }
    write_json(out / "tokenizer_config.json", config)

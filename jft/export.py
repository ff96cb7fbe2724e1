"""Hugging Face out: a jft run directory as a directory that transformers loads, tokenizer included.

    config.json              architectures (the class AutoModelFor... picks), id2label/label2id and
                             problem_type for a fine-tuned classifier
    model.safetensors        and/or flax_model.msgpack (--format safetensors | msgpack | both)
    tokenizer.json           the run's tokenizer, as jft uses it
    vocab.txt                the same vocabulary, one token a line (WordPiece)
    vocab.json, merges.txt   the same vocabulary and its merges (byte-level BPE, GPT-2's files)
    tokenizer_config.json    BertTokenizer, its casing and special tokens (GPT2Tokenizer,
                             <|endoftext|>; PreTrainedTokenizerFast, RoBERTa's or XLM-R's
                             special tokens), model_max_length
    special_tokens_map.json
    preprocessor_config.json an image model's processor instead of a tokenizer: resize to its side,
                             scale, normalise (AutoImageProcessor)

A pretraining run exports its newest good checkpoint with its pretraining heads (for BERT, the
masked-LM decoder tied to the word embeddings, so `pipeline("fill-mask")` works, and the
next-sentence head when it has one). A fine-tuning run exports its best model with its task
head. The family names transformers' classes (jft.models).
"""

import json
from pathlib import Path

import tokenizers

from jft.data.tokenizer import (
    END_OF_TEXT,
    SPECIAL_TOKENS,
    end_of_text_id,
    save_tokenizer,
    special_ids,
    special_tokens,
    tokenizer_kind,
)
from jft.errors import JftError
from jft.files import write_json
from jft.models import Head, hf
from jft.train import rundir

# transformers' names of the loss of each jft task, for config.json's problem_type
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression"}


def is_run(path: str | Path) -> bool:
    """Whether path is a jft run directory (else, for jft's commands, a Hugging Face one)."""
    return (Path(path) / rundir.RUN_FILE).is_file()


def export(
    workdir: str | Path,
    out: str | Path,
    format: str = "safetensors",
    max_shard_size: int | str | None = None,
    step: int | None = None,
) -> str:
    """Writes the model of a jft run directory, and its tokenizer (or image processor), as a Hugging
    Face directory. Returns what it wrote beside the weights and what loads it, in words.
    step: the model of that step (in best/ or checkpoints/) instead of the newest or best one."""
    workdir = Path(workdir).absolute()
    run = rundir.read_run(workdir) if workdir.is_dir() else None
    rundir.require_stage(workdir, run, None, "give the directory of a jft run")
    # the newest good checkpoint, or the best model (or the model of step); finite weights
    source = rundir.open_init(workdir, role="", step=step)
    task = source.task or run.get("task") or {}  # an image pretraining run's classes are its run's task
    choices = task.get("kind") == "multiple_choice"  # one score a candidate: its labels are the candidates'
    head = Head("multiple_choice", 1) if choices else source.family.head_of(source.params)
    out = hf.save(
        out,
        source.model,
        source.params,
        format=format,
        max_shard_size=max_shard_size,
        labels=None if choices else task.get("labels") or None,
        problem_type=PROBLEM_TYPES.get(task.get("kind")),
        head=head,
    )
    if source.family.modality == "image":
        hf.save_image_processor(source.model, out)
        beside = "with its image processor"
    else:
        save_hf_tokenizer(source.tokenizer, out, source.model.max_length, "token_type_ids" in source.family.inputs)
        beside = "with the tokenizer"
    step = f"the model of step {source.step}, " if source.step is not None else ""
    return f"{step}{beside}; {source.family.how_to_load(source.model, head)}"


def save_hf_tokenizer(tokenizer: tokenizers.Tokenizer, out: Path, max_length: int, token_types: bool = True) -> None:
    """The tokenizer's files (save_tokenizer), tokenizer_config.json and special_tokens_map.json, so
    that transformers' AutoTokenizer (4.57 and 5) gives the token ids jft gives: a BertTokenizer for
    WordPiece, a GPT2Tokenizer for GPT-2's byte-level BPE, and for RoBERTa's, XLM-R's (or any other
    encoder's) a PreTrainedTokenizerFast, which is tokenizer.json as it is. It returns
    token_type_ids only where the model takes them (token_types: BERT's): ModernBERT's
    forward refuses them, and GPT-2's would add their token embeddings to the input's."""
    kind = tokenizer_kind(tokenizer)
    if kind == "wordpiece":
        names, config = _bert_config(tokenizer)
    elif kind == "bytelevel" and tokenizer.token_to_id(END_OF_TEXT) is not None:
        names, config = _gpt2_config(tokenizer)
    else:
        names, config = _encoder_config(tokenizer)
    save_tokenizer(tokenizer, out)
    write_json(out / "special_tokens_map.json", names)
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if token_types else ["input_ids", "attention_mask"]
    config.update(clean_up_tokenization_spaces=False, model_max_length=max_length, model_input_names=inputs, **names)
    write_json(out / "tokenizer_config.json", config)


def _bert_config(tokenizer: tokenizers.Tokenizer) -> tuple[dict, dict]:
    """The special tokens and the tokenizer_config.json settings of BERT's WordPiece tokenizer."""
    special_ids(tokenizer)  # BERT's special tokens must be there
    normalizer = json.loads(tokenizer.to_str()).get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        raise JftError(f"the run's tokenizer is not BERT's WordPiece (normalizer {normalizer.get('type')}).")
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS, strict=True))
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": normalizer["lowercase"],
        "strip_accents": normalizer["strip_accents"],
        "tokenize_chinese_chars": normalizer["handle_chinese_chars"],
    }
    return names, config


def _gpt2_config(tokenizer: tokenizers.Tokenizer) -> tuple[dict, dict]:
    """The special tokens and the tokenizer_config.json settings of GPT-2's byte-level BPE tokenizer.
    transformers 5 builds a GPT2Tokenizer from the vocabulary and merges of tokenizer.json, with no
    normalizer, a ByteLevel pre-tokenizer (GPT-2's regex, add_prefix_space of the config) and
    <|endoftext|> as its bos, eos and unk: the tokenizer must be that one. It pads with
    <|endoftext|> too, as config.json's pad_token_id says (batches for the sequence classifier)."""
    end_of_text_id(tokenizer)
    pre = tokenizer.pre_tokenizer
    if tokenizer.normalizer is not None or not pre.use_regex:
        raise JftError(
            "the run's tokenizer is not GPT-2's byte-level BPE (it has a normalizer, or a ByteLevel pre-tokenizer "
            "without GPT-2's word splitting); transformers' GPT2Tokenizer would give other token ids."
        )
    names = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT, "pad_token": END_OF_TEXT}
    return names, {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": pre.add_prefix_space}


def _encoder_config(tokenizer: tokenizers.Tokenizer) -> tuple[dict, dict]:
    """The special tokens (by role, RoBERTa's or BERT's names) and tokenizer_config.json of an
    encoder's tokenizer.json read as it is: <s> (or [CLS]) begins a text and </s> (or [SEP]) ends it."""
    roles = special_tokens(tokenizer)
    names = {f"{role}_token": token for role, token in roles.items()}
    names |= {"bos_token": roles["cls"], "eos_token": roles["sep"]}
    return names, {"tokenizer_class": "PreTrainedTokenizerFast"}

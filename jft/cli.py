"""The `jft` command: parses arguments and dispatches to one function per subcommand.

A subcommand is a `Command`: a name, a one-line help, a function that adds its arguments, and a
function that runs it. Commands that take a run config get --config FILE[:ARG] and any number of
--config.KEY=VALUE overrides, parsed and validated in one place (jft.config).
"""

import argparse
import collections
import contextlib
import dataclasses
import glob
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ml_collections import ConfigDict

from jft import __version__
from jft.errors import JftError, RunStopped
from jft.outputs import output_directory, output_file


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, ConfigDict | None], None]
    takes_config: bool = False
    # For a command whose --config is optional: the config it runs with when none is given.
    default_config: Callable[[], ConfigDict] | None = None


def _init_arguments(parser):
    parser.add_argument("--out", required=True, help="directory to write config.json and the weights to")
    _overwrite_argument(parser)


HF_MODEL = "a Hugging Face model"  # what export, convert and init write (jft.outputs)


def _overwrite_argument(parser):
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output that holds something else (whole, once the new one is written)",
    )


def _run_init(args, config):
    import jax

    from jft.models import Head, config_of, hf

    family, model = config_of(config.model)
    heads = {"pretraining": Head("pretraining", nsp=True), "mlm": Head("pretraining"), "encoder": Head("encoder")}
    if config.heads not in heads:
        raise JftError(f"heads '{config.heads}' is not one of {', '.join(heads)}.")
    params = family.init(model, heads[config.heads], jax.random.key(config.seed))
    with output_directory(args.out, HF_MODEL, "jft init", overwrite=args.overwrite) as staging:
        hf.save(staging, model, params, format=config.format)
    print(f"wrote a randomly initialised {family.name} ({config.heads}, {_count(params):,} parameters) to {args.out}")


FORMATS = ("safetensors", "msgpack", "both")


def _convert_arguments(parser):
    parser.add_argument("src", help="a jft run directory, or a Hugging Face model directory (or weights file)")
    parser.add_argument("dst", help="directory to write")
    parser.add_argument("--format", choices=FORMATS, default="safetensors")
    parser.add_argument("--max-shard-size", default=None, help="split the weights into shards, e.g. 2GB")
    _overwrite_argument(parser)


def _run_convert(args, _):
    from jft import export
    from jft.models import hf

    written = output_directory(
        args.dst, HF_MODEL, os.path.realpath(args.src), inputs=[args.src], overwrite=args.overwrite, what="dst"
    )
    with written as staging:
        if export.is_run(args.src):
            what = export.export(args.src, staging, format=args.format, max_shard_size=args.max_shard_size)
        else:
            config, params = hf.load(args.src)
            hf.save(staging, config, params, format=args.format, max_shard_size=args.max_shard_size)
            what = f"{_count(params):,} parameters"
    print(f"wrote {args.dst} ({args.format}, {what})")


def _inspect_arguments(parser):
    parser.add_argument("path", help="a jft run directory, or a Hugging Face model directory (or weights file)")


def _run_inspect(args, _):
    import dataclasses as dc

    from jft.params import flatten
    from jft.train import rundir

    source = rundir.open_init(args.path, role="")
    config, params, family, what = source.model, source.params, source.family, source.describe()
    architecture = family.architecture(config, family.head_of(params))
    print(f"{what}: {architecture} ({family.name}), {_count(params):,} parameters")
    for name, value in dc.asdict(config).items():
        print(f"  {name} = {value}")
    groups: dict[str, int] = {}
    for path, array in flatten(params).items():
        group = "/".join(path.split("/")[:2])
        groups[group] = groups.get(group, 0) + array.size
    for group, size in groups.items():
        print(f"  {group:<24} {size:>14,}")


def _shards_arguments(parser):
    parser.add_argument("rows", help="a `jft prepare` directory")
    parser.add_argument("--streams", type=int, required=True, help="the run's data.streams")
    parser.add_argument("--process", type=int, required=True, help="the process (host) index: 0 .. processes - 1")
    parser.add_argument("--processes", type=int, default=0, help="processes of the run (default: one a stream)")


def _run_shards(args, _):
    from jft.data.loader import process_files

    # the same errors as the run: streams the training rows cannot fill, files missing or cut short
    print("\n".join(process_files(args.rows, args.streams, args.process, args.processes or args.streams)))


def _vocab_arguments(parser):
    parser.add_argument(
        "corpus", nargs="+", help="text or JSONL files (or globs, quoted: 'books/*.txt'), or tfds:NAME[:SPLIT]"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="directory for tokenizer.json and vocab.txt (bytelevel, roberta: vocab.json, merges.txt; unigram: only "
        "tokenizer.json)",
    )
    _overwrite_argument(parser)
    parser.add_argument(
        "--kind",
        choices=("wordpiece", "bytelevel", "roberta", "unigram"),  # jft.data.tokenizer.KINDS
        default="wordpiece",
        help="wordpiece: BERT's; bytelevel: GPT-2's byte-level BPE, always cased, <|endoftext|> its special token; "
        "roberta: byte-level BPE with <s>, </s>, <pad>, <unk>, <mask>; unigram: XLM-R's SentencePiece Unigram",
    )
    parser.add_argument("--vocab-size", type=int, default=30522, help="tokens in the vocabulary")
    parser.add_argument("--min-frequency", type=int, default=2, help="merges seen fewer times are not made")
    parser.add_argument("--cased", action="store_true", help="keep case (default: lowercase; wordpiece only)")
    parser.add_argument("--text-field", default="text", help="the text field of JSONL and TFDS records")
    parser.add_argument("--tfds-data-dir", default=None, help="where TFDS datasets are prepared")


def _run_vocab(args, _):
    from jft.data.corpus import read_documents
    from jft.data.tokenizer import train_vocab

    def lines():
        documents = read_documents(args.corpus, text_field=args.text_field, tfds_data_dir=args.tfds_data_dir)
        return (line for doc in documents for line in doc)

    inputs = _corpus_files(args.corpus)
    corpus = " ".join(args.corpus)
    with output_directory(args.out, "a vocabulary", corpus, inputs=inputs, overwrite=args.overwrite) as staging:
        tokenizer = train_vocab(
            lines,
            staging,
            vocab_size=args.vocab_size,
            lowercase=not args.cased,
            min_frequency=args.min_frequency,
            kind=args.kind,
        )
    out = Path(args.out)
    names = {"wordpiece": ("vocab.txt",), "unigram": ()}.get(args.kind, ("vocab.json", "merges.txt"))
    files = "".join(f"{out / name}, " for name in names[:-1]) + (f"{out / names[-1]} and " if names else "")
    print(f"wrote {files}{out / 'tokenizer.json'} ({tokenizer.get_vocab_size():,} tokens)")


def _corpus_files(corpus: list[str]) -> list[str]:
    """The files a corpus argument names (globs expanded), the inputs an output must not touch."""
    from jft.data.corpus import sources_of

    return [source for source in sources_of(corpus) if Path(source).exists()]


def _prepare_arguments(parser):
    parser.add_argument(
        "corpus",
        nargs="+",
        help="text or JSONL files (or globs, quoted: 'books/*.txt'), or tfds:NAME[:SPLIT]; with --side, one image "
        "source: a folder a class, an .npz, or a TFDS image dataset",
    )
    parser.add_argument("--vocab", help="text: vocab.txt, tokenizer.json, or a directory with one")
    parser.add_argument("--out", required=True, help="a new or empty directory for the row shards (or images)")
    _overwrite_argument(parser)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens a row")
    parser.add_argument(
        "--mode",
        choices=("pairs", "packed", "causal"),
        default="pairs",
        help="pairs: sentence pairs with next-sentence labels; packed: full rows, no NSP (both BERT's); "
        "causal: documents one after another, <|endoftext|> between (next-word models: GPT-2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the rows and the pairs drawn: the same for a seed")
    parser.add_argument("--eval-fraction", type=float, default=0.01, help="documents held out for evaluation")
    parser.add_argument(
        "--short-seq-prob", type=float, default=0.1, help="pairs: rows drawn shorter than seq-len, as in BERT's"
    )
    parser.add_argument("--rows-per-shard", type=int, default=65536, help="rows a shard at most")
    parser.add_argument("--workers", type=int, default=0, help="processes that prepare windows (0: one a core)")
    parser.add_argument(
        "--window-documents",
        type=int,
        default=10000,
        help="documents a window: what a worker holds at once; next-sentence negatives come from its window",
    )
    parser.add_argument("--cased", action="store_true", help="keep case when reading vocab.txt")
    parser.add_argument("--text-field", default="text", help="the text field of JSONL and TFDS records")
    parser.add_argument("--tfds-data-dir", default=None, help="where TFDS datasets are prepared")
    images = parser.add_argument_group("images (with --side; --workers: decoding threads)")
    images.add_argument("--side", type=int, help="decode and resize images to side × side: the model's image_size")
    images.add_argument("--window-images", type=int, default=1024, help="images decoded at once (resumed a window)")
    images.add_argument("--skip-bad-images", action="store_true", help="leave out files PIL cannot read")


def _run_prepare(args, _):
    from jft.data.images import is_image_source
    from jft.data.prepare import is_prepared, none_held_out, prepare, tokens_left_out
    from jft.outputs import check, check_inputs

    if args.side is not None or is_image_source(args.corpus[0]):
        return _prepare_images(args)
    if args.vocab is None:
        raise JftError("give --vocab (vocab.txt, tokenizer.json or a directory with one) to tokenize text.")
    out = Path(args.out)
    if is_prepared(out):  # its own earlier output, a run's rows too: replaced whole, once the new rows are made
        inside = Path(os.path.realpath(args.vocab)).is_relative_to(os.path.realpath(out))
        check_inputs(out, [*_corpus_files(args.corpus), *([] if inside else [args.vocab])], "--out", "rows")
    else:
        check(out, [*_corpus_files(args.corpus), args.vocab], "--out", "rows")
    meta = prepare(
        args.corpus,
        args.vocab,
        args.out,
        seq_len=args.seq_len,
        mode=args.mode,
        seed=args.seed,
        eval_fraction=args.eval_fraction,
        short_seq_prob=args.short_seq_prob,
        rows_per_shard=args.rows_per_shard,
        window_documents=args.window_documents,
        workers=args.workers,
        text_field=args.text_field,
        tfds_data_dir=args.tfds_data_dir,
        lowercase=not args.cased,
        overwrite=args.overwrite,
    )
    rows = ", ".join(f"{split} {info['rows']:,}" for split, info in meta["splits"].items())
    print(
        f"wrote {args.out}: {meta['documents']:,} documents, {meta['tokens']:,} tokens, rows: {rows}; "
        f"{meta['tokens'] / meta['seconds']:,.0f} tokens/s"
    )
    for warning in filter(None, (none_held_out(meta), tokens_left_out(meta))):
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def _prepare_images(args):
    from jft.data.image_prepare import prepare_images
    from jft.outputs import check

    if args.side is None:
        raise JftError(
            f"{args.corpus[0]} holds images: give --side, the model's image_size (e.g. --side 224 for ResNet-50), "
            "or text files and --vocab to tokenize text."
        )
    if len(args.corpus) > 1 or args.vocab:
        raise JftError("images: give one source (a folder a class, an .npz or tfds:NAME:SPLIT) and no --vocab.")
    source = args.corpus[0]
    check(args.out, [] if source.startswith("tfds:") else [source], "--out", "prepared")
    meta = prepare_images(
        source,
        args.out,
        side=args.side,
        workers=args.workers,
        window_images=args.window_images,
        skip_bad=args.skip_bad_images,
        tfds_data_dir=args.tfds_data_dir,
        overwrite=args.overwrite,
    )
    skipped = f", {len(meta['skipped'])} files left out" if meta["skipped"] else ""
    print(
        f"wrote {args.out}: {meta['images']:,} images of {args.side}×{args.side}, {len(meta['classes'])} classes"
        f"{skipped}; {meta['images'] / max(meta['seconds'], 1e-9):,.0f} images/s"
    )


def _pretrain_arguments(parser):
    parser.add_argument("--workdir", required=True, help="the run directory: its files, checkpoints and metrics")


def _run_pretrain(args, config):
    from jft import finetune, pretrain

    if pretrain.is_supervised(config):  # an image model, on labeled images
        _print_finished(finetune.train_and_evaluate(config, args.workdir, stage="pretraining"))
    else:
        _print_finished(pretrain.train_and_evaluate(config, args.workdir))


def _finetune_arguments(parser):
    parser.add_argument(
        "--workdir", required=True, help="the run directory: its files, checkpoints, best model and metrics"
    )


def _run_finetune(args, config):
    from jft.finetune import train_and_evaluate

    _print_finished(train_and_evaluate(config, args.workdir))


def _run_sweep(args, config):
    from jft.sweep import run_sweep

    best = run_sweep(config, args.workdir)
    _print_finished(best["run"])


def _print_finished(metrics: dict) -> None:
    shown = {
        k: round(v, 4)
        for k, v in metrics.items()
        if k.startswith(("eval_", "test_")) or k in ("train_loss", "train_task_loss", "train_l2_penalty")
    }
    print(f"finished at step {metrics['step']}: {shown}")


def _config_arguments(parser):
    parser.add_argument(
        "source",
        nargs="?",
        default="",
        help="a run directory (its run.json), a config file FILE[:ARG], or a packaged config (pretrain/tiny); "
        "none: list the packaged configs",
    )
    parser.add_argument("--json", action="store_true", help="print a config file's values as JSON")
    parser.add_argument(
        "--reference", action="store_true", help="print every command's keys, defaults and meanings (docs/config.md)"
    )


def _run_config(args, overrides):
    from jft import defaults
    from jft.config import describe, find_config, load_config, packaged_configs
    from jft.train import rundir

    if args.reference:
        print(defaults.reference(), end="")
        return
    if not args.source:
        for name in packaged_configs():
            doc = (find_config(name).read_text().split('"""')[1:2] or [""])[0].strip().splitlines()
            print(f"{name:<20} {doc[0] if doc else ''}")
        return
    path = Path(args.source)
    if path.is_dir():
        if overrides:
            raise JftError(f"{path} is a run directory; its config is fixed, so --config.KEY=VALUE does not apply.")
        run = rundir.read_run(path.absolute())
        rundir.require_stage(path, run, None, "give a run directory or a config file")
        shown = {"stage": run["stage"], "config": run["config"], "family": run.get("family", "bert")}
        print(json.dumps({**shown, "model": run["model"]}, indent=2))
        return
    config = defaults.overridden(load_config(args.source), overrides)
    stage = defaults.stage_of(config)
    family = config.model.get("family") or "bert" if "model" in config else "bert"
    described = describe(config, defaults.defaults_of(stage), defaults.meanings(stage, family))
    print(json.dumps(config.to_dict(), indent=2) if args.json else described)


def _workdir_argument(parser):
    parser.add_argument("--workdir", required=True, help="a `jft finetune` run directory")


def _finetuned(args, config):
    from jft.tasks.predictor import FinetunedModel

    columns = {"text": config.data.text_column, "text_pair": config.data.text_pair_column}
    columns["label"] = config.data.label_column
    return FinetunedModel(
        args.workdir, step=config.step or None, columns=columns, skip_bad_images=config.data.skip_bad_images
    )


def _eval_arguments(parser):
    _workdir_argument(parser)
    parser.add_argument("--data", required=True, help="CSV/TSV/JSONL file, with the run's columns or --config.data.*")
    parser.add_argument(
        "--out", default="", help="also write report.json, report.txt and confusion.png (classification) here"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON, not as a table")
    _overwrite_argument(parser)


def _run_eval(args, config):
    from jft import plots
    from jft.files import write_json, write_text
    from jft.tasks.report import format_report

    with contextlib.ExitStack() as written:
        if args.out:  # checked before the evaluation, written after it
            inputs = [args.workdir, args.data]
            source = f"{os.path.realpath(args.workdir)} on {os.path.realpath(args.data)}"
            report = output_directory(args.out, "an evaluation report", source, inputs=inputs, overwrite=args.overwrite)
            out = written.enter_context(report)
        model = _finetuned(args, config)
        report = model.report(args.data, batch_size=config.batch_size)
        print(f"evaluated {report['model']} on {report['records']:,} records of {args.data}", file=sys.stderr)
        table = format_report(report)
        print(json.dumps(report, indent=2) if args.json else table.rstrip("\n"))
        if args.out:
            write_json(out / "report.json", report)
            write_text(out / "report.txt", table)
            if "confusion_matrix" in report:
                plots.confusion(report, out / "confusion.png")
    if args.out:
        files = "report.json, report.txt" + (" and confusion.png" if "confusion_matrix" in report else "")
        print(f"wrote {files} to {args.out}", file=sys.stderr)


def _predict_arguments(parser):
    _workdir_argument(parser)
    parser.add_argument(
        "--input",
        required=True,
        help="CSV/TSV/JSONL file with the text column(s), SQuAD's .json; an image model's: a folder of images, an .npz",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="JSONL file to write, one line a record (question answering: JSON {id: answer}, SQuAD's format)",
    )
    parser.add_argument(
        "--nbest", default="", help="question answering: also write each question's n-best answers here"
    )
    _overwrite_argument(parser)


def _run_predict(args, config):
    from jft.files import finite_or_null
    from jft.outputs import owns_file, write_owned_file
    from jft.tasks.predictor import answers_text
    from jft.train import rundir

    workdir = Path(args.workdir)
    run = rundir.read_run(workdir) if workdir.is_dir() else None
    rundir.require_stage(workdir, run, "finetuning", "give the --workdir of a `jft finetune` run")
    answers = run["task"]["kind"] == "question_answering"
    if args.nbest and not answers:
        raise JftError(
            f"--nbest writes each question's candidate answers; {args.workdir} is no question answering run."
        )
    inputs, source = [args.workdir, args.input], str(Path(args.workdir).resolve())
    kind = "answers" if answers else "predictions"

    def ours(kind):  # what an earlier `jft predict` of this model wrote, unchanged since
        return lambda file: owns_file(file, kind, source)

    example = "predictions.json" if answers else "predictions.jsonl"
    output = output_file(args.output, inputs=inputs, overwrite=args.overwrite, ours=ours(kind), example=example)
    if Path(args.output).suffix.lower() in (".csv", ".tsv"):
        written = "JSON ({id: answer}, SQuAD's)" if answers else "JSON Lines (a JSON object a line)"
        raise JftError(f"--output {output}: jft predict writes {written}, not CSV; name it .json or .jsonl.")
    nbest = None
    if args.nbest and Path(os.path.realpath(args.nbest)) == output:
        raise JftError(f"--nbest {args.nbest} is the --output too; give the n-best answers a file of their own.")
    if args.nbest:
        nbest = output_file(
            args.nbest,
            inputs=[*inputs, output],
            overwrite=args.overwrite,
            ours=ours("n-best answers"),
            example="nbest.json",
            flag="--nbest",
        )
    for path in filter(None, (output, nbest)):
        probe = path.with_name(f".{path.name}.tmp")
        try:  # a path that cannot be written fails now, not after every prediction is made
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise JftError(f"cannot write {path}: {error.strerror}: {path.parent}.") from None
    model = _finetuned(args, config)
    predictions = model.predict(
        args.input, batch_size=config.batch_size, id_column=config.data.id_column, with_text=config.with_text
    )
    if answers:
        key = "id" if "id" in predictions[0] else "row"
        repeated = [k for k, n in collections.Counter(str(p[key]) for p in predictions).items() if n > 1]
        if repeated:
            raise JftError(
                f"{args.input}: the id {repeated[0]!r} names several questions; {{id: answer}} needs each once."
            )
        write_owned_file(output, answers_text({str(p[key]): p["answer"] for p in predictions}), kind, source)
        if nbest is not None:
            nbests = answers_text({str(p[key]): finite_or_null(p["nbest"]) for p in predictions})
            write_owned_file(nbest, nbests, "n-best answers", source)
    else:
        lines = "".join(json.dumps(finite_or_null(p), allow_nan=False) + "\n" for p in predictions)
        write_owned_file(output, lines, kind, source)
    count = f"{len(predictions)} prediction{'s' if len(predictions) != 1 else ''}"
    print(f"wrote {count} of {model.source} to {args.output}")


def _generate_arguments(parser):
    parser.add_argument(
        "--workdir", required=True, help="a next-word (gpt2) jft run, or a Hugging Face GPT-2 directory"
    )
    parser.add_argument("prompt", nargs="*", help="text to continue (several: one batch)")
    parser.add_argument(
        "--prompts", default="", help="a text file of prompts, one a line (empty lines skipped; -: standard input)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=50, help="tokens added to each prompt at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above: sampled at it")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="the draws of sampling")
    parser.add_argument("--json", action="store_true", help='one {"prompt", "completion", "token_ids"} a line')


def _run_generate(args, _):
    from jft.files import text_lines
    from jft.generate import Generator, Sampling

    prompts = list(args.prompt)
    if args.prompts == "-":
        prompts += [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    elif args.prompts:  # a file, or a pipe (<(...))
        if not Path(args.prompts).exists() or Path(args.prompts).is_dir():
            raise JftError(f"--prompts {args.prompts} is not a file; give a text file with one prompt a line.")
        prompts += [line for _, line in text_lines(Path(args.prompts)) if line.strip()]
    if not prompts:
        raise JftError('no prompt: give one (jft generate --workdir RUN "Once upon a time") or --prompts FILE.')
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.seed)
    for result in Generator(args.workdir).generate(prompts, sampling):
        print(json.dumps(result, ensure_ascii=False) if args.json else result["prompt"] + result["completion"] + "\n")


def _export_arguments(parser):
    parser.add_argument("--workdir", required=True, help="a jft run directory: pretraining or fine-tuning")
    parser.add_argument("--out", required=True, help="directory for config.json, the weights and the tokenizer")
    parser.add_argument("--format", choices=FORMATS, default="safetensors")
    parser.add_argument(
        "--step", type=int, help="the model of this step (best/ or checkpoints/); default: the newest, or the best"
    )
    _overwrite_argument(parser)


def _run_export(args, _):
    from jft.export import export

    source = os.path.realpath(args.workdir)
    with output_directory(args.out, HF_MODEL, source, inputs=[args.workdir], overwrite=args.overwrite) as staging:
        what = export(args.workdir, staging, format=args.format, step=args.step)
    print(f"wrote {args.out} ({args.format}, {what})")


def _quickstart_arguments(parser):
    parser.add_argument("--workdir", required=True, help="where the corpus, runs, summary and picture go")


def _run_quickstart(args, config):
    from jft import quickstart

    summary = quickstart.run(config, args.workdir)
    print("\n" + quickstart.table(summary))
    workdir = Path(args.workdir)
    print(f"\npicture: {workdir / Path(summary['figure']).name}\nsummary: {workdir / 'summary.json'}")


def _quickstart_config() -> ConfigDict:
    from jft.defaults import quickstart

    return quickstart()


def _inference_config() -> ConfigDict:
    from jft.defaults import inference

    return inference()


def _bench_arguments(parser):
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    _overwrite_argument(parser)
    parser.add_argument(
        "--topology",
        default="",
        help="compile the steps ahead of time for a TPU topology (v4:2x2x1, v5e:2x2, v5p:2x2x1, v6e:2x2) "
        "and report their memory per device against its HBM; needs libtpu: pip install 'jft[tpu]'",
    )
    parser.add_argument(
        "--largest-batch",
        action="store_true",
        help="with --topology: also find the largest batch a device holds, for each remat choice",
    )


def _run_bench(args, config):
    from jft.perf import bench

    if args.largest_batch and not args.topology:
        raise JftError("--largest-batch searches by compiling for a TPU: give --topology too (e.g. v5e:2x2).")
    if args.out:  # checked before the measuring, not after it
        output_file(
            args.out, inputs=(), overwrite=args.overwrite, ours=bench.is_report, example="bench.json", flag="--out"
        )
    if args.topology:
        report = bench.compile_for(config, args.topology, search=args.largest_batch)
        print(bench.tpu_table(report))
    else:
        report = bench.run(config)
        print(bench.table(report))
    if args.out:
        bench.write(report, args.out)
        print(f"wrote {args.out}")


def _bench_config() -> ConfigDict:
    from jft.defaults import bench

    return bench()


def _count(params) -> int:
    import jax

    return sum(x.size for x in jax.tree.leaves(params))


COMMANDS = (
    Command(
        "quickstart",
        "pretrain and fine-tune a tiny BERT on synthetic data: pretrained against scratch, in minutes",
        _quickstart_arguments,
        _run_quickstart,
        True,
        _quickstart_config,
    ),
    Command(
        "vocab",
        "train a vocabulary on a corpus: WordPiece (BERT's) or byte-level BPE (GPT-2's)",
        _vocab_arguments,
        _run_vocab,
    ),
    Command(
        "prepare",
        "tokenize a corpus into pretraining rows, or decode images once (--side)",
        _prepare_arguments,
        _run_prepare,
    ),
    Command(
        "shards",
        "the files of prepared rows one host reads with data.streams (to copy to its own disk)",
        _shards_arguments,
        _run_shards,
    ),
    Command(
        "pretrain",
        "pretrain a model: masked-LM (+ next-sentence), next-word prediction, or an image classifier on labeled images",
        _pretrain_arguments,
        _run_pretrain,
        True,
    ),
    Command(
        "finetune",
        "fine-tune on a labeled task with the L2-regularized objective",
        _finetune_arguments,
        _run_finetune,
        True,
    ),
    Command(
        "sweep",
        "search a grid of fine-tuning settings (k-fold optional), many runs trained at once; the best as a run",
        _finetune_arguments,
        _run_sweep,
        True,
    ),
    Command(
        "bench",
        "time the pretraining and fine-tuning steps: sequences/s, TFLOP/s, MFU, memory",
        _bench_arguments,
        _run_bench,
        True,
        _bench_config,
    ),
    Command(
        "eval",
        "evaluate a fine-tuned workdir on a data file: metrics, per-class report, confusion matrix",
        _eval_arguments,
        _run_eval,
        True,
        _inference_config,
    ),
    Command(
        "config",
        "print the settings of a run directory, or of a config file with its --config.KEY=VALUE overrides",
        _config_arguments,
        _run_config,
    ),
    Command(
        "predict",
        "write predictions of a fine-tuned workdir as JSONL",
        _predict_arguments,
        _run_predict,
        True,
        _inference_config,
    ),
    Command(
        "generate",
        "continue prompts with a next-word model (GPT-2): greedy or sampled, with a key/value cache",
        _generate_arguments,
        _run_generate,
    ),
    Command("export", "write a run's model and tokenizer in Hugging Face format", _export_arguments, _run_export),
    Command(
        "init",
        "write a randomly initialised BERT, GPT-2, RoBERTa / XLM-R or ModernBERT in Hugging Face format",
        _init_arguments,
        _run_init,
        True,
    ),
    Command(
        "convert",
        "convert a Hugging Face model between safetensors and msgpack, or a jft run to Hugging Face format",
        _convert_arguments,
        _run_convert,
    ),
    Command(
        "inspect",
        "show the config and parameter counts of a Hugging Face model or a jft run",
        _inspect_arguments,
        _run_inspect,
    ),
)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, "", False, argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


CONFIG_EPILOG = (
    "Every config key, its value, default and meaning: `jft config CONFIG`. Set one with --config.KEY=VALUE, "
    "e.g. --config.optim.lr=3e-5. `jft config` lists the configs that ship with jft."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="jft",
        description="Pretrain text and image models (BERT, RoBERTa / XLM-R, ModernBERT, GPT-2, ResNet, VGG) and "
        "fine-tune them with an L2-regularized objective.",
    )
    parser.add_argument("--version", action="version", version=f"jft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        epilog = CONFIG_EPILOG if command.takes_config else None
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=epilog,
            formatter_class=DefaultsHelpFormatter,
        )
        if command.takes_config:
            sub.add_argument(
                "--config",
                required=command.default_config is None,
                metavar="FILE[:ARG]",
                help="config file, or a packaged config by name (tiny, base, finetune/glue:sst2); "
                "override keys with --config.KEY=VALUE",
            )
        command.add_arguments(sub)
    return parser


def _leave_out_an_absent_tpu() -> None:
    """With libtpu installed (jft[tpu], for `jft bench --topology`) on a machine without a TPU or
    GPU, jax would start by looking for a TPU and say at length that there is none: tell it to use
    the CPU, unless the user chose the platforms (JAX_PLATFORMS)."""
    if "JAX_PLATFORMS" in os.environ or "jax" in sys.modules or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):  # the TPU of a TPU VM
        return
    if any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jft` console script; returns the exit status."""
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:  # Ctrl-C outside a training run's loop (which saves, then stops as RunStopped)
        print("jft: stopped by SIGINT", file=sys.stderr)
        return 128 + int(signal.SIGINT)


def _dispatch(argv: Sequence[str] | None) -> int:
    """Parses argv and runs its command; a refusal or a failure is one line on stderr and an exit status."""
    _leave_out_an_absent_tpu()
    from jft.config import load_config, split_overrides
    from jft.xla_cache import enable_compilation_cache

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        if command.name == "config":  # its overrides apply to the config file it prints
            command.run(args, split_overrides(extra))
            return 0
        if extra and not command.takes_config:
            raise JftError(f"unrecognized arguments: {' '.join(extra)}")
        config = None
        if command.takes_config:
            from jft import defaults

            overrides = split_overrides(extra)
            if args.config:
                stage = "finetune" if command.name == "sweep" else command.name  # a sweep's config is a fine-tuning one
                config = load_config(args.config, stage=stage)
            else:
                config = command.default_config()
            config = defaults.overridden(config, overrides)
        if command.name != "bench":  # bench times compiling itself
            enable_compilation_cache()
        command.run(args, config)
    except JftError as error:
        print(f"jft {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # `jft ... | head`: the reader has gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # a file jft writes or reads: full disk, no permission, read-only
        where = f" {error.filename}" if error.filename else ""
        print(f"jft {args.command}: error: {error.strerror or error}:{where}", file=sys.stderr)
        return 1
    except RunStopped as stop:
        print(f"jft {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

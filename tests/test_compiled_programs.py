"""How many programs a run compiles (#37): a fine-tuning run one training and one evaluation
program a batch width, `jft eval` and `jft predict` one a width and none again for data of the
same widths, a pretraining run one step and one evaluation program; the small programs of setting
up a bounded few. Counted as jax lowers them (the persistent cache, on in the
tests, skips XLA's compile but not the lowering)."""

import collections
import contextlib

import jax.monitoring
import numpy as np

from conftest import SMALL_PRETRAIN, set_keys, write_corpus, write_topic_task, write_vocab
from jft import pretrain
from jft.config import load_config
from jft.finetune import train_and_evaluate
from jft.tasks.batches import TaskBatches
from jft.tasks.predictor import FinetunedModel
from jft.tasks.records import encode, read_records

LOWERED = "/jax/core/compile/jaxpr_to_mlir_module_duration"
# Programs of setting up: keys, the optimizer's initial state (one program), the first batch's
# staging (7 measured for fine-tuning, 4 for pretraining, jax 0.10; before the optimizer's init was
# one program, its zeros compiled one a leaf shape: 18).
SETTING_UP = 8


@contextlib.contextmanager
def lowered():
    """A Counter of the programs jax lowers inside the block, by name ('jit(finetune_step)')."""
    names = collections.Counter()

    def listen(event, duration, **kwargs):
        if event == LOWERED:
            names[kwargs.get("fun_name")] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_a_fine_tuning_run_eval_and_predict_compile_one_program_a_width(tmp_path):
    write_topic_task(tmp_path / "train.csv", 96, seed=0)
    write_topic_task(tmp_path / "dev.csv", 48, seed=1)
    write_vocab(tmp_path / "vocab.txt")
    files = {"data.train": "train.csv", "data.eval": "dev.csv", "data.vocab": "vocab.txt"}
    overrides = [f"{key}={tmp_path / name}" for key, name in files.items()]
    config = load_config("finetune/tiny", [*overrides, "epochs=2", "progress=False", "parallel.backend=jit"])
    with lowered() as names:
        train_and_evaluate(config, tmp_path / "run")
    model = FinetunedModel(tmp_path / "run")
    train_widths = _widths(model, tmp_path / "train.csv", config.batch_size)
    eval_widths = _widths(model, tmp_path / "dev.csv", config.batch_size)
    assert names["jit(finetune_step)"] == len(train_widths), names
    assert names["jit(predict_step)"] == len(eval_widths), names
    others = sum(n for name, n in names.items() if name not in ("jit(finetune_step)", "jit(predict_step)"))
    assert others <= SETTING_UP, names
    with lowered() as names:
        model.evaluate(str(tmp_path / "dev.csv"), batch_size=config.batch_size)
    assert set(names) == {"jit(predict_step)"} and names["jit(predict_step)"] == len(eval_widths), names
    with lowered() as names:
        model.evaluate(str(tmp_path / "dev.csv"), batch_size=config.batch_size)
        model.predict(str(tmp_path / "dev.csv"), batch_size=config.batch_size)
    assert not names, names  # the same widths: nothing compiled again


def _widths(model, source, batch_size: int) -> set[int]:
    """The widths of the bucketed batches a run makes of source (training's and evaluation's alike:
    the widths do not depend on the order)."""
    records = read_records(str(source), model.task.columns, model.task.kind)
    data = encode(records, model.tokenizer, model.task.kind, model.task.columns, model.task.labels, model.task.seq_len)
    batches = TaskBatches(data, model.task.kind, batch_size, shuffle=False, max_len=model.task.seq_len)
    return {int(np.shape(batches.batch(i)["input_ids"])[1]) for i in batches.epoch_indices(0)}


def test_a_pretraining_run_compiles_its_step_and_its_evaluation_once(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", documents=40)
    config = load_config("pretrain/tiny", [], "pretraining")
    set_keys(config, {**SMALL_PRETRAIN, "data.corpus": str(corpus), "total_steps": 6, "eval_every": 3})
    set_keys(config, {"parallel.backend": "jit", "checkpoint_every": 3})
    with lowered() as names:
        pretrain.train_and_evaluate(config, tmp_path / "run")
    assert names["jit(pretrain_step)"] == 1 and names["jit(pretrain_eval_step)"] == 1, names
    others = sum(n for name, n in names.items() if name not in ("jit(pretrain_step)", "jit(pretrain_eval_step)"))
    assert others <= SETTING_UP, names

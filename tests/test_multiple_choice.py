"""Multiple choice (SWAG's format): each family's scorer against Hugging Face's ...ForMultipleChoice
from the same weights, the step on 8 devices against one (with the joint masked-LM term), and a run
from the command line: fine-tune, eval, predict, export, PyTorch's probabilities, a sweep's fold."""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import torch
import transformers

from conftest import TINY_MODEL, padded_ids, tiny_hf_config
from jft.data.synthetic import write_choice_task, write_vocab
from jft.models import Head, hf
from jft.models import get as get_family
from jft.models.bert import BertConfig
from jft.tasks.records import Columns, encode, read_records
from jft.train.masking import MaskingConfig
from jft.train.optim import weight_decay_mask
from jft.train.parallel import Runner
from jft.train.steps import FinetuneSetup, create_finetune_state, finetune_step, predict_step

TOL = 1e-5
SWAG = Columns("sent1", "sent2", "label", ("ending0", "ending1", "ending2", "ending3"))


def _choices(seed: int, vocab: int, pad: int, first: int, examples: int = 2, candidates: int = 3):
    """input_ids and attention_mask [examples, candidates, 12], candidates of varying length."""
    ids, mask = padded_ids(seed, vocab, pad, first, examples * candidates, 12)
    return ids.reshape(examples, candidates, -1), mask.reshape(examples, candidates, -1)


def _scores(family_name: str, config, params, ids, mask) -> np.ndarray:
    """jft's logits [examples, candidates] through the fine-tuning step's predict_step."""
    family = get_family(family_name)
    setup = FinetuneSetup(family.module(config, Head("multiple_choice", 1)), None, None, "multiple_choice", 0.0, None)
    setup = FinetuneSetup(**{**setup.__dict__, "inputs": family.inputs})
    return np.asarray(predict_step(params, {"input_ids": ids, "attention_mask": mask}, None, setup=setup))


def test_bert_scores_equal_hf_flax_and_pytorch_multiple_choice(tmp_path, max_abs_diff):
    ref = transformers.FlaxBertForMultipleChoice(tiny_hf_config(), seed=3)
    ref.save_pretrained(tmp_path / "flax")
    config, params = hf.load(tmp_path / "flax")
    ids, mask = _choices(1, 101, 0, 1)
    ours = _scores("bert", config, params, ids, mask)
    assert ours.shape == (2, 3)
    assert max_abs_diff(ours, np.asarray(ref(input_ids=ids, attention_mask=mask).logits)) <= TOL
    hf.save(tmp_path / "torch", config, params, head=Head("multiple_choice", 1))
    assert json.loads((tmp_path / "torch" / "config.json").read_text())["architectures"] == ["BertForMultipleChoice"]
    model, info = transformers.BertForMultipleChoice.from_pretrained(tmp_path / "torch", output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    assert max_abs_diff(ours, logits.numpy()) <= TOL


@pytest.mark.parametrize("family_name, architecture", [("roberta", "Roberta"), ("modernbert", "ModernBert")])
def test_roberta_and_modernbert_scores_equal_pytorch_multiple_choice(tmp_path, max_abs_diff, family_name, architecture):
    """RoBERTa's scorer reads the pooler (not its sequence classifier's head); ModernBERT's its
    prediction head over the [CLS] state, as its sequence classifier does."""
    torch.manual_seed(0)
    values = dict(vocab_size=100, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=37)
    values |= dict(max_position_embeddings=40, pad_token_id=1)
    ref_config = getattr(transformers, f"{architecture}Config")(**values)
    ref = getattr(transformers, f"{architecture}ForMultipleChoice")(ref_config)
    for parameter in ref.parameters():  # biases and norms away from 0 and 1, so each weight counts
        parameter.data += 0.05 * torch.randn_like(parameter)
    ref.save_pretrained(tmp_path / "ref")
    config, params = hf.load(tmp_path / "ref")
    ids, mask = _choices(2, 100, 1, 3)
    ours = _scores(family_name, config, params, ids, mask)
    kwargs = {"attn_implementation": "eager"} if family_name == "modernbert" else {}
    model = getattr(transformers, f"{architecture}ForMultipleChoice").from_pretrained(tmp_path / "ref", **kwargs)
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits
    assert max_abs_diff(ours, logits.numpy()) <= TOL
    hf.save(tmp_path / "jft", config, params, head=Head("multiple_choice", 1))
    _, info = getattr(transformers, f"{architecture}ForMultipleChoice").from_pretrained(
        tmp_path / "jft", output_loading_info=True, **kwargs
    )
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])


def test_eight_devices_give_the_one_device_update_with_the_joint_term(tmp_path):
    """The candidates' rows split over the devices with their examples; the joint masked-LM term
    masks every candidate row as a row; an example of weight 0 does not count."""
    write_vocab(tmp_path / "vocab.txt")
    from jft.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tmp_path / "vocab.txt"))
    records = read_records(str(write_choice_task(tmp_path / "mc.csv", 16)), SWAG, "multiple_choice")
    data = encode(records, tokenizer, "multiple_choice", SWAG, ["0", "1", "2", "3"], 32)
    from jft.tasks.batches import TaskBatches, step_inputs

    (batch,) = [step_inputs(b)[1] for b in TaskBatches(data, "multiple_choice", 16, shuffle=False, max_len=32).epoch(0)]
    assert batch["input_ids"].shape[:2] == (16, 4) and batch["labels"].shape == (16,)
    batch["weights"][3] = 0.0  # an example that only fills the batch: counts are global
    dropout = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}  # each candidate row's own masks
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), **{**TINY_MODEL, **dropout})
    model = get_family("bert").module(config, Head("multiple_choice", 1, mlm=True))
    params = get_family("bert").init_params(model, jax.random.PRNGKey(0))
    special = {"pad": 0, "cls": 2, "sep": 3, "mask": 4, "unk": 1}
    masking = MaskingConfig.for_vocabulary(special, config.vocab_size, max_predictions=4)
    # SGD: Adam's first step, about ±lr·sign(g), would turn float rounding in the many gradients near 0
    # (a new scorer gives every candidate the same score) into differences of order lr
    tx = optax.sgd(0.1)
    setup = FinetuneSetup(
        model, tx, optax.constant_schedule(0.1), "multiple_choice", 0.01, weight_decay_mask(params), 0.5
    )
    setup = FinetuneSetup(**{**setup.__dict__, "masking": masking, "joint": "mlm"})
    results, metrics = {}, {}
    for backend in ("jit", "shard_map"):
        runner = Runner(backend)
        step = runner.compile(functools.partial(finetune_step, setup=setup))
        state = runner.put_replicated(create_finetune_state(params, setup.tx, params))
        state, metrics[backend] = step(state, runner.put_batch(batch), runner.put_replicated(jax.random.PRNGKey(0)))
        results[backend] = runner.get(state.params)
    assert "mlm_loss" in metrics["jit"] and float(metrics["jit"]["task_loss"]) > 0
    diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(results["jit"]), jax.tree.leaves(results["shard_map"]), strict=True)
    )
    assert diff < 1e-6


def _jft(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jft.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_a_swag_run_from_another_directory_learns_predicts_and_exports(tmp_path):
    """finetune/swag on generated SWAG-format data (the right ending keeps to the first sentence's
    topic) from scratch: dev accuracy well above chance; predict gives each example's candidate and
    probabilities; the export is BertForMultipleChoice, whose probabilities equal jft's."""
    data = tmp_path / "data"
    data.mkdir()
    write_choice_task(data / "train.csv", 512, seed=0)
    write_choice_task(data / "dev.csv", 32, seed=1)
    write_vocab(data / "vocab.txt")
    (tmp_path / "elsewhere").mkdir()
    settings = ["--config.model.preset=tiny", "--config.model.hidden_size=64", "--config.model.intermediate_size=128"]
    settings += ["--config.data.seq_len=32", "--config.optim.lr=2e-3", "--config.epochs=8", "--config.progress=false"]
    done = _jft(
        "finetune", "--config", "finetune/swag", "--workdir", "../run", "--config.data.train=../data/train.csv",
        "--config.data.eval=../data/dev.csv", "--config.data.vocab=../data/vocab.txt", *settings,
        cwd=tmp_path / "elsewhere",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "multiple_choice (4 candidates) on 512 examples" in done.stdout
    report = _jft("eval", "--workdir", "run", "--data", "data/dev.csv", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["metrics"]["accuracy"] >= 0.75  # chance: 0.25
    done = _jft("predict", "--workdir", "run", "--input", "data/dev.csv", "--output", "preds.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    predictions = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(predictions) == 32 and set(predictions[0]["probabilities"]) == {"0", "1", "2", "3"}
    done = _jft("export", "--workdir", "run", "--out", "hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model = transformers.AutoModelForMultipleChoice.from_pretrained(tmp_path / "hf").eval()
    assert type(model).__name__ == "BertForMultipleChoice"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    records = read_records(str(data / "dev.csv"), SWAG, "multiple_choice")
    firsts = [r["sent1"] for r in records for _ in range(4)]
    seconds = [f"{r['sent2']} {r[f'ending{i}']}" for r in records for i in range(4)]
    encoded = tokenizer(firsts, seconds, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**{k: v.reshape(32, 4, -1) for k, v in encoded.items()}).logits
    theirs = torch.softmax(logits, -1).numpy()
    ours = np.array([[p["probabilities"][str(i)] for i in range(4)] for p in predictions])
    np.testing.assert_allclose(theirs, ours, atol=1e-5)

"""jft's BERT against Hugging Face's own implementations, float32, max |difference| <= 1e-5."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from conftest import make_batch, masked_positions, tiny_hf_config
from jft import params as ptree
from jft.models import get, hf
from jft.models.bert import BertForPreTraining, BertForSequenceClassification, BertForTokenClassification, BertModel

TOL = 1e-5


def _hf_flax_pretraining(tmp_path, seed, **config):
    """A random FlaxBertForPreTraining, saved by transformers and read back by jft."""
    ref = transformers.FlaxBertForPreTraining(tiny_hf_config(**config), seed=seed)
    ref.save_pretrained(tmp_path)
    return ref, *hf.load(tmp_path)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("hidden_act,seed", [("gelu", 0), ("gelu_new", 1)])
def test_pretraining_matches_hf_flax(tmp_path, max_abs_diff, padded, hidden_act, seed):
    ref, config, params = _hf_flax_pretraining(tmp_path, seed, hidden_act=hidden_act)
    batch = make_batch(seed, padded=padded)
    positions = masked_positions(seed, 3, 12, 5)

    base = transformers.FlaxBertModel(tiny_hf_config(hidden_act=hidden_act), seed=seed)
    ref_base = base(**batch, params=ref.params["bert"])
    hidden, pooled = BertModel(config).apply({"params": params["bert"]}, **batch)
    assert max_abs_diff(hidden, ref_base.last_hidden_state) <= TOL
    assert max_abs_diff(pooled, ref_base.pooler_output) <= TOL

    ref_out = ref(**batch)
    out = BertForPreTraining(config).apply({"params": params}, **batch, masked_positions=positions)
    ref_mlm_at_positions = np.take_along_axis(np.asarray(ref_out.prediction_logits), positions[..., None], axis=1)
    assert out["mlm_logits"].shape == (3, 5, 101)
    assert max_abs_diff(out["mlm_logits"], ref_mlm_at_positions) <= TOL
    assert max_abs_diff(out["nsp_logits"], ref_out.seq_relationship_logits) <= TOL
    dense = BertForPreTraining(config).apply({"params": params}, **batch)
    assert max_abs_diff(dense["mlm_logits"], ref_out.prediction_logits) <= TOL


def test_pretraining_matches_hf_pytorch(tmp_path, max_abs_diff):
    torch.manual_seed(0)
    ref = transformers.BertForPreTraining(tiny_hf_config(hidden_act="gelu")).eval()
    ref.save_pretrained(tmp_path)
    config, params = hf.load(tmp_path)
    batch = make_batch(3)
    positions = masked_positions(3, 3, 12, 4)
    with torch.no_grad():
        ref_out = ref(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}, output_hidden_states=True)
    out = BertForPreTraining(config).apply({"params": params}, **batch, masked_positions=positions)
    ref_logits = np.take_along_axis(ref_out.prediction_logits.numpy(), positions[..., None], axis=1)
    assert max_abs_diff(out["mlm_logits"], ref_logits) <= TOL
    assert max_abs_diff(out["nsp_logits"], ref_out.seq_relationship_logits.numpy()) <= TOL
    hidden, _ = BertModel(config).apply({"params": params["bert"]}, **batch)
    assert max_abs_diff(hidden, ref_out.hidden_states[-1].numpy()) <= TOL


@pytest.mark.parametrize(
    "ref_cls,jft_cls",
    [
        (transformers.FlaxBertForSequenceClassification, BertForSequenceClassification),
        (transformers.FlaxBertForTokenClassification, BertForTokenClassification),
    ],
)
def test_task_heads_match_hf_flax(tmp_path, max_abs_diff, ref_cls, jft_cls):
    ref = ref_cls(tiny_hf_config(num_labels=5), seed=4)
    ref.save_pretrained(tmp_path)
    config, params = hf.load(tmp_path)
    module, head = hf.model_for(config, params)
    assert type(module) is jft_cls and module.num_labels == 5 == head.num_labels
    batch = make_batch(4)
    logits = module.apply({"params": params}, **batch)["logits"]
    assert max_abs_diff(logits, ref(**batch).logits) <= TOL


def test_the_question_answering_head_matches_hf_flax_and_pytorch(tmp_path, max_abs_diff):
    """FlaxBertForQuestionAnswering's weights read as jft's span head ('qa_outputs', no dropout):
    start and end logits as HF Flax's; saved by jft, PyTorch's BertForQuestionAnswering gives them too."""
    ref = transformers.FlaxBertForQuestionAnswering(tiny_hf_config(), seed=6)
    ref.save_pretrained(tmp_path / "flax")
    config, params = hf.load(tmp_path / "flax")
    module, head = hf.model_for(config, params)
    assert (head.kind, head.num_labels, module.head_name) == ("question_answering", 2, "qa_outputs")
    batch = make_batch(6)
    logits = np.asarray(module.apply({"params": params}, **batch)["logits"])
    ref_out = ref(**batch)
    real = batch["attention_mask"] == 1
    assert max_abs_diff(logits[..., 0][real], np.asarray(ref_out.start_logits)[real]) <= TOL
    assert max_abs_diff(logits[..., 1][real], np.asarray(ref_out.end_logits)[real]) <= TOL
    hf.save(tmp_path / "torch", config, params, format="safetensors")
    torch_model = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "torch").eval()
    with torch.no_grad():
        torch_out = torch_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    assert max_abs_diff(logits[..., 0][real], torch_out.start_logits.numpy()[real]) <= TOL
    assert max_abs_diff(logits[..., 1][real], torch_out.end_logits.numpy()[real]) <= TOL


def test_pretraining_loss_and_gradients_match_hf_flax(tmp_path, max_abs_diff):
    """Masked-LM (at masked positions, jft's sparse logits against Flax's dense ones gathered) plus
    next-sentence: the loss and its gradient with respect to every Flax weight, tied decoder included."""
    ref, config, params = _hf_flax_pretraining(tmp_path, 5, hidden_act="gelu")
    batch = make_batch(5)
    positions = masked_positions(5, 3, 12, 4)
    labels = np.take_along_axis(batch["input_ids"], positions, axis=1)
    next_sentence = np.array([0, 1, 1])

    def loss_of(mlm_logits, nsp_logits):
        mlm = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, labels).mean()
        return mlm + optax.softmax_cross_entropy_with_integer_labels(nsp_logits, next_sentence).mean()

    def jft_loss(p):
        out = BertForPreTraining(config).apply({"params": p}, **batch, masked_positions=positions)
        return loss_of(out["mlm_logits"], out["nsp_logits"])

    def flax_loss(p):
        out = ref(**batch, params=p)
        gathered = jnp.take_along_axis(out.prediction_logits, positions[..., None], axis=1)
        return loss_of(gathered, out.seq_relationship_logits)

    loss, grads = jax.jit(jax.value_and_grad(jft_loss))(params)
    flax_loss_value, flax_grads = jax.jit(jax.value_and_grad(flax_loss))(ref.params)
    assert abs(float(loss) - float(flax_loss_value)) <= TOL
    grads, flax_grads = get("bert").weights_to_hf(grads, "flax"), ptree.flatten(flax_grads)
    assert set(grads) == set(flax_grads)
    for name, expected in flax_grads.items():
        assert max_abs_diff(grads[name], expected) <= TOL * max(float(np.max(np.abs(expected))), 1e-3), name

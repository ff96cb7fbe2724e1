"""RoBERTa (and XLM-R) in Flax linen: BERT's encoder under 'roberta', and RoBERTa's heads.

Sub-module names follow Hugging Face's modeling_flax_roberta, so weights map one to one: the
encoder is jft.models.bert's BertModel (the position numbering comes from RobertaConfig), the
masked-LM head is 'lm_head' (dense, GELU, layer_norm, the decoder tied to the word embeddings,
its own bias), the sequence classifier 'classifier' (dense, tanh, out_proj on the <s> state; no
pooler), the token classifier 'classifier' (one dense layer).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jft.models.bert.modules import BertModel, dense, init_params, layer_norm
from jft.models.family import Head
from jft.models.layers import Dropout, gather_positions
from jft.models.roberta.config import RobertaConfig

__all__ = [
    "RobertaEncoderOnly",
    "RobertaForMaskedLM",
    "RobertaForMultipleChoice",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "build",
    "init_params",
]


class RobertaLMHead(nn.Module):
    """dense, GELU, LayerNorm, then the decoder tied to the word embeddings, plus its bias: float32 logits."""

    config: RobertaConfig

    @nn.compact
    def __call__(self, x, word_embeddings: jax.Array):
        cfg = self.config
        x = nn.gelu(dense(cfg, cfg.hidden_size, "dense")(x), approximate=False)
        x = layer_norm(cfg, "layer_norm")(x)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), cfg.params_dtype)
        table = jnp.pad(word_embeddings.astype(x.dtype), ((0, cfg.padded_vocab_size - cfg.vocab_size), (0, 0)))
        logits = jnp.einsum("...h,vh->...v", x, table, preferred_element_type=jnp.float32)
        return logits[..., : cfg.vocab_size] + bias.astype(jnp.float32)


class RobertaClassificationHead(nn.Module):
    """dropout, dense, tanh, dropout, out_proj of the <s> states: [..., num_labels], float32."""

    config: RobertaConfig
    num_labels: int

    @nn.compact
    def __call__(self, first, deterministic: bool):
        cfg = self.config
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        x = Dropout(rate)(first, deterministic=deterministic)
        x = jnp.tanh(dense(cfg, cfg.hidden_size, "dense")(x))
        x = Dropout(rate)(x, deterministic=deterministic)
        return dense(cfg, self.num_labels, "out_proj")(x).astype(jnp.float32)


def _mlm_logits(module: nn.Module, roberta: BertModel, hidden) -> jax.Array:
    word_embeddings = roberta.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    return RobertaLMHead(module.config, name="lm_head")(hidden, word_embeddings)


def _with_mlm(module: nn.Module, roberta: BertModel, hidden, masked_positions, logits) -> dict[str, jax.Array]:
    """A task model's outputs: its logits, and the MLM logits (hidden: the states at
    masked_positions) when it has the masked-LM head and is given masked_positions."""
    if not module.mlm:
        return {"logits": logits}
    mlm_logits = _mlm_logits(module, roberta, hidden)  # always: the head's weights exist from init on
    return {"logits": logits} if masked_positions is None else {"logits": logits, "mlm_logits": mlm_logits}


class RobertaForMaskedLM(nn.Module):
    """Encoder + masked-LM head: {"mlm_logits": [batch, max_predictions, vocab]} at masked_positions
    (at every position without them), float32."""

    config: RobertaConfig

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        masked_positions=None,
        deterministic: bool = True,
    ) -> dict[str, jax.Array]:
        roberta = BertModel(self.config, add_pooling_layer=False, name="roberta")
        hidden, _ = roberta(
            input_ids, attention_mask, token_type_ids, position_ids, None, None, deterministic, masked_positions
        )
        return {"mlm_logits": _mlm_logits(self, roberta, hidden)}


class RobertaForSequenceClassification(nn.Module):
    """Encoder + RoBERTa's classification head on the <s> state: {"logits": [batch, num_labels]},
    float32 ([batch, examples, num_labels] for packed rows, at cls_positions). num_labels=1:
    regression. With `mlm`, the masked-LM head too, and "mlm_logits" at masked_positions."""

    config: RobertaConfig
    num_labels: int
    mlm: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        masked_positions=None,
        deterministic: bool = True,
        segment_ids=None,
        cls_positions=None,
    ) -> dict[str, jax.Array]:
        roberta = BertModel(self.config, add_pooling_layer=False, name="roberta")
        first = jnp.zeros((input_ids.shape[0], 1), jnp.int32) if cls_positions is None else cls_positions
        masked = jnp.zeros((input_ids.shape[0], 0), jnp.int32) if masked_positions is None else masked_positions
        # the last layer computes only the rows the heads read: the <s> rows and the masked ones
        hidden, _ = roberta(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            segment_ids,
            cls_positions,
            deterministic,
            jnp.concatenate([first, masked], 1),
        )
        states = hidden[:, : first.shape[1]]
        head = RobertaClassificationHead(self.config, self.num_labels, name="classifier")
        logits = head(states[:, 0] if cls_positions is None else states, deterministic)
        return _with_mlm(self, roberta, hidden[:, first.shape[1] :], masked_positions, logits)


class RobertaForTokenClassification(nn.Module):
    """Encoder + dropout + a linear classifier per token: {"logits": [batch, seq, num_labels]},
    float32. `mlm` as in RobertaForSequenceClassification; packed rows give segment_ids. Question
    answering's span head is this with 2 outputs, named 'qa_outputs', without dropout."""

    config: RobertaConfig
    num_labels: int
    mlm: bool = False
    head_name: str = "classifier"
    dropout: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        masked_positions=None,
        deterministic: bool = True,
        segment_ids=None,
    ) -> dict[str, jax.Array]:
        cfg = self.config
        roberta = BertModel(cfg, add_pooling_layer=False, name="roberta")
        hidden, _ = roberta(input_ids, attention_mask, token_type_ids, position_ids, segment_ids, None, deterministic)
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        x = Dropout(rate)(hidden, deterministic=deterministic or not self.dropout)
        logits = dense(cfg, self.num_labels, self.head_name)(x).astype(jnp.float32)
        masked = jnp.zeros((input_ids.shape[0], 0), jnp.int32) if masked_positions is None else masked_positions
        return _with_mlm(self, roberta, gather_positions(hidden, masked), masked_positions, logits)


class RobertaForMultipleChoice(nn.Module):
    """Encoder with its pooler + dropout + a linear score of each row: {"logits": [batch, 1]},
    float32 (RobertaForMultipleChoice's: unlike the sequence classifier, through the pooler). `mlm`
    as in RobertaForSequenceClassification."""

    config: RobertaConfig
    mlm: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        masked_positions=None,
        deterministic: bool = True,
    ) -> dict[str, jax.Array]:
        cfg = self.config
        roberta = BertModel(cfg, name="roberta")
        masked = jnp.zeros((input_ids.shape[0], 0), jnp.int32) if masked_positions is None else masked_positions
        # the last layer computes only the rows the heads read: the <s> rows and the masked ones
        hidden, pooled = roberta(
            input_ids, attention_mask, token_type_ids, position_ids, None, None, deterministic, masked
        )
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        x = Dropout(rate)(pooled, deterministic=deterministic)
        logits = dense(cfg, 1, "classifier")(x).astype(jnp.float32)
        return _with_mlm(self, roberta, hidden, masked_positions, logits)


class RobertaEncoderOnly(nn.Module):
    """The bare encoder (RobertaModel), under 'roberta': {"hidden": [batch, seq, hidden], "pooled":
    [batch, hidden]} (no "pooled" without the pooler)."""

    config: RobertaConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic: bool = True
    ) -> dict[str, jax.Array]:
        roberta = BertModel(self.config, add_pooling_layer=self.add_pooling_layer, name="roberta")
        hidden, pooled = roberta(input_ids, attention_mask, token_type_ids, position_ids, deterministic=deterministic)
        return {"hidden": hidden} if pooled is None else {"hidden": hidden, "pooled": pooled}


def build(config: RobertaConfig, head: Head) -> nn.Module:
    """The RoBERTa module with `head` (jft.models.family.Head); pretraining is masked-LM alone."""
    if head.kind == "pretraining":
        return RobertaForMaskedLM(config)
    if head.kind == "classification":
        return RobertaForSequenceClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    if head.kind == "token_classification":
        return RobertaForTokenClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    if head.kind == "question_answering":
        return RobertaForTokenClassification(config, 2, mlm=head.mlm, head_name="qa_outputs", dropout=False)
    if head.kind == "multiple_choice":
        return RobertaForMultipleChoice(config, mlm=head.mlm)
    return RobertaEncoderOnly(config, add_pooling_layer=head.pooler)

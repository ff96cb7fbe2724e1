"""BERT in Flax linen: embeddings, an encoder looping over stacked layers, pooler, and the heads.

Sub-module names follow Hugging Face's modeling_flax_bert so weights map one to one; the one
difference is that the encoder's layers run as one loop over a stack, so each layer parameter is
stored once with a leading [num_hidden_layers] axis (jft.models.bert.weights stacks and unstacks
at the Hugging Face boundary).
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jft.errors import JftError
from jft.models.bert.config import BertConfig
from jft.models.family import Head
from jft.models.layers import (
    Dropout,
    Embed,
    attention,
    attention_mask_4d,
    gather_positions,
    query_rows_mask,
    rematerialised,
)

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}


def dense(config: BertConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


def layer_norm(config: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps, dtype=config.compute_dtype, param_dtype=config.params_dtype, name=name
    )


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config

        def embed(num, name):
            return Embed(
                num,
                cfg.hidden_size,
                embedding_init=nn.initializers.normal(cfg.initializer_range),
                dtype=cfg.compute_dtype,
                param_dtype=cfg.params_dtype,
                name=name,
            )

        x = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, "position_embeddings")(position_ids)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        x = layer_norm(cfg)(x)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention of the rows `queries` over the whole row x. Given query_positions
    [batch, n] (queries: x's rows there), only those rows ask, by XLA's attention: [batch, n, hidden]."""

    config: BertConfig

    @nn.compact
    def __call__(self, queries, x, mask, deterministic: bool, query_positions=None):
        cfg = self.config
        implementation = cfg.attention_impl
        if query_positions is not None:
            mask = query_rows_mask(mask, query_positions, implementation)
            implementation = "xla"  # a few query rows: the kernels' blocks would be mostly empty

        def heads(y):
            return y.reshape(*y.shape[:-1], cfg.num_attention_heads, cfg.head_dim)

        q = heads(dense(cfg, cfg.hidden_size, "query")(queries))
        k, v = (heads(dense(cfg, cfg.hidden_size, name)(x)) for name in ("key", "value"))
        rate = cfg.attention_probs_dropout_prob
        dropout_rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        out = attention(q, k, v, mask, implementation=implementation, dropout_rate=rate, dropout_rng=dropout_rng)
        return out.reshape(queries.shape)


class BertResidualOutput(nn.Module):
    """Dense, dropout, then LayerNorm of the sum with the residual (HF's *Output blocks)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, "dense")(x)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return layer_norm(cfg)(x + residual)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, query_positions=None):
        queries = x if query_positions is None else gather_positions(x, query_positions)
        attended = BertSelfAttention(self.config, name="self")(queries, x, mask, deterministic, query_positions)
        return BertResidualOutput(self.config, name="output")(attended, queries, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        return ACTIVATION_FNS[cfg.hidden_act](dense(cfg, cfg.intermediate_size, "dense")(x))


class BertLayer(nn.Module):
    """One transformer block: [batch, seq, hidden] in and out, or [batch, n, hidden] out for the
    rows at query_positions [batch, n] only."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, query_positions=None):
        x = BertAttention(self.config, name="attention")(x, mask, deterministic, query_positions)
        hidden = BertIntermediate(self.config, name="intermediate")(x)
        return BertResidualOutput(self.config, name="output")(hidden, x, deterministic)


class BertEncoder(nn.Module):
    """The layers, stored once as a stack: each parameter has a leading [num_hidden_layers] axis.

    They run as one loop (jax.lax.scan) over the stack: the program holds one layer, so compile
    time stays flat with depth; scan_layers=False unrolls the loop (same parameters, same outputs).
    A loop hands the backward pass every value it saves, stacked over the layers, where XLA would
    fuse the elementwise ones away in unrolled layers (GELU's, softmax's, LayerNorm's, dropout's),
    so with remat "none" the loop saves the matmuls' outputs only and recomputes the rest inside
    the backward pass's fusions: no matmul is done twice, and on a TPU v5e a BERT-base step at
    seq 128 needs 4.55 GiB where saving everything needed 7.66 (benchmarks/RESULTS.md).
    Given query_positions [batch, n], the last layer computes only those rows, which are all the
    heads read (the [CLS] rows for a classifier, the masked rows for masked-LM): the same values
    for fewer FLOPs, [batch, n, hidden] out.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, query_positions=None):
        cfg = self.config
        layer = BertLayer(cfg)
        stack = self.param("layer", self._init_stack)

        def run(params, x, key, positions=None):
            rngs = None if key is None else {"dropout": key}
            return layer.apply({"params": params}, x, mask, deterministic, positions, rngs=rngs)

        looped_run = rematerialised(run, cfg.remat, cfg.scan_layers)
        layers = cfg.num_hidden_layers
        keys = None if deterministic else jax.random.split(self.make_rng("dropout"), layers)
        looped = layers if query_positions is None else layers - 1

        def body(x, params_and_key):
            params, key = params_and_key
            return looped_run(params, x, key), None

        x, _ = jax.lax.scan(body, x, jax.tree.map(lambda a: a[:looped], (stack, keys)), unroll=not cfg.scan_layers)
        if query_positions is None:
            return x
        last_params, last_key = jax.tree.map(lambda a: a[-1], (stack, keys))
        # outside the loop the last layer is an unrolled one: with remat "none" its backward pass
        # reads what XLA kept of its n rows instead of computing them again, and it compiles less
        return rematerialised(run, cfg.remat, scan_layers=False)(last_params, x, last_key, query_positions)

    def _init_stack(self, key: jax.Array) -> dict:
        """num_hidden_layers independent initialisations of one layer, stacked."""
        cfg = self.config
        x = jnp.zeros((1, 1, cfg.hidden_size), cfg.compute_dtype)
        # the parameters do not depend on the attention kernel: XLA's initialises them anywhere
        plain = BertLayer(dataclasses.replace(cfg, attention_impl="xla"))

        def one(layer_key):
            return plain.init(layer_key, x, jnp.ones((1, 1, 1, 1), bool), True)["params"]

        return jax.vmap(one)(jax.random.split(key, cfg.num_hidden_layers))


class BertPooler(nn.Module):
    """tanh(dense) of the [CLS] states: [batch, hidden], or [batch, examples, hidden] for packed rows."""

    config: BertConfig

    @nn.compact
    def __call__(self, first):
        return jnp.tanh(dense(self.config, self.config.hidden_size, "dense")(first))


class BertModel(nn.Module):
    """The encoder: token ids to hidden states [batch, seq, hidden] and pooled output [batch, hidden].

    Packed rows (several examples a row) give segment_ids (1, 2, ... per example, 0 for padding:
    tokens attend within their own example), position_ids restarting at each example, and
    cls_positions [batch, examples], where each example starts: the pooled output is then one
    per example, [batch, examples, hidden].

    output_positions [batch, n] (may be n = 0) asks for the hidden states at those positions only,
    [batch, n, hidden]: the last layer then computes just them and the [CLS] rows the pooler reads.
    """

    config: BertConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cls_positions: jax.Array | None = None,
        deterministic: bool = True,
        output_positions: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """input_ids, attention_mask (1 = token), token_type_ids, position_ids, segment_ids: [batch, seq]."""
        cfg = self.config
        seq_len = input_ids.shape[-1]
        longest = cfg.max_length
        if seq_len > longest:
            offset = f", of which the first {cfg.position_offset} precede the tokens" if cfg.position_offset else ""
            raise JftError(
                f"sequences of {seq_len} tokens are longer than the position table "
                f"(max_position_embeddings={cfg.max_position_embeddings}{offset}); truncate them to "
                f"{longest} tokens or use a model with a larger position table."
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(seq_len), input_ids.shape)
        if cfg.position_offset:  # RoBERTa's numbering: tokens from pad_token_id + 1, padding at pad_token_id
            position_ids = jnp.where(attention_mask != 0, position_ids + cfg.position_offset, cfg.pad_token_id)
        x = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, position_ids, deterministic)
        if cfg.attention_impl == "splash":  # the kernel takes the segments themselves
            mask = attention_mask if segment_ids is None else segment_ids
        else:
            mask = attention_mask_4d(attention_mask, segment_ids)
        first = jnp.zeros((input_ids.shape[0], 1), jnp.int32) if cls_positions is None else cls_positions
        wanted = None
        if output_positions is not None:
            wanted = jnp.concatenate([first, output_positions], 1) if self.add_pooling_layer else output_positions
        x = BertEncoder(cfg, name="encoder")(x, mask, deterministic, wanted)
        if not self.add_pooling_layer:
            return x, None
        if output_positions is None:
            cls_states = gather_positions(x, first)
        else:
            cls_states, x = x[:, : first.shape[1]], x[:, first.shape[1] :]
        pooled = BertPooler(cfg, name="pooler")(cls_states[:, 0] if cls_positions is None else cls_states)
        return x, pooled


class BertPredictionHeadTransform(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        return layer_norm(cfg)(ACTIVATION_FNS[cfg.hidden_act](dense(cfg, cfg.hidden_size, "dense")(x)))


class BertLMPredictionHead(nn.Module):
    """Transform (dense, activation, LayerNorm), then the decoder tied to the word embeddings."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, word_embeddings: jax.Array):
        cfg = self.config
        x = BertPredictionHeadTransform(cfg, name="transform")(x)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), cfg.params_dtype)
        # Zero rows up to padded_vocab_size give the matmul an aligned width; the slice drops their
        # logits (and, in the backward pass, their gradients) at once.
        table = jnp.pad(word_embeddings.astype(x.dtype), ((0, cfg.padded_vocab_size - cfg.vocab_size), (0, 0)))
        # float32 logits: the softmax over the vocabulary must not run in bf16.
        logits = jnp.einsum("...h,vh->...v", x, table, preferred_element_type=jnp.float32)
        return logits[..., : cfg.vocab_size] + bias.astype(jnp.float32)


class BertPreTrainingHeads(nn.Module):
    """HF's `cls` block: the masked-LM head and, when `nsp`, the next-sentence head."""

    config: BertConfig
    nsp: bool

    @nn.compact
    def __call__(self, hidden, pooled, word_embeddings) -> dict[str, jax.Array]:
        out = {"mlm_logits": BertLMPredictionHead(self.config, name="predictions")(hidden, word_embeddings)}
        if self.nsp:
            out["nsp_logits"] = dense(self.config, 2, "seq_relationship")(pooled).astype(jnp.float32)
        return out


class BertForPreTraining(nn.Module):
    """Encoder + masked-LM head (+ next-sentence head when `nsp`).

    masked_positions: [batch, max_predictions] int; MLM logits are computed only there
    ([batch, max_predictions, vocab]). Without it, at every position ([batch, seq, vocab]).
    Returns {"mlm_logits", "nsp_logits" (when nsp): [batch, 2]}, float32.
    """

    config: BertConfig
    nsp: bool = True

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
        # The pooler serves only the NSP head (as in HF's BertForMaskedLM, an MLM-only model has none).
        bert = BertModel(self.config, add_pooling_layer=self.nsp, name="bert")
        hidden, pooled = bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            deterministic=deterministic,
            output_positions=masked_positions,
        )
        word_embeddings = bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        return BertPreTrainingHeads(self.config, self.nsp, name="cls")(hidden, pooled, word_embeddings)


class BertForSequenceClassification(nn.Module):
    """Encoder + dropout + linear classifier on the pooled output: {"logits": [batch, num_labels]}, float32.

    num_labels=1 gives a regression head. Packed rows (segment_ids, position_ids and cls_positions
    as in BertModel) give [batch, examples, num_labels]. With `mlm`, the model also has the
    masked-LM head (for fine-tuning jointly on the task's own text) and, given masked_positions,
    adds "mlm_logits" at those positions.
    """

    config: BertConfig
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
        bert = BertModel(self.config, name="bert")
        # The classifier reads the [CLS] rows and the masked-LM head the masked ones (none when
        # masked_positions is None): the last layer computes only those.
        wanted = jnp.zeros((input_ids.shape[0], 0), jnp.int32) if masked_positions is None else masked_positions
        hidden, pooled = bert(
            input_ids, attention_mask, token_type_ids, position_ids, segment_ids, cls_positions, deterministic, wanted
        )
        logits = _classifier(self.config, self.num_labels, pooled, deterministic)
        return _with_mlm(self, bert, hidden, masked_positions, logits)


class BertForTokenClassification(nn.Module):
    """Encoder + dropout + linear classifier per token: {"logits": [batch, seq, num_labels]}, float32.

    `mlm` as in BertForSequenceClassification; packed rows give segment_ids and position_ids.
    Question answering's span head is this with 2 outputs (start, end), named 'qa_outputs' and
    without dropout (BertForQuestionAnswering's).
    """

    config: BertConfig
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
        bert = BertModel(self.config, add_pooling_layer=False, name="bert")
        hidden, _ = bert(input_ids, attention_mask, token_type_ids, position_ids, segment_ids, None, deterministic)
        logits = _classifier(self.config, self.num_labels, hidden, deterministic or not self.dropout, self.head_name)
        if masked_positions is not None:
            hidden = gather_positions(hidden, masked_positions)
        return _with_mlm(self, bert, hidden, masked_positions, logits)


class BertEncoderOnly(nn.Module):
    """The bare encoder, under 'bert' as in every other head's tree: {"hidden": [batch, seq, hidden],
    "pooled": [batch, hidden]} (no "pooled" without the pooler)."""

    config: BertConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic: bool = True
    ) -> dict[str, jax.Array]:
        bert = BertModel(self.config, add_pooling_layer=self.add_pooling_layer, name="bert")
        hidden, pooled = bert(input_ids, attention_mask, token_type_ids, position_ids, deterministic=deterministic)
        return {"hidden": hidden} if pooled is None else {"hidden": hidden, "pooled": pooled}


def _with_mlm(model: nn.Module, bert: BertModel, hidden, masked_positions, logits) -> dict[str, jax.Array]:
    """A task model's outputs: its logits, and the MLM logits when it has the masked-LM head and is
    given masked_positions (hidden: the states there). The head is HF's `cls`, so a pretrained one
    loads into it."""
    if not model.mlm:
        return {"logits": logits}
    word_embeddings = bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
    mlm_logits = BertPreTrainingHeads(model.config, nsp=False, name="cls")(hidden, None, word_embeddings)["mlm_logits"]
    return {"logits": logits} if masked_positions is None else {"logits": logits, "mlm_logits": mlm_logits}


def _classifier(
    config: BertConfig, num_labels: int, x: jax.Array, deterministic: bool, scope: str = "classifier"
) -> jax.Array:
    rate = config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
    x = Dropout(rate)(x, deterministic=deterministic)
    return dense(config, num_labels, scope)(x).astype(jnp.float32)


def build(config: BertConfig, head: Head) -> nn.Module:
    """The BERT module with `head` (jft.models.family.Head)."""
    if head.kind == "pretraining":
        return BertForPreTraining(config, nsp=head.nsp)
    if head.kind == "classification":
        return BertForSequenceClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    if head.kind == "token_classification":
        return BertForTokenClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    if head.kind == "question_answering":
        return BertForTokenClassification(config, 2, mlm=head.mlm, head_name="qa_outputs", dropout=False)
    if head.kind == "multiple_choice":  # BertForMultipleChoice: a score a candidate, from the pooled output
        return BertForSequenceClassification(config, 1, mlm=head.mlm)
    return BertEncoderOnly(config, add_pooling_layer=head.pooler)


def init_params(module: nn.Module, rng: jax.Array) -> dict:
    """Fresh parameters of any jft module (the 'params' collection), initialised by one compiled
    program (op by op, a small BERT's initialisation compiles about a hundred programs: seconds)."""
    return jax.jit(lambda key: module.init(key, jnp.zeros((1, 1), jnp.int32))["params"])(rng)

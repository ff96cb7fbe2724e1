"""ModernBERT in Flax linen: embeddings, pre-norm layers looping over a stack, and the heads.

Sub-module names follow Hugging Face's modeling_modernbert (PyTorch; there is no Flax ModernBERT),
so weights map one to one. As BERT's, the layers run as one loop over stacked weights; what differs
between them is data the loop carries: each layer's index says whether it attends globally (its
rotary theta, the whole row) or in a window, and layer 0 reads the embeddings without a LayerNorm
(Hugging Face's Identity: its attn_norm weights exist in the stack, unused, and are never exported).

Padding costs nothing when rows are packed: several texts a row, segment_ids keeping them apart,
position_ids restarting at each (jft's packed layout); the sliding window counts row positions,
as Hugging Face's, which within a text are its positions.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jft.errors import JftError
from jft.models.bert.modules import ACTIVATION_FNS, init_params
from jft.models.family import Head
from jft.models.layers import Dropout, Embed, attention, attention_mask_4d, band_mask, gather_positions, rematerialised
from jft.models.modernbert.config import ModernBertConfig

__all__ = [
    "ModernBertEncoderOnly",
    "ModernBertForMaskedLM",
    "ModernBertForSequenceClassification",
    "ModernBertForTokenClassification",
    "ModernBertModel",
    "build",
    "init_params",
]


def _init(config: ModernBertConfig, scale: float = 1.0):
    """Hugging Face's initialisation: a normal of initializer_range (times scale), cut at
    initializer_cutoff_factor standard deviations."""
    cutoff = config.initializer_cutoff_factor
    return nn.initializers.truncated_normal(config.initializer_range * scale, lower=-cutoff, upper=cutoff)


def _dense(config: ModernBertConfig, features: int, name: str, bias: bool, scale: float = 1.0) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        kernel_init=_init(config, scale),
        name=name,
    )


def _norm(config: ModernBertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.norm_eps,
        use_bias=config.norm_bias,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        name=name,
    )


def rotary_tables(position_ids: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [batch, seq, head_dim] of rotary positions with base theta, float32."""
    inverse = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = position_ids.astype(jnp.float32)[..., None] * inverse
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [batch, seq, heads, head_dim] turned by the rotary angles (cos, sin: [batch, seq, head_dim])."""
    half = x.shape[-1] // 2
    turned = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
    return x * cos + turned * sin


class ModernBertAttention(nn.Module):
    """Attention over the whole row (global) or within the sliding window (local), with rotary
    positions of the layer's theta; `is_global` is a traced flag: the loop's layers differ in data only."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x, masks, rotary, is_global, deterministic: bool):
        cfg = self.config
        batch, seq, _ = x.shape
        layers = cfg.num_hidden_layers
        qkv = _dense(cfg, 3 * cfg.hidden_size, "Wqkv", cfg.attention_bias)(x)
        qkv = qkv.reshape(batch, seq, 3, cfg.num_attention_heads, cfg.head_dim)
        (global_cos, global_sin), (local_cos, local_sin) = rotary
        cos, sin = jnp.where(is_global, global_cos, local_cos), jnp.where(is_global, global_sin, local_sin)
        q, k, v = rotate(qkv[:, :, 0], cos, sin), rotate(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
        rate = cfg.attention_dropout
        dropout_rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        global_mask, local_mask = masks
        if cfg.attention_impl == "xla":
            out = attention(
                q,
                k,
                v,
                jnp.where(is_global, global_mask, local_mask),
                implementation="xla",
                dropout_rate=rate,
                dropout_rng=dropout_rng,
            )
        else:  # a kernel a layer kind: the flag picks which runs

            def attend(window):
                return lambda q, k, v: attention(
                    q,
                    k,
                    v,
                    global_mask,
                    implementation=cfg.attention_impl,
                    dropout_rate=0.0,
                    dropout_rng=None,
                    window=window,
                )

            out = jax.lax.cond(is_global, attend(None), attend(cfg.window), q, k, v)
        out = _dense(cfg, cfg.hidden_size, "Wo", cfg.attention_bias, 1 / math.sqrt(2 * layers))(
            out.reshape(batch, seq, cfg.hidden_size)
        )
        return Dropout(rate)(out, deterministic=deterministic)


class ModernBertMLP(nn.Module):
    """GeGLU: Wi to twice intermediate_size, act(input) × gate, Wo back."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config
        hidden, gate = jnp.split(_dense(cfg, 2 * cfg.intermediate_size, "Wi", cfg.mlp_bias)(x), 2, axis=-1)
        hidden = Dropout(cfg.mlp_dropout)(ACTIVATION_FNS[cfg.hidden_activation](hidden) * gate, deterministic)
        return _dense(cfg, cfg.hidden_size, "Wo", cfg.mlp_bias, 1 / math.sqrt(2 * cfg.num_hidden_layers))(hidden)


class ModernBertLayer(nn.Module):
    """One pre-norm block: x + attention(attn_norm(x)), then + mlp(mlp_norm(x)). Layer 0 reads x
    itself (its attn_norm unused)."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x, masks, rotary, index, deterministic: bool):
        cfg = self.config
        normed = jnp.where(index == 0, x, _norm(cfg, "attn_norm")(x))
        is_global = index % cfg.global_attn_every_n_layers == 0
        x = x + ModernBertAttention(cfg, name="attn")(normed, masks, rotary, is_global, deterministic)
        return x + ModernBertMLP(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x), deterministic)


class ModernBertEmbeddings(nn.Module):
    """tok_embeddings, LayerNorm (norm), dropout."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids, deterministic: bool):
        cfg = self.config
        x = Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=_init(cfg),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            name="tok_embeddings",
        )(input_ids)
        return Dropout(cfg.embedding_dropout)(_norm(cfg, "norm")(x), deterministic=deterministic)


class ModernBertModel(nn.Module):
    """The encoder: token ids to final-normed hidden states [batch, seq, hidden].

    Packed rows give segment_ids (1, 2, ... per text, 0 for padding) and position_ids restarting at
    each text. The layers are stored once as a stack ("layers", a leading [num_hidden_layers]
    axis) and run as one loop (jax.lax.scan; scan_layers=False unrolls it), each layer's index
    carried as data.
    """

    config: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, segment_ids=None, deterministic=True):
        cfg = self.config
        seq = input_ids.shape[-1]
        if seq > cfg.max_length:
            raise JftError(
                f"sequences of {seq} tokens are longer than the model takes (max_position_embeddings="
                f"{cfg.max_position_embeddings}); truncate them to {cfg.max_length} tokens."
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(seq), input_ids.shape)
        x = ModernBertEmbeddings(cfg, name="embeddings")(input_ids, deterministic)
        if cfg.attention_impl == "splash":  # the kernel takes the segments themselves
            mask = attention_mask if segment_ids is None else segment_ids
        else:
            mask = attention_mask_4d(attention_mask, segment_ids)
        # the global layers' mask and the local ones' (a kernel applies the window itself), once for all layers
        masks = (mask, mask & band_mask(seq, seq, cfg.window) if cfg.attention_impl == "xla" else mask)
        rotary = (
            rotary_tables(position_ids, cfg.head_dim, cfg.global_rope_theta),
            rotary_tables(position_ids, cfg.head_dim, cfg.local_rope_theta),
        )
        layer = ModernBertLayer(cfg)
        stack = self.param("layers", self._init_stack)

        def run(params, x, index, key):
            rngs = None if key is None else {"dropout": key}
            return layer.apply({"params": params}, x, masks, rotary, index, deterministic, rngs=rngs)

        run = rematerialised(run, cfg.remat, cfg.scan_layers)
        count = cfg.num_hidden_layers
        keys = None if deterministic else jax.random.split(self.make_rng("dropout"), count)

        def body(x, inputs):
            params, index, key = inputs
            return run(params, x, index, key), None

        x, _ = jax.lax.scan(body, x, (stack, jnp.arange(count), keys), unroll=not cfg.scan_layers)
        return _norm(cfg, "final_norm")(x)

    def _init_stack(self, key: jax.Array) -> dict:
        """num_hidden_layers independent initialisations of one layer, stacked."""
        cfg = self.config
        plain = ModernBertLayer(dataclasses.replace(cfg, attention_impl="xla"))
        x = jnp.zeros((1, 1, cfg.hidden_size), cfg.compute_dtype)
        tables = rotary_tables(jnp.zeros((1, 1), jnp.int32), cfg.head_dim, 1.0)

        def one(layer_key):
            mask = jnp.ones((1, 1, 1, 1), bool)
            return plain.init(layer_key, x, (mask, mask), (tables, tables), 1, True)["params"]

        return jax.vmap(one)(jax.random.split(key, cfg.num_hidden_layers))


class ModernBertPredictionHead(nn.Module):
    """dense, activation, LayerNorm: what the decoder and the classifiers read."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = _dense(cfg, cfg.hidden_size, "dense", cfg.classifier_bias)(x)
        return _norm(cfg, "norm")(ACTIVATION_FNS[cfg.classifier_activation](x))


def _decoder_logits(module: nn.Module, model: ModernBertModel, states) -> jax.Array:
    """The masked-LM decoder tied to the token embeddings, with its bias ('decoder'): float32 logits."""
    cfg = module.config
    table = model.variables["params"]["embeddings"]["tok_embeddings"]["embedding"].astype(states.dtype)
    table = jnp.pad(table, ((0, cfg.padded_vocab_size - cfg.vocab_size), (0, 0)))
    logits = jnp.einsum("...h,vh->...v", states, table, preferred_element_type=jnp.float32)[..., : cfg.vocab_size]
    if cfg.decoder_bias:
        logits = logits + _DecoderBias(cfg, name="decoder")().astype(jnp.float32)
    return logits


class _DecoderBias(nn.Module):
    config: ModernBertConfig

    @nn.compact
    def __call__(self):
        return self.param("bias", nn.initializers.zeros, (self.config.vocab_size,), self.config.params_dtype)


class ModernBertForMaskedLM(nn.Module):
    """Encoder + prediction head + tied decoder: {"mlm_logits": [batch, max_predictions, vocab]} at
    masked_positions (every position without them), float32."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, masked_positions=None, deterministic=True):
        model = ModernBertModel(self.config, name="model")
        hidden = model(input_ids, attention_mask, position_ids, None, deterministic)
        if masked_positions is not None:
            hidden = gather_positions(hidden, masked_positions)
        states = ModernBertPredictionHead(self.config, name="head")(hidden)
        return {"mlm_logits": _decoder_logits(self, model, states)}


def _pooled(config: ModernBertConfig, hidden, attention_mask, segment_ids, cls_positions):
    """What a sequence classifier reads: the first token of each text (classifier_pooling cls) or the
    mean of its real tokens (mean); [batch, hidden], or [batch, texts, hidden] for packed rows."""
    if config.classifier_pooling == "cls":
        if cls_positions is None:
            return hidden[:, 0]
        return gather_positions(hidden, cls_positions)
    if attention_mask is None:
        attention_mask = jnp.ones(hidden.shape[:2], jnp.int32)
    if cls_positions is None:
        weights = attention_mask.astype(hidden.dtype)[..., None]  # [batch, seq, 1]
        return jnp.sum(hidden * weights, axis=1) / jnp.sum(weights, axis=1)
    texts = jnp.arange(1, cls_positions.shape[1] + 1)
    weights = (segment_ids[:, :, None] == texts[None, None, :]).astype(hidden.dtype)  # [batch, seq, texts]
    sums = jnp.einsum("bst,bsh->bth", weights, hidden)
    return sums / jnp.maximum(jnp.sum(weights, axis=1), 1.0)[..., None]


class ModernBertForSequenceClassification(nn.Module):
    """Encoder + pooling (cls or mean) + prediction head + dropout + classifier: {"logits":
    [batch, num_labels]} ([batch, texts, num_labels] for packed rows, cls_positions saying where
    each text starts), float32. num_labels=1: regression. With `mlm`, "mlm_logits" at
    masked_positions too, through the same prediction head (Hugging Face's ForMaskedLM and
    classifiers share its weights) and the tied decoder."""

    config: ModernBertConfig
    num_labels: int
    mlm: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        masked_positions=None,
        deterministic: bool = True,
        segment_ids=None,
        cls_positions=None,
    ) -> dict[str, jax.Array]:
        cfg = self.config
        model = ModernBertModel(cfg, name="model")
        hidden = model(input_ids, attention_mask, position_ids, segment_ids, deterministic)
        head = ModernBertPredictionHead(cfg, name="head")
        pooled = head(_pooled(cfg, hidden, attention_mask, segment_ids, cls_positions))
        pooled = Dropout(cfg.classifier_dropout)(pooled, deterministic=deterministic)
        logits = nn.Dense(
            self.num_labels,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            kernel_init=_init(cfg),
            name="classifier",
        )(pooled).astype(jnp.float32)
        return _with_mlm(self, model, head, hidden, masked_positions, logits)


class ModernBertForTokenClassification(nn.Module):
    """Encoder + prediction head + dropout + a classifier per token: {"logits": [batch, seq,
    num_labels]}, float32. The classifier is 'token_classifier' in jft's tree (a sequence
    classifier's has the same shapes), 'classifier' in Hugging Face's. `mlm` as the sequence
    classifier's. Question answering's span head is this with 2 outputs, named 'qa_outputs'
    (ModernBertForQuestionAnswering's 'classifier')."""

    config: ModernBertConfig
    num_labels: int
    mlm: bool = False
    head_name: str = "token_classifier"

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        masked_positions=None,
        deterministic: bool = True,
        segment_ids=None,
    ) -> dict[str, jax.Array]:
        cfg = self.config
        model = ModernBertModel(cfg, name="model")
        hidden = model(input_ids, attention_mask, position_ids, segment_ids, deterministic)
        head = ModernBertPredictionHead(cfg, name="head")
        states = Dropout(cfg.classifier_dropout)(head(hidden), deterministic=deterministic)
        logits = nn.Dense(
            self.num_labels,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            kernel_init=_init(cfg),
            name=self.head_name,
        )(states).astype(jnp.float32)
        return _with_mlm(self, model, head, hidden, masked_positions, logits)


def _with_mlm(module, model, head, hidden, masked_positions, logits) -> dict[str, jax.Array]:
    """A task model's outputs: its logits, and the MLM logits at masked_positions when it has the
    masked-LM decoder (`mlm`) and is given them."""
    if not module.mlm:
        return {"logits": logits}
    positions = jnp.zeros((hidden.shape[0], 0), jnp.int32) if masked_positions is None else masked_positions
    mlm_logits = _decoder_logits(
        module, model, head(gather_positions(hidden, positions))
    )  # the decoder's bias from init on
    return {"logits": logits} if masked_positions is None else {"logits": logits, "mlm_logits": mlm_logits}


class ModernBertEncoderOnly(nn.Module):
    """The bare encoder (ModernBertModel), under 'model': {"hidden": [batch, seq, hidden]}."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, position_ids=None, deterministic: bool = True):
        hidden = ModernBertModel(self.config, name="model")(
            input_ids, attention_mask, position_ids, None, deterministic
        )
        return {"hidden": hidden}


def build(config: ModernBertConfig, head: Head) -> nn.Module:
    """The ModernBERT module with `head` (jft.models.family.Head); pretraining is masked-LM alone."""
    if head.kind == "pretraining":
        return ModernBertForMaskedLM(config)
    if head.kind == "classification":
        return ModernBertForSequenceClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    if head.kind == "token_classification":
        return ModernBertForTokenClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    if head.kind == "question_answering":
        return ModernBertForTokenClassification(config, 2, mlm=head.mlm, head_name="qa_outputs")
    if head.kind == "multiple_choice":  # ModernBertForMultipleChoice: a score a candidate, from the pooled output
        return ModernBertForSequenceClassification(config, 1, mlm=head.mlm)
    return ModernBertEncoderOnly(config)

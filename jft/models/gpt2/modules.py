"""GPT-2 in Flax linen: token and position embeddings, pre-LayerNorm decoder layers looping over a
stack, the final LayerNorm, the LM head tied to the token embeddings, and the task heads.

Sub-module names follow Hugging Face's GPT-2 (transformer/wte, wpe, h, ln_f; score, classifier) so
weights map one to one; as in jft's BERT, the layers (h) are stored once with a leading [n_layer]
axis and run as one loop (jft.models.gpt2.weights numbers them at the Hugging Face boundary).
Linear layers are Flax's Dense, kernel [in, out] (Hugging Face's PyTorch Conv1D stores the same).

Rows are padded on the right, except a prompt for generation with the KV cache (init_cache), which
is padded on the left and given its position_ids.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jft.errors import JftError
from jft.models.bert.modules import ACTIVATION_FNS, init_params
from jft.models.family import Head
from jft.models.gpt2.config import Gpt2Config
from jft.models.layers import Dropout, Embed, attention, attention_mask_4d, gather_positions, rematerialised

# transformers' GPT2ForTokenClassification drops this before its classifier when config.json sets
# no classifier_dropout (it does not read resid_pdrop).
TOKEN_CLASSIFIER_DROPOUT = 0.1


def _dense(config: Gpt2Config, features: int, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=config.compute_dtype,
        param_dtype=config.params_dtype,
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


def _layer_norm(config: Gpt2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon, dtype=config.compute_dtype, param_dtype=config.params_dtype, name=name
    )


def init_cache(config: Gpt2Config, batch: int, max_len: int, dtype=None) -> dict[str, jax.Array]:
    """An empty KV cache for generation with the LM model (Gpt2LMHeadModel's `cache`):
    {"key", "value": [n_layer, batch, max_len, n_head, head_dim] (dtype; None: the compute dtype),
    "mask": [batch, max_len] bool (which slots hold real tokens), "index": int32 scalar (slots
    filled so far)}."""
    shape = (config.n_layer, batch, max_len, config.n_head, config.head_dim)
    dtype = config.compute_dtype if dtype is None else dtype
    return {
        "key": jnp.zeros(shape, dtype),
        "value": jnp.zeros(shape, dtype),
        "mask": jnp.zeros((batch, max_len), bool),
        "index": jnp.zeros((), jnp.int32),
    }


class Gpt2Attention(nn.Module):
    """Causal multi-head self-attention (c_attn: query, key and value in one matmul; c_proj)."""

    config: Gpt2Config

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, kv=None, index=None):
        """x: [batch, n, n_embd]; mask: `attention`'s (key padding or packed examples), which adds
        the causal mask. Given kv, this layer's cached (key, value) [batch, max_len, n_head,
        head_dim], the new keys and values are written at slots [index, index + n) and the queries
        attend over all slots with mask [batch, 1, n, max_len], causal already. Returns the output
        [batch, n, n_embd] and the updated (key, value), or None without kv."""
        cfg = self.config

        def heads(y):
            return y.reshape(*y.shape[:-1], cfg.n_head, cfg.head_dim)

        q, k, v = (heads(y) for y in jnp.split(_dense(cfg, 3 * cfg.n_embd, "c_attn")(x), 3, axis=-1))
        rate = cfg.attn_pdrop
        dropout_rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        if kv is None:
            out = attention(
                q,
                k,
                v,
                mask,
                implementation=cfg.attention_impl,
                dropout_rate=rate,
                dropout_rng=dropout_rng,
                causal=True,
            )
        else:
            kv = tuple(jax.lax.dynamic_update_slice(c, y.astype(c.dtype), (0, index, 0, 0)) for c, y in zip(kv, (k, v)))
            # XLA's attention: a few new queries over the cache, where the kernels' blocks would be mostly empty
            k, v = (c.astype(q.dtype) for c in kv)
            out = attention(q, k, v, mask, implementation="xla", dropout_rate=rate, dropout_rng=dropout_rng)
        out = _dense(cfg, cfg.n_embd, "c_proj")(out.reshape(x.shape))
        return Dropout(cfg.resid_pdrop)(out, deterministic=deterministic), kv


class Gpt2MLP(nn.Module):
    config: Gpt2Config

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config
        x = ACTIVATION_FNS[cfg.activation_function](_dense(cfg, cfg.intermediate_size, "c_fc")(x))
        x = _dense(cfg, cfg.n_embd, "c_proj")(x)
        return Dropout(cfg.resid_pdrop)(x, deterministic=deterministic)


class Gpt2Block(nn.Module):
    """One pre-LayerNorm block: x + attn(ln_1(x)), then + mlp(ln_2(x)); [batch, n, n_embd] in and out,
    and the layer's updated cache (Gpt2Attention)."""

    config: Gpt2Config

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, kv=None, index=None):
        cfg = self.config
        attended, kv = Gpt2Attention(cfg, name="attn")(_layer_norm(cfg, "ln_1")(x), mask, deterministic, kv, index)
        x = x + attended
        return x + Gpt2MLP(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x), deterministic), kv


class Gpt2Model(nn.Module):
    """The decoder: token ids to hidden states [batch, seq, n_embd] (after ln_f), and the updated cache.

    Packed rows (several documents a row) give segment_ids (1, 2, ... per document, 0 for
    padding: tokens attend within their own document) and position_ids restarting at each.
    The layers are stored and run as BERT's encoder's (jft.models.bert.modules.BertEncoder): one
    loop (jax.lax.scan) over the stack, unrolled with scan_layers=False, rematerialised by the same
    policies; with the cache, each layer's slice of it goes through the loop with its weights.
    """

    config: Gpt2Config

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        cache: dict | None = None,
    ) -> tuple[jax.Array, dict | None]:
        """input_ids, attention_mask (1 = token), position_ids, segment_ids: [batch, seq]; cache:
        init_cache's (then position_ids are needed, and no segment_ids)."""
        cfg = self.config
        length = input_ids.shape[-1] if cache is None else cache["mask"].shape[-1]
        if length > cfg.n_positions:
            raise JftError(
                f"sequences of {length} tokens are longer than the position table (n_positions={cfg.n_positions}); "
                f"truncate them to {cfg.n_positions} tokens or use a model with a larger position table."
            )
        if cache is not None and (position_ids is None or segment_ids is not None):
            raise JftError(
                "with the KV cache, give position_ids (a left-padded prompt's: cumsum(mask) - 1) and no segment_ids."
            )
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)

        def embed(num, name):
            return Embed(
                num,
                cfg.n_embd,
                embedding_init=nn.initializers.normal(cfg.initializer_range),
                dtype=cfg.compute_dtype,
                param_dtype=cfg.params_dtype,
                name=name,
            )

        x = embed(cfg.vocab_size, "wte")(input_ids) + embed(cfg.n_positions, "wpe")(position_ids)
        x = Dropout(cfg.embd_pdrop)(x, deterministic=deterministic)
        kv = index = None
        if cache is not None:
            index = cache["index"]
            slots = jax.lax.dynamic_update_slice(cache["mask"], attention_mask.astype(bool), (0, index))
            queries = index + jnp.arange(input_ids.shape[-1])
            # the query at slot index + i sees the filled slots j <= index + i
            mask = slots[:, None, None, :] & (jnp.arange(slots.shape[-1]) <= queries[:, None])[None, None]
            kv = (cache["key"], cache["value"])
        elif cfg.attention_impl == "splash":  # the kernel takes the segments themselves
            mask = attention_mask if segment_ids is None else segment_ids
        else:
            mask = attention_mask_4d(attention_mask, segment_ids)
        stack = self.param("h", self._init_stack)
        keys = None if deterministic else jax.random.split(self.make_rng("dropout"), cfg.n_layer)
        x, kv = _run_layers(cfg, stack, x, mask, deterministic, keys, kv, index)
        x = _layer_norm(cfg, "ln_f")(x)
        if cache is None:
            return x, None
        return x, {"key": kv[0], "value": kv[1], "mask": slots, "index": index + input_ids.shape[-1]}

    def _init_stack(self, key: jax.Array) -> dict:
        """n_layer independent initialisations of one block, stacked."""
        cfg = self.config
        x = jnp.zeros((1, 1, cfg.n_embd), cfg.compute_dtype)
        # the parameters do not depend on the attention kernel: XLA's initialises them anywhere
        plain = Gpt2Block(dataclasses.replace(cfg, attention_impl="xla"))

        def one(layer_key):
            return plain.init(layer_key, x, jnp.ones((1, 1, 1, 1), bool), True)["params"]

        return jax.vmap(one)(jax.random.split(key, cfg.n_layer))


def _run_layers(config: Gpt2Config, stack, x, mask, deterministic: bool, keys, kv, index):
    """The n_layer blocks over x, as BertEncoder runs its layers (its docstring says why these remat
    policies): stack, the blocks' parameters, and keys, their dropout keys (or None), stacked over
    the layers; kv: the cache's (key, value) stacked likewise, or None. Returns x and the new kv."""
    layer = Gpt2Block(config)

    def run(params, x, key, layer_kv):
        rngs = None if key is None else {"dropout": key}
        return layer.apply({"params": params}, x, mask, deterministic, layer_kv, index, rngs=rngs)

    run = rematerialised(run, config.remat, config.scan_layers)

    def body(x, xs):
        params, key, layer_kv = xs
        return run(params, x, key, layer_kv)

    return jax.lax.scan(body, x, (stack, keys, kv), unroll=not config.scan_layers)


def _lm_logits(config: Gpt2Config, transformer: Gpt2Model, hidden: jax.Array) -> jax.Array:
    """The LM head tied to wte (no bias): [..., n_embd] -> float32 [..., vocab_size]. Zero rows up to
    padded_vocab_size give the matmul an aligned width; the slice drops their logits (and, in the
    backward pass, their gradients) at once."""
    wte = transformer.variables["params"]["wte"]["embedding"]
    table = jnp.pad(wte.astype(hidden.dtype), ((0, config.padded_vocab_size - config.vocab_size), (0, 0)))
    # float32 logits: the softmax over the vocabulary must not run in bf16.
    logits = jnp.einsum("...h,vh->...v", hidden, table, preferred_element_type=jnp.float32)
    return logits[..., : config.vocab_size]


class Gpt2LMHeadModel(nn.Module):
    """Decoder + LM head tied to the token embeddings (HF's GPT2LMHeadModel):
    {"lm_logits": [batch, seq, vocab_size]} float32, the next token's logits at every position.

    Packed rows give segment_ids and position_ids (Gpt2Model). With `cache` (init_cache's; a
    left-padded prompt, then a token at a time, each with its position_ids), the new tokens'
    keys and values are written at the cache's next slots and the output adds the updated "cache".
    """

    config: Gpt2Config

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        segment_ids=None,
        deterministic: bool = True,
        cache=None,
    ) -> dict:
        transformer = Gpt2Model(self.config, name="transformer")
        hidden, cache = transformer(input_ids, attention_mask, position_ids, segment_ids, deterministic, cache)
        out = {"lm_logits": _lm_logits(self.config, transformer, hidden)}
        return out if cache is None else {**out, "cache": cache}


class Gpt2ForSequenceClassification(nn.Module):
    """Decoder + linear score (no bias) on each row's last real token (HF's
    GPT2ForSequenceClassification with pad_token_id set; rows padded on the right):
    {"logits": [batch, num_labels]} float32. num_labels=1 gives a regression head.

    Packed rows (segment_ids, position_ids, and cls_positions [batch, examples], of which only the
    shape is read) give [batch, examples, num_labels], each example's from its segment's last token
    (an empty slot reads position 0). With `mlm` (the joint objective), the output adds the same
    forward pass's "lm_logits" [batch, seq, vocab_size] from the tied LM head.
    """

    config: Gpt2Config
    num_labels: int
    mlm: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        segment_ids=None,
        cls_positions=None,
        deterministic: bool = True,
    ) -> dict[str, jax.Array]:
        transformer = Gpt2Model(self.config, name="transformer")
        hidden, _ = transformer(input_ids, attention_mask, position_ids, segment_ids, deterministic)
        if segment_ids is None or cls_positions is None:
            real = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
            last = jnp.maximum(jnp.sum(real, axis=-1, dtype=jnp.int32) - 1, 0)[:, None]
            rows = gather_positions(hidden, last)[:, 0]
        else:
            examples = jnp.arange(1, cls_positions.shape[-1] + 1, dtype=segment_ids.dtype)
            in_example = segment_ids[:, None, :] == examples[None, :, None]  # [batch, examples, seq]
            last = jnp.max(jnp.where(in_example, jnp.arange(input_ids.shape[-1]), 0), axis=-1)
            rows = gather_positions(hidden, last)
        logits = _dense(self.config, self.num_labels, "score", use_bias=False)(rows).astype(jnp.float32)
        return _with_lm(self, transformer, hidden, logits)


class Gpt2ForTokenClassification(nn.Module):
    """Decoder + dropout + linear classifier per token (HF's GPT2ForTokenClassification):
    {"logits": [batch, seq, num_labels]} float32. Packed rows give segment_ids and position_ids;
    `mlm` as in Gpt2ForSequenceClassification."""

    config: Gpt2Config
    num_labels: int
    mlm: bool = False

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, position_ids=None, segment_ids=None, deterministic: bool = True
    ) -> dict[str, jax.Array]:
        cfg = self.config
        transformer = Gpt2Model(cfg, name="transformer")
        hidden, _ = transformer(input_ids, attention_mask, position_ids, segment_ids, deterministic)
        rate = TOKEN_CLASSIFIER_DROPOUT if cfg.classifier_dropout is None else cfg.classifier_dropout
        x = Dropout(rate)(hidden, deterministic=deterministic)
        logits = _dense(cfg, self.num_labels, "classifier")(x).astype(jnp.float32)
        return _with_lm(self, transformer, hidden, logits)


class Gpt2EncoderOnly(nn.Module):
    """The bare decoder (HF's GPT2Model), under 'transformer' as in every other head's tree:
    {"hidden": [batch, seq, n_embd]} float32, after ln_f."""

    config: Gpt2Config

    @nn.compact
    def __call__(
        self, input_ids, attention_mask=None, position_ids=None, segment_ids=None, deterministic: bool = True
    ) -> dict[str, jax.Array]:
        transformer = Gpt2Model(self.config, name="transformer")
        hidden, _ = transformer(input_ids, attention_mask, position_ids, segment_ids, deterministic)
        return {"hidden": hidden.astype(jnp.float32)}


def _with_lm(model: nn.Module, transformer: Gpt2Model, hidden, logits) -> dict[str, jax.Array]:
    """A task model's outputs: its logits, and with `mlm` the tied LM head's at every position."""
    if not model.mlm:
        return {"logits": logits}
    return {"logits": logits, "lm_logits": _lm_logits(model.config, transformer, hidden)}


def build(config: Gpt2Config, head: Head) -> nn.Module:
    """The GPT-2 module with `head` (jft.models.family.Head)."""
    if head.kind == "pretraining":
        return Gpt2LMHeadModel(config)
    if head.kind == "classification":
        return Gpt2ForSequenceClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    if head.kind == "token_classification":
        return Gpt2ForTokenClassification(config, max(head.num_labels, 1), mlm=head.mlm)
    return Gpt2EncoderOnly(config)


__all__ = [
    "Gpt2EncoderOnly",
    "Gpt2ForSequenceClassification",
    "Gpt2ForTokenClassification",
    "Gpt2LMHeadModel",
    "Gpt2Model",
    "build",
    "init_cache",
    "init_params",
]

"""Layers every family of models shares: attention (XLA's, cuDNN's, TPU splash), dropout, gathers.

Attention works on [batch, seq, heads, head_dim] with a boolean mask [batch, 1, q, k] (or
[batch, 1, 1, k] for key padding alone); splash takes the [batch, seq] segments instead. With
`causal` (a decoder's attention) each query also sees only the keys at or before its own position.
"""

import contextlib
import contextvars
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# (mesh, axis, whether the parameters are split) while a global-view step is traced, its rows
# split over the mesh's axis (jft.train.parallel: shard_state "optimizer" or "all"); None otherwise.
_GLOBAL_VIEW: contextvars.ContextVar = contextvars.ContextVar("global_view", default=None)


@contextlib.contextmanager
def global_view(mesh: Mesh, axis: str, split_parameters: bool):
    """While tracing a step in the global view (jit over arrays whose rows are split over `axis` of
    `mesh`): kernels XLA cannot partition (splash attention) run a device's rows each; and with
    split_parameters (FSDP) each layer of a layer loop gathers its own parameters (gathered) and the
    activations' rows stay split (rows_split), so XLA gathers weights, a layer at a time, not activations."""
    token = _GLOBAL_VIEW.set((mesh, axis, split_parameters))
    try:
        yield
    finally:
        _GLOBAL_VIEW.reset(token)


def in_global_view() -> bool:
    """Whether a global-view step is being traced."""
    return _GLOBAL_VIEW.get() is not None


def _split_parameters():
    view = _GLOBAL_VIEW.get()
    return view if view is not None and view[2] else None


def gathered(params):
    """params whole on every device inside a split-parameter step (an all-gather, its gradient a
    reduce-scatter); else as they are."""
    split = _split_parameters()
    if split is None:
        return params
    return jax.lax.with_sharding_constraint(params, NamedSharding(split[0], P()))


def rows_split(tree):
    """Each array of tree with its rows (first axis) split over the devices inside a
    split-parameter step, where they divide; else as they are."""
    split = _split_parameters()
    if split is None:
        return tree
    mesh, axis, _ = split

    def constrain(x):
        if not hasattr(x, "ndim") or x.ndim == 0 or x.shape[0] % mesh.shape[axis]:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axis)))

    return jax.tree.map(constrain, tree)


def attention_mask_4d(attention_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Boolean [batch, 1, q, k] (or [batch, 1, 1, k]) mask: keys that are real tokens, same segment.

    attention_mask: [batch, seq], 1 for tokens and 0 for padding.
    segment_ids: optional [batch, seq] ids of packed examples; tokens attend within their own.
    """
    keys = attention_mask.astype(bool)[:, None, None, :]
    if segment_ids is None:
        return keys
    same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return keys & same_segment


def rematerialised(run, remat: str, scan_layers: bool):
    """A layer function `run` as a family's layer loop runs it: remat "none" keeps the matmuls'
    outputs only (in a scanned loop, the elementwise work is recomputed inside the backward pass's
    fusions: jft.models.bert.modules.BertEncoder says why), "dots" keeps those without batch
    dimensions too, "full" keeps only the layer's input; unrolled with remat "none", as it is."""
    policy = {
        "full": None,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "none": jax.checkpoint_policies.dots_saveable,
    }[remat]
    if _split_parameters() is not None:  # FSDP: a layer gathers its parameters, its rows stay split
        run = functools.partial(_gathering_layer, run)
    if remat == "none" and not scan_layers:
        return run
    return jax.checkpoint(run, policy=policy, prevent_cse=not scan_layers)  # CSE would undo it unrolled


def _gathering_layer(run, params, x, *args, **kwargs):
    """run on the layer's gathered parameters, its input's and output's rows split over the devices
    (under jax.checkpoint the gather is not saved: the backward pass gathers again, as FSDP does)."""
    return rows_split(run(gathered(params), rows_split(x), *args, **kwargs))


def causal_mask(queries: int, keys: int) -> jax.Array:
    """Boolean [1, 1, queries, keys]: query i sees keys j <= i (both counted from the row's start)."""
    return jnp.tril(jnp.ones((queries, keys), bool))[None, None]


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    *,
    implementation: str,
    dropout_rate: float,
    dropout_rng: jax.Array | None,
    causal: bool = False,
    window: int | None = None,
) -> jax.Array:
    """Scaled dot-product attention over [batch, seq, heads, head_dim] with a boolean mask.

    "xla" spells the computation out, heads first: q, k and v are laid out [batch, heads, seq,
    head_dim] before both products, which XLA:CPU runs in 0.7x the time of the same products over
    [batch, seq, heads, head_dim] (jax.nn.dot_product_attention's layout; forward and backward,
    batch 16, seq 128, 4 heads of 64: benchmarks/attention_layout.py). Logits and softmax are float32
    whatever the compute dtype; with dropout (XLA only; BertConfig forbids it for the kernels) it is
    applied to the probabilities, as BERT does. "cudnn" is jax.nn.dot_product_attention's cuDNN
    kernel; for "splash" the mask is the [batch, seq] segments that `splash_attention` takes.
    causal: each query also sees only the keys at or before it (the mask and causal_mask combined).
    window: each query also sees only the keys at most `window` positions away (sliding-window
    attention: ModernBERT's local layers); the kernels skip the blocks outside the band.
    """
    if implementation == "splash":
        return splash_attention(query, key, value, mask, causal=causal, window=window)
    if implementation != "xla":
        return fused_attention(query, key, value, mask, implementation, causal=causal, window=window)
    if causal:
        mask = mask & causal_mask(query.shape[1], key.shape[1])
    if window is not None:
        mask = mask & band_mask(query.shape[1], key.shape[1], window)
    query, key, value = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))  # [batch, heads, seq, head_dim]
    logits = jnp.einsum("bnth,bnsh->bnts", query, key, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(query.shape[-1])
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        probs = jnp.where(kept(dropout_rng, dropout_rate, probs.shape), probs / (1.0 - dropout_rate), 0.0)
    return jnp.swapaxes(jnp.einsum("bnts,bnsh->bnth", probs.astype(value.dtype), value), 1, 2)


def band_mask(queries: int, keys: int, window: int) -> jax.Array:
    """Boolean [1, 1, queries, keys]: query i sees keys j with |i - j| <= window (row positions)."""
    distance = jnp.arange(queries)[:, None] - jnp.arange(keys)[None, :]
    return (jnp.abs(distance) <= window)[None, None]


def fused_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    implementation: str,
    causal: bool = False,
    window: int | None = None,
):
    """jax.nn.dot_product_attention's kernel (cuDNN). A key-padding mask [batch, 1, 1, seq] goes in as
    each row's number of real keys (rows are padded on the right), which the kernel skips; cuDNN
    takes a boolean mask only at its full [batch, 1, q, k] size, as a bias. causal: the kernel's own
    causal mask on top (it skips the blocks above the diagonal); window: its sliding window."""
    options = dict(is_causal=causal, implementation=implementation)
    if window is not None:
        options["local_window_size"] = (window, window)
    if mask.shape[2] == 1:
        lengths = mask[:, 0, 0, :].sum(axis=-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(query, key, value, key_value_seq_lengths=lengths, **options)
    return jax.nn.dot_product_attention(query, key, value, mask=mask, **options)


_BATCH_ROWS: contextvars.ContextVar = contextvars.ContextVar("batch_rows", default=None)


@contextlib.contextmanager
def batch_rows(row_ids: jax.Array):
    """While tracing a model on some rows of a batch: row_ids [rows] are their places in the whole
    batch (a device's rows, a micro-batch's), by which dropout draws each row's mask (kept)."""
    token = _BATCH_ROWS.set(row_ids)
    try:
        yield
    finally:
        _BATCH_ROWS.reset(token)


def kept(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Which values of a [rows, ...] array dropout keeps: each with probability 1 - rate, to within
    2^-17, from 16 random bits a value. The bits of four values are one threefry2x32 hash under key
    of (the row's place in the whole batch, batch_rows; else its index, the hash's index in the row),
    so a row's mask is the same whichever device or micro-batch holds it: n devices and gradient
    accumulation draw one device's masks for the whole batch (benchmarks/dropout_bits.py: its time
    and memory against jax.random's)."""
    threshold = round((1.0 - rate) * 2**16)
    if threshold >= 2**16:
        return jnp.ones(shape, bool)
    rows = _BATCH_ROWS.get()
    rows = jnp.arange(shape[0]) if rows is None else rows
    if rows.shape != shape[:1]:
        raise ValueError(f"dropout over {shape}: its rows are not the batch's {rows.shape[0]} (batch_rows)")
    per_row = math.prod(shape[1:])
    hashes = (shape[0], -(-per_row // 4))
    words = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if words.shape != (2,):  # another generator's key: two words of its bits as the hash's key
        words = jax.random.bits(key, (2,), jnp.uint32)
    y0, y1 = threefry2x32_p.bind(  # the key as two scalars: broadcast arrays would make its schedule a value's work
        words[0],
        words[1],
        jnp.broadcast_to(rows.astype(jnp.uint32)[:, None], hashes),
        jax.lax.broadcasted_iota(jnp.uint32, hashes, 1),
    )
    # a row's values in four runs (each hash's four halves apart): no [..., 4] array, whose minor
    # dimension of 4 a TPU would pad (BERT-base, seq 512, v6e: 31.5 GiB a device against 35.4)
    halves = (y0 & 0xFFFF, y0 >> 16, y1 & 0xFFFF, y1 >> 16)
    return jnp.concatenate([half < threshold for half in halves], 1)[:, :per_row].reshape(shape)


class Dropout(nn.Module):
    """Dropout as flax's nn.Dropout (inverted: kept values scaled by 1 / (1 - rate)), its mask by `kept`."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = kept(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))


class Embed(nn.Embed):
    """flax's nn.Embed (the same parameter, the same values out), its rows taken from the stored
    table (float32) and then cast to dtype. nn.Embed casts the whole table first, so its gradient is
    a scatter-add in dtype, and in bfloat16 a GPU serialises it on the rows many tokens share
    ([MASK], padding, token type 0): on an H100 the token-type and word tables' scatters took 149
    of a BERT-base pretraining step's 224 ms, in float32 under 3 (RESULTS.md, third GPU run).
    Taken from the float32 table, the gradient's scatter is float32."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"embedding lookups take integer ids, not {inputs.dtype}")
        if self.num_embeddings == 1:  # as nn.Embed: the one row whatever the ids (RoBERTa's token types)
            rows = jnp.broadcast_to(self.embedding, (*inputs.shape, self.features))
        else:
            rows = jnp.take(self.embedding, inputs, axis=0)
        return rows if self.dtype is None else rows.astype(self.dtype)


# Pallas's interpreter instead of the TPU kernel (tests on a CPU set it; a TPU never needs it).
SPLASH_INTERPRET = False
SPLASH_BLOCK = 128


def splash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    segments: jax.Array,
    causal: bool = False,
    window: int | None = None,
) -> jax.Array:
    """Attention over [batch, seq, heads, head_dim] by Pallas's TPU splash kernel: blockwise, the
    [seq, seq] probabilities never stored; segment ids mask within each block.

    segments: [batch, seq] int, tokens attend to keys of their own segment: the packed example ids,
    or the attention mask (1 for tokens, 0 for padding, whose outputs nothing reads).
    causal: each query also sees only the keys at or before it (the kernel skips the blocks above
    the diagonal). window: only the keys at most `window` positions away (the blocks outside the
    band skipped)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    _, seq, heads, head_dim = query.shape
    # The kernel works in blocks of 128 tokens: a shorter row is padded with a segment of its own.
    blocks = -(-seq // SPLASH_BLOCK) * SPLASH_BLOCK
    query, key, value = (jnp.pad(x, ((0, 0), (0, blocks - seq), (0, 0), (0, 0))) for x in (query, key, value))
    segments = jnp.pad(segments.astype(jnp.int32), ((0, 0), (0, blocks - seq)), constant_values=-1)
    if window is not None:
        block_mask = masks.LocalMask((blocks, blocks), window_size=(window, 0 if causal else window), offset=0)
    elif causal:
        block_mask = masks.CausalMask((blocks, blocks))
    else:
        block_mask = masks.FullMask((blocks, blocks))
    kernel = splash.make_splash_mha(
        masks.MultiHeadMask([block_mask] * heads),
        head_shards=1,
        q_seq_shards=1,
        interpret=SPLASH_INTERPRET,
    )
    query = query / jnp.asarray(math.sqrt(head_dim), query.dtype)
    heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # [batch, heads, seq, head_dim]

    def one(q, k, v, ids):
        return kernel(q, k, v, segment_ids=splash.SegmentIds(q=ids, kv=ids))

    def rows(q, k, v, ids):
        return jax.vmap(one)(q, k, v, ids)

    view = _GLOBAL_VIEW.get()
    if view is not None and query.shape[0] % view[0].shape[view[1]] == 0:  # XLA cannot split a Mosaic kernel
        rows = jax.shard_map(rows, mesh=view[0], in_specs=P(view[1]), out_specs=P(view[1]), check_vma=False)
    out = rows(heads_first(query), heads_first(key), heads_first(value), segments)
    return heads_first(out)[:, :seq]


def query_rows_mask(mask: jax.Array, positions: jax.Array, implementation: str) -> jax.Array:
    """The attention mask of the query rows at positions [batch, n], for XLA's attention: a 4-D
    mask's rows gathered, or splash's [batch, seq] segments turned into a [batch, 1, n, seq] one."""
    if implementation == "splash":
        queries = jnp.take_along_axis(mask, positions, axis=1)
        return queries[:, None, :, None] == mask[:, None, None, :]
    if mask.shape[2] == 1:  # the same keys for every query
        return mask
    return jnp.take_along_axis(mask, positions[:, None, :, None], axis=2)


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """hidden: [batch, seq, hidden], positions: [batch, n] int -> [batch, n, hidden]."""
    return jnp.take_along_axis(hidden, positions[..., None], axis=1)

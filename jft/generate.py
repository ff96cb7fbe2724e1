"""`jft generate`: text from a next-word model (a jft run or a Hugging Face GPT-2 directory).

    jft generate --workdir runs/gpt2-tiny "The cat" --max-new-tokens 40             # greedy
    jft generate --workdir runs/gpt2-tiny --prompts prompts.txt --temperature 0.8 --top-k 40 --json

The prompts of a call go as one batch, left-padded to the longest: the prompt is read into the
model's key/value cache in one pass, then each new token is one pass over one token per prompt,
all of it inside one compiled loop (lax.while_loop) that ends when every prompt has produced
<|endoftext|> or max_new_tokens tokens. Greedy (temperature 0) picks the likeliest token;
otherwise tokens are drawn from softmax(logits / temperature), over the top_k likeliest when
top_k > 0, with keys from the seed.
"""

import dataclasses
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jft.data.tokenizer import end_of_text_id
from jft.errors import JftError
from jft.models import Head
from jft.train import rundir

PROMPT_MULTIPLE = 16


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How each new token is chosen: greedy (temperature 0), or drawn at `temperature` from the
    top_k likeliest (0: from all)."""

    max_new_tokens: int = 50
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise JftError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if not self.temperature >= 0 or self.top_k < 0:
            raise JftError(
                f"temperature must be 0 (greedy) or more and top_k 0 (all tokens) or more, got "
                f"{self.temperature} and {self.top_k}."
            )


class Generator:
    """A next-word model ready to continue prompts: `source` is a jft run directory (its newest
    checkpoint or best model) or a Hugging Face directory with its tokenizer."""

    def __init__(self, source: str | Path):
        found = rundir.open_init(source, role="--workdir")
        if "next_word" not in found.family.objectives:
            raise JftError(
                f"--workdir {found.path} holds a {found.family.name} model, which does not predict the next word; "
                "jft generate needs a next-word model (gpt2)."
            )
        if found.tokenizer is None:
            raise JftError(f"--workdir {found.path} has no tokenizer (tokenizer.json, or vocab.json and merges.txt).")
        if found.task:  # a fine-tuned classifier's (a jft run's, or a Hugging Face head's)
            print(
                f"warning: {found.path} was fine-tuned for {found.task.get('kind', 'a task')}; its next words are what "
                "fine-tuning left of its pretraining (the next-word head is its word embeddings).",
                file=sys.stderr,
            )
        self.source, self.config, self.tokenizer = found.describe(), found.model, found.tokenizer
        self.end = end_of_text_id(self.tokenizer)
        self.family = found.family
        # A task head (a fine-tuned classifier) is left out: the next-word head is tied to the embeddings.
        self.params = {name: tree for name, tree in found.params.items() if name in ("transformer",)}
        self.module = found.family.module(self.config, Head("pretraining"))

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[dict]:
        """One {"prompt", "completion", "token_ids"} a prompt: the new tokens (up to and without
        <|endoftext|>) and their text."""
        encoded = [self.tokenizer.encode(prompt, add_special_tokens=False).ids or [self.end] for prompt in prompts]
        longest = max(len(ids) for ids in encoded)
        room = self.config.max_position_embeddings
        if longest + sampling.max_new_tokens > room:
            raise JftError(
                f"the longest prompt has {longest} tokens; with max_new_tokens {sampling.max_new_tokens} that is more "
                f"than the model's {room} positions; shorten the prompt or ask for fewer new tokens."
            )
        # Prompts padded to a multiple of PROMPT_MULTIPLE tokens (the padding is masked out): prompts of
        # other lengths share one compiled program.
        width = min(-(-longest // PROMPT_MULTIPLE) * PROMPT_MULTIPLE, room - sampling.max_new_tokens)
        ids = np.full((len(encoded), width), self.end, np.int32)
        mask = np.zeros((len(encoded), width), np.int32)
        for row, tokens in enumerate(encoded):  # left-padded: every prompt ends at the same slot
            ids[row, width - len(tokens) :] = tokens
            mask[row, width - len(tokens) :] = 1
        tokens = np.asarray(
            _generate(
                self.module,
                self.family.init_cache,
                self.params,
                ids,
                mask,
                jax.random.key(sampling.seed),
                jnp.float32(sampling.temperature),
                end=self.end,
                max_new_tokens=sampling.max_new_tokens,
                greedy=sampling.temperature == 0,
                top_k=sampling.top_k,
            )
        )
        results = []
        for prompt, row in zip(prompts, tokens):
            new = row.tolist()
            new = new[: new.index(self.end)] if self.end in new else new
            results.append({"prompt": prompt, "completion": self.tokenizer.decode(new), "token_ids": new})
        return results


@functools.partial(jax.jit, static_argnames=("module", "init_cache", "end", "max_new_tokens", "greedy", "top_k"))
def _generate(module, init_cache, params, ids, mask, key, temperature, *, end, max_new_tokens, greedy, top_k):
    """ids, mask: [batch, prompt] left-padded prompts -> [batch, max_new_tokens] new token ids,
    <|endoftext|> after a prompt's own one. init_cache: the family's empty key/value cache."""
    batch, prompt = ids.shape
    cache = init_cache(module.config, batch, prompt + max_new_tokens, module.config.compute_dtype)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    out = module.apply({"params": params}, input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)

    def choose(logits, step):
        logits = logits.astype(jnp.float32)
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = logits / temperature
        if 0 < top_k < logits.shape[-1]:  # top_k at or above the vocabulary's size: every token
            kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        return jax.random.categorical(jax.random.fold_in(key, step), logits).astype(jnp.int32)

    def body(carry):
        step, cache, logits, next_position, done, tokens = carry
        token = jnp.where(done, end, choose(logits, step))
        tokens = tokens.at[:, step].set(token)
        done = done | (token == end)
        out = module.apply(
            {"params": params},
            input_ids=token[:, None],
            attention_mask=jnp.ones((batch, 1), jnp.int32),
            position_ids=next_position[:, None],
            cache=cache,
        )
        return step + 1, out["cache"], out["lm_logits"][:, -1], next_position + 1, done, tokens

    def more(carry):
        step, *_, done, _ = carry
        return (step < max_new_tokens) & ~done.all()

    start = (
        jnp.int32(0),
        out["cache"],
        out["lm_logits"][:, -1],
        positions[:, -1] + 1,
        jnp.zeros(batch, bool),
        jnp.full((batch, max_new_tokens), end, jnp.int32),
    )
    return jax.lax.while_loop(more, body, start)[-1]

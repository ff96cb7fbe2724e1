"""A randomly initialised BERT or GPT-2, written in Hugging Face format (a from-scratch starting point).

    jft init --config configs/init.py:base --out DIR --config.format=msgpack
    jft init --config init:gpt2_small --out DIR

The text after ':' picks the size: BERT's tiny (default), mini, base or large; GPT-2's gpt2_tiny,
gpt2_small, gpt2_medium or gpt2_large (heads: pretraining is its next-word head). Any model field
can be overridden, e.g. --config.model.num_hidden_layers=6 --config.model.hidden_act=gelu_new.
"""

from ml_collections import ConfigDict

from jft.defaults import init


def get_config(size: str = "tiny") -> ConfigDict:
    if size.startswith("gpt2_"):
        return init(size.removeprefix("gpt2_"), "gpt2")
    return init(size)  # heads: pretraining (MLM + NSP), mlm (MLM only) or encoder (no heads)

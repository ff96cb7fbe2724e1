"""A randomly initialised BERT, written in Hugging Face format (a from-scratch starting point).

    jft init --config configs/init.py:base --out DIR --config.format=msgpack

The text after ':' picks the size: tiny (default), mini, base or large. Any model field can be
overridden, e.g. --config.model.num_hidden_layers=6 --config.model.hidden_act=gelu_new.
"""

from ml_collections import ConfigDict

from jft.defaults import init


def get_config(size: str = "tiny") -> ConfigDict:
    return init(size)  # heads: pretraining (MLM + NSP), mlm (MLM only) or encoder (no heads)

"""A randomly initialised BERT, GPT-2, RoBERTa / XLM-R or ModernBERT in Hugging Face format (a fresh start).

    jft init --config init:base --out DIR --config.format=msgpack
    jft init --config init:gpt2_small --out DIR
    jft init --config init:xlm_roberta_base --out DIR

The text after ':' picks the size: BERT's tiny (default), mini, base or large; GPT-2's gpt2_tiny,
gpt2_small, gpt2_medium or gpt2_large (heads: pretraining is its next-word head); RoBERTa's
roberta_tiny, roberta_base, roberta_large, or xlm_roberta_base, and ModernBERT's modernbert_tiny,
modernbert_base or modernbert_large (heads: pretraining is the masked-LM head). Any model field
can be overridden, e.g. --config.model.num_hidden_layers=6.
"""

from ml_collections import ConfigDict

from jft.defaults import init, named_sizes, roberta_vocabulary
from jft.errors import JftError


def get_config(size: str = "tiny") -> ConfigDict:
    if size not in (sizes := named_sizes(("bert", "gpt2", "roberta", "modernbert"))):
        raise JftError(f"unknown init size '{size}'; choose one of {', '.join(sizes)}.")
    if size.startswith("gpt2_"):
        return init(size.removeprefix("gpt2_"), "gpt2")
    if size.startswith("modernbert_"):
        config = init(size.removeprefix("modernbert_"), "modernbert")
        config.heads = "mlm"
        return config
    if size.startswith(("roberta_", "xlm_roberta_")):
        config = init(size.split("roberta_")[1], "roberta")
        config.model.update(roberta_vocabulary(size))
        config.heads = "mlm"
        return config
    return init(size)  # heads: pretraining (MLM + NSP), mlm (MLM only) or encoder (no heads)

"""BERT-large (24 layers, hidden 1024) with BERT-base's recipe (pretrain/base).

    jft pretrain --config pretrain/large --workdir runs/large --config.data.corpus=corpus.txt \
        --config.data.vocab=vocab.txt

For LAMB at batch 4096 (You et al., 2019): --config.optim.name=lamb --config.optim.lr=1.76e-3
--config.batch_size=4096 --config.accum_steps=16 (on one device) --config.total_steps=62500.
"""

from pathlib import Path

from jft.config import load_config
from jft.defaults import model_group


def get_config():
    config = load_config(Path(__file__).with_name("base.py"))
    config.model = model_group("large", dtype="auto")
    return config

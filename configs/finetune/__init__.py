"""Configs that ship with jft: `--config pretrain/tiny`, `--config finetune/glue.py:sst2`, or a path."""

"""jft: pretrain BERT-style encoders and fine-tune them with an L2-regularized objective, in JAX."""

__version__ = "0.1.0"

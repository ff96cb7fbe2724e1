"""Data: text in (corpus), tokens (tokenizer), prepared shards (prepare), batches (loader)."""

"""A tiny GPT-2 (2 layers, width 64) for a CPU: next-word pretraining on your own text in one command.

    jft pretrain --config pretrain/gpt2_tiny --workdir runs/gpt2-tiny --config.data.corpus=my_text.txt
    jft generate --workdir runs/gpt2-tiny "The first words of"

A byte-level BPE vocabulary (GPT-2's kind: any text, cased, no unknown token) is trained on the
corpus; its documents (a blank line between them in a .txt) are packed into rows of 128 tokens with
<|endoftext|> after each (jft prepare --mode causal), and every token learns to predict the next one
of its document. Held-out loss and perplexity are reported every eval_every steps.
"""

from jft.defaults import pretrain as default_config


def get_config():
    config = default_config("gpt2")
    config.data.mode = "causal"
    config.data.lowercase = False
    config.data.vocab_size = 4000
    config.data.seq_len = 128
    config.model.n_positions = 128
    config.batch_size = 32
    config.total_steps = 2000
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 100
    config.log_every = 20
    config.eval_every = 200
    config.checkpoint_every = 200
    return config

"""A tiny RoBERTa (2 layers, width 64) for a CPU: masked-LM pretraining on your own text in one command.

    jft pretrain --config pretrain/roberta_tiny --workdir runs/roberta-tiny --config.data.corpus=my_text.txt
    jft pretrain --config pretrain/roberta_tiny --workdir runs/xlmr-tiny --config.data.corpus=my_text.txt \\
        --config.data.vocab_kind=unigram --config.model.model_type=xlm-roberta

RoBERTa's recipe: masked-LM alone (no next-sentence task), rows packed from whole documents
(<s> ... </s>, jft prepare --mode packed), the masks drawn anew each step on the device (dynamic
masking), a byte-level BPE vocabulary with <s>, </s>, <pad>, <unk> and <mask> trained on the corpus
(or XLM-R's SentencePiece Unigram with data.vocab_kind=unigram). Continued pretraining of a Hugging
Face RoBERTa or XLM-R: --config.init_from=DIR (its vocabulary and architecture).
"""

from jft.defaults import pretrain as default_config


def get_config():
    config = default_config("roberta")
    config.data.mode = "packed"
    config.data.lowercase = False
    config.data.vocab_size = 4000
    config.data.seq_len = 128
    config.batch_size = 32
    config.total_steps = 2000
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 100
    config.log_every = 20
    config.eval_every = 200
    config.checkpoint_every = 200
    return config

"""A tiny ModernBERT (3 layers, width 64) for a CPU: masked-LM pretraining on your own text in one command.

    jft pretrain --config pretrain/modernbert_tiny --workdir runs/modernbert-tiny --config.data.corpus=my_text.txt

ModernBERT's recipe: masked-LM alone at a 30% rate, rows packed from whole documents (jft prepare
--mode packed), rotary positions, global attention every third layer and a 128-token window in the
others. A byte-level BPE vocabulary with <s>, </s>, <pad>, <unk> and <mask> is trained on the
corpus (a ModernBERT checkpoint's own vocabulary names them [CLS], [SEP], [PAD], [UNK], [MASK]:
either works). Continued pretraining of a Hugging Face ModernBERT: --config.init_from=DIR.
Fine-tune with data.layout=packed to pack several short texts a row: padding then costs nothing.
"""

from jft.defaults import pretrain as default_config


def get_config():
    config = default_config("modernbert")
    config.data.mode = "packed"
    config.data.lowercase = False
    config.data.vocab_size = 4000
    config.data.seq_len = 128
    config.masking.rate = 0.3
    config.masking.max_predictions = 40  # 30% of 128, and a few to spare
    config.batch_size = 32
    config.total_steps = 2000
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 100
    config.log_every = 20
    config.eval_every = 200
    config.checkpoint_every = 200
    return config

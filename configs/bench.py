"""`jft bench` at a real size: BERT, GPT-2 or RoBERTa / XLM-R, in bf16 with cuDNN attention, for a GPU.

    jft bench --config bench:base --config.batch_size=256 --config.seq_len=128
    jft bench --config bench:large --config.workloads=pretrain --config.seq_len=512
    jft bench --config bench:gpt2_small --config.workloads=pretrain --config.seq_len=1024
    jft bench --config bench:roberta_base --config.seq_len=512

The text after ':' picks the size: BERT's tiny, mini, base, large; GPT-2's gpt2_tiny,
gpt2_small (124M), gpt2_medium, gpt2_large (next-word pretraining over every token; its
fine-tuning workload is sequence classification from the last token); RoBERTa's roberta_tiny,
roberta_base, roberta_large and xlm_roberta_tiny, _base, _large (masked-LM alone; 250,002 tokens); ModernBERT's
modernbert_tiny, modernbert_base, modernbert_large (masked-LM at 30%: 154 predictions a row of
512; --config.seq_len=8192 for long rows); images: resnet_tiny, resnet18, resnet50, resnet101,
vgg_tiny, vgg16, vgg16_bn (at 224 pixels; pretrain is supervised on 1,000 classes, finetune on
finetune.num_labels; the seq/s column counts images). On a CPU, use `jft bench` without --config
(a tiny model in float32).

    jft bench --config bench:resnet50 --config.batch_size=256
"""

from ml_collections import ConfigDict

from jft.defaults import SIZE_PREFIXES, bench, model_fields, named_sizes, roberta_vocabulary
from jft.errors import JftError


def get_config(size: str = "base") -> ConfigDict:
    if size not in (sizes := named_sizes(SIZE_PREFIXES)):
        raise JftError(f"unknown bench size '{size}'; choose one of {', '.join(sizes)}.")
    if size.startswith(("resnet", "vgg")):
        family = "vgg" if size.startswith("vgg") else "resnet"
        preset = "tiny" if size.endswith("_tiny") else size
        config = bench(family)
        config.model = model_fields(preset, family, dtype="bfloat16")
        config.batch_size = 32 if preset == "tiny" else 256
        return config
    if size.startswith("gpt2_"):
        config = bench("gpt2")
        config.model = model_fields(
            size.removeprefix("gpt2_"),
            "gpt2",
            vocab_size=50257,
            dtype="bfloat16",
            attention_impl="cudnn",
            attn_pdrop=0.0,
        )
        config.seq_len = 1024
        config.batch_size = 32
        return config
    if size.startswith("modernbert_"):
        config = bench("modernbert")
        config.nsp = False
        config.max_predictions = 154  # 30% of 512
        config.model = model_fields(
            size.removeprefix("modernbert_"), "modernbert", dtype="bfloat16", attention_impl="cudnn"
        )
        config.seq_len = 512
        config.batch_size = 32
        return config
    if size.startswith(("roberta_", "xlm_roberta_")):
        config = bench("roberta")
        config.nsp = False
        config.model = model_fields(
            size.split("roberta_")[1],
            "roberta",
            **roberta_vocabulary(size),
            dtype="bfloat16",
            attention_impl="cudnn",
            attention_probs_dropout_prob=0.0,
        )
        config.seq_len = 512
        config.batch_size = 32
        return config
    config = bench()
    config.model = model_fields(size, dtype="bfloat16", attention_impl="cudnn", attention_probs_dropout_prob=0.0)
    config.batch_size = 256
    return config

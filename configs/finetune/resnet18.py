"""ResNet-18 at 224 × 224 fine-tuned with L2-SP on your own images (Li, Grandvalet and Davoine's setting).

    jft finetune --config finetune/resnet18 --workdir runs/task \\
        --config.init_from=runs/resnet18-pretrained --config.data.train=train/ --config.data.eval=dev/

A folder a class. init_from: a jft run of a ResNet-18, or a Hugging Face ResNet-18 directory
(microsoft/resnet-18 once downloaded, with its preprocessor); without it the model starts from
scratch (and the penalty pulls toward 0). SGD with momentum 0.9 at 0.01, λ = 0.01 toward the
pretrained weights (the new classifier outside the penalty's reference), 30 epochs.
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config("resnet")
    config.model.family = "resnet"
    config.model.preset = "resnet18"
    config.model.image_size = 224
    config.l2.reference = "auto"  # θ_ref: init_from's weights (L2-SP), 0 from scratch
    config.l2.weight = 0.01
    config.optim.name = "sgd"
    config.optim.lr = 0.01
    config.optim.decay = "cosine"
    config.epochs = 30
    config.batch_size = 64
    config.log_every = 20
    return config

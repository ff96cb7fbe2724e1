"""Supervised pretraining of a tiny ResNet on labeled images (the ImageNet recipe, small).

    jft pretrain --config pretrain/resnet_tiny --workdir runs/digits-pretrain \\
        --config.data.train=pretrain/ --config.data.eval=pretrain-dev/

The data are a folder a class (pretrain/<class>/<image>). The loss is the method's L_pre +
λ‖θ‖²: cross-entropy on these classes with an L2 penalty toward 0 (l2.weight). The run is a
pretraining run: `jft finetune --config.init_from=runs/digits-pretrain` starts from its newest
checkpoint, with a new classifier for the task's classes; `jft export` writes it as
ResNetForImageClassification with its processor. For ResNet-18/50 sizes: --config.model.preset=resnet18
(or resnet50) and --config.model.image_size=224.
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config("resnet")
    config.model.family = "resnet"
    config.model.preset = "tiny"
    config.l2.reference = "zero"  # L_pre + λ‖θ‖²
    config.l2.weight = 1e-4
    config.optim.lr = 3e-3
    config.optim.decay = "cosine"
    config.epochs = 10
    config.batch_size = 64
    config.log_every = 20
    config.data.min_crop = 0.5  # small images: crops of at least half the area
    return config

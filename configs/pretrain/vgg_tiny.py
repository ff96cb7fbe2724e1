"""Supervised pretraining of a tiny VGG (with BatchNorm) on labeled images.

    jft pretrain --config pretrain/vgg_tiny --workdir runs/vgg-pretrain \\
        --config.data.train=pretrain/ --config.data.eval=pretrain-dev/

As pretrain/resnet_tiny: a folder a class, L_pre + λ‖θ‖², the run a pretraining run that `jft
finetune --config.init_from` starts from. `jft export` writes a torchvision state dict
(model.safetensors; torchvision.models.VGG with the same layers loads it). Torchvision's sizes:
--config.model.preset=vgg16 (or vgg11, vgg13, vgg19, each also _bn) --config.model.image_size=224.
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config("vgg")
    config.model.family = "vgg"
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

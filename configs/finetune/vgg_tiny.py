"""A tiny VGG (with BatchNorm) on your own images: a folder a class, from scratch or from a pretrained run.

    jft finetune --config finetune/vgg_tiny --workdir runs/vgg-task \\
        --config.init_from=runs/vgg-pretrain --config.data.train=train/ --config.data.eval=dev/

As finetune/resnet_tiny. init_from may be a `jft pretrain` or `jft finetune` run of a VGG, or a
directory `jft export` wrote (config.json and a torchvision state dict in model.safetensors). The
hidden linear layers are the backbone's (θ_ref for L2-SP); the last one, the classifier, is new
for a task with other classes.
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config("vgg")
    config.model.family = "vgg"
    config.model.preset = "tiny"
    config.l2.reference = "auto"  # θ_ref: init_from's weights (L2-SP), 0 from scratch
    config.optim.lr = 3e-3
    config.epochs = 10
    config.batch_size = 32
    config.log_every = 10
    config.data.min_crop = 0.5  # small images: crops of at least half the area
    return config

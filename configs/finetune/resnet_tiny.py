"""A tiny ResNet on your own images: a folder a class, from scratch or from a pretrained run.

    jft finetune --config finetune/resnet_tiny --workdir runs/digits-task \\
        --config.init_from=runs/digits-pretrain --config.data.train=train/ --config.data.eval=dev/

train/ holds a folder a class (train/cat/1.png, train/dog/7.jpg, ...); any size, grayscale or
colour: images are resized to model.image_size (32 here) once, and cropped and flipped at random
on the device each step (data.augment). init_from may be a `jft pretrain` or `jft finetune` run of
an image model or a Hugging Face ResNet directory: its architecture and image size are used
(--config.model.image_size=N fine-tunes it at another size). Without it the model starts from
scratch (the tiny preset).
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config("resnet")
    config.model.family = "resnet"
    config.model.preset = "tiny"
    config.l2.reference = "auto"  # θ_ref: init_from's weights (L2-SP), 0 from scratch
    config.optim.lr = 3e-3
    config.epochs = 10
    config.batch_size = 32
    config.log_every = 10
    config.data.min_crop = 0.5  # small images: crops of at least half the area
    return config

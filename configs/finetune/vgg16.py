"""VGG-16 (with BatchNorm) at 224 × 224 fine-tuned with L2-SP on your own images.

    jft finetune --config finetune/vgg16 --workdir runs/task \\
        --config.init_from=runs/vgg16-pretrained --config.data.train=train/ --config.data.eval=dev/

A folder a class. init_from: a jft run of a VGG-16, or a directory `jft export` wrote (a
torchvision state dict with config.json); the two hidden linear layers are pretrained weights
(in θ_ref), the last one new for your classes. --config.model.preset=vgg16 for the model without
BatchNorm. SGD with momentum 0.9 at 0.01, λ = 0.01 toward the pretrained weights, 30 epochs.
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config("vgg")
    config.model.family = "vgg"
    config.model.preset = "vgg16_bn"
    config.model.image_size = 224
    config.l2.reference = "auto"  # θ_ref: init_from's weights (L2-SP), 0 from scratch
    config.l2.weight = 0.01
    config.optim.name = "sgd"
    config.optim.lr = 0.01
    config.optim.decay = "cosine"
    config.epochs = 30
    config.batch_size = 32
    config.log_every = 20
    return config

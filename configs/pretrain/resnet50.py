"""ResNet-50 pretrained on a large labeled image set at 224 × 224: the ImageNet recipe, in jft's terms.

    jft pretrain --config pretrain/resnet50 --workdir runs/resnet50 \\
        --config.data.train=imagenet/train/ --config.data.eval=imagenet/val/

SGD with Nesterov momentum 0.9, learning rate 0.1 a batch of 256 with 5% warmup and cosine decay,
label smoothing 0.1, and the method's L_pre + λ‖θ‖² with λ = 5e-5 (a weight decay of 1e-4 is
that penalty's gradient, 2λθ), BatchNorm statistics and biases as much as the kernels. The images
are decoded once by `jft prepare imagenet/train --side 224 --out prepared/train` (a memory-mapped
array, docs/images.md) or read from a TFDS dataset on disk (tfds:imagenet2012:train).
`jft bench --config bench:resnet50` times its step; `jft bench --topology v5e:2x2 --config
bench:resnet50 --largest-batch` sizes it for a TPU.
"""

from jft.defaults import finetune as default_config


def get_config():
    config = default_config("resnet")
    config.model.family = "resnet"
    config.model.preset = "resnet50"
    config.model.image_size = 224
    config.l2.reference = "zero"  # L_pre + λ‖θ‖²
    config.l2.weight = 5e-5
    config.l2.exclude_bias_and_layer_norm = False
    config.optim.name = "sgd"
    config.optim.lr = 0.1
    config.optim.decay = "cosine"
    config.optim.max_grad_norm = 0.0
    config.warmup_fraction = 0.05
    config.label_smoothing = 0.1
    config.epochs = 90
    config.batch_size = 256
    config.log_every = 100
    return config

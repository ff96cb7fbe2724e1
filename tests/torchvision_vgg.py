"""torchvision.models.vgg written out, as torchvision 0.28 defines it (cfgs, make_layers, VGG), its
fixed sizes (pool 7, hidden 4096, 512 channels) made arguments for odd-sized models.

torchvision's PyPI wheels are CUDA builds whose extension does not load beside the CPU build of
torch the tests use (libc10_cuda.so missing), so the tests build torchvision's VGG from this copy;
its state-dict names and shapes are torchvision's for every preset (tests/test_vgg_model.py)."""

import torch
from torch import nn as tnn

# torchvision/models/vgg.py
CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(cfg, batch_norm=False):
    layers, in_channels = [], 3
    for v in cfg:
        if v == "M":
            layers += [tnn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = tnn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv2d, tnn.BatchNorm2d(v), tnn.ReLU(inplace=True)] if batch_norm else [conv2d, tnn.ReLU(True)]
            in_channels = v
    return tnn.Sequential(*layers)


class TorchVGG(tnn.Module):
    """torchvision.models.VGG; pool, hidden and channels are 7, 4096 and 512 there."""

    def __init__(self, features, num_classes=1000, dropout=0.5, pool=7, hidden=4096, channels=512):
        super().__init__()
        self.features = features
        self.avgpool = tnn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = tnn.Sequential(
            tnn.Linear(channels * pool * pool, hidden),
            tnn.ReLU(True),
            tnn.Dropout(p=dropout),
            tnn.Linear(hidden, hidden),
            tnn.ReLU(True),
            tnn.Dropout(p=dropout),
            tnn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def torch_layers(config) -> list:
    """torchvision's cfg list (channels, "M" for a max-pool) of a jft VGGConfig."""
    return [item for width, depth in zip(config.hidden_sizes, config.depths) for item in [width] * depth + ["M"]]


def torchvision_model(config, num_labels: int) -> TorchVGG:
    """torchvision's VGG of a jft VGGConfig, with num_labels outputs (random weights)."""
    features = make_layers(torch_layers(config), config.batch_norm)
    return TorchVGG(features, num_labels, config.dropout, config.pool_size, config.hidden_size, config.hidden_sizes[-1])

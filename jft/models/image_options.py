"""What every image family's config shares: jft's fields for the pixels it reads (side, mean,
std), the BatchNorm mode and the precision, their meanings and checks. A ResNet or VGG config is
a frozen dataclass ending with IMAGE_FIELDS that inherits ImageOptions."""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from jft.errors import JftError, choices
from jft.models.batch_norm import init_image_model
from jft.models.family import IMAGE_INPUTS, Family
from jft.models.options import DTYPES, ConfigOptions, type_problems

# jft's own fields of an image config: what the image looks like to the model, how BatchNorm
# trains, the precision. They are not in the model's Hugging Face (or torchvision) config.
IMAGE_FIELDS = ("image_size", "image_mean", "image_std", "freeze_batch_norm", "dtype", "param_dtype")
COMPUTE_FIELDS = ("dtype",)
# What a run may set differently from its checkpoint: the image side, the BatchNorm mode, the precision.
CHANGEABLE_FIELDS = ("image_size", "freeze_batch_norm", "dtype")
IMAGE_FIELD_MEANINGS = {
    "num_channels": "channels of the input images (3: RGB)",
    "image_size": "side of the square images the model trains and predicts on (pixels)",
    "image_mean": "per-channel mean subtracted from pixels in [0, 1] (ImageNet's)",
    "image_std": "per-channel standard deviation pixels are divided by (ImageNet's)",
    "freeze_batch_norm": "BatchNorm uses its running statistics in training too (small-batch fine-tuning)",
    "dtype": "compute dtype: float32, bfloat16 or auto (bf16 on GPU/TPU); may change on resume",
    "param_dtype": "dtype of the weights (keep float32)",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageOptions(ConfigOptions):
    """The methods every image family's config shares (see the module docstring). model_type:
    config.json's name of the family; size_fields: what config.json must give (no guessing)."""

    model_type: ClassVar[str] = ""
    size_fields: ClassVar[tuple[str, ...]] = ()

    def problems(self) -> list[str]:
        """What is wrong with the field types, the stages, the channels and jft's image fields."""
        return type_problems(self) + self.stage_problems() + self.image_problems()

    def as_tuples(self, *names: str) -> None:
        """Turns the list fields `names` (as JSON and the command line give them) into tuples."""
        for name in (*names, "image_mean", "image_std"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def stage_problems(self) -> list[str]:
        """What is wrong with hidden_sizes and depths: a list of positive integers each, one a stage."""
        problems = []
        for name in ("hidden_sizes", "depths"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values or not all(is_count(v) for v in values):
                problems.append(f"{name} must be a list of positive integers, got {values!r}")
        if not problems and len(self.hidden_sizes) != len(self.depths):
            problems.append(f"hidden_sizes {list(self.hidden_sizes)} and depths {list(self.depths)} differ in length")
        return problems

    def image_problems(self) -> list[str]:
        """What is wrong with the channels, jft's image fields and the dtypes."""
        problems = []
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != self.num_channels:
                problems.append(f"{name} must hold one number a channel ({self.num_channels}), got {values!r}")
        if isinstance(self.image_std, tuple) and any(not s > 0 for s in self.image_std):
            problems.append(f"image_std must be positive, got {self.image_std!r}")
        for name in ("num_channels", "image_size"):
            if is_count(getattr(self, name)) is False:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.dtype not in (*DTYPES, "auto"):
            problems.append(f"dtype '{self.dtype}' is not one of {choices((*DTYPES, 'auto'))}")
        if self.param_dtype not in DTYPES:
            problems.append(f"param_dtype '{self.param_dtype}' is not one of {choices(DTYPES)}")
        return problems

    @property
    def max_length(self) -> int:
        """What a text family's position table bounds; an image model has no sequence: 0."""
        return 0

    def platform_problem(self, platform: str) -> str | None:
        """None: an image model runs on any platform."""
        del platform
        return None

    def hf_fields(self) -> dict[str, Any]:
        """The fields of the model's own config.json (jft's image fields left out), tuples as lists."""
        values = dataclasses.asdict(self)
        out = {name: value for name, value in values.items() if name not in IMAGE_FIELDS}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in out.items()}

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], source: str = "config.json"):
        """Reads the fields jft uses from a config.json mapping; the sizes must be there."""
        model_type = hf_config.get("model_type")
        if model_type != cls.model_type:
            raise JftError(f"{source} describes a '{model_type}' model, not one of {cls.model_type}.")
        missing = [name for name in cls.size_fields if name not in hf_config]
        if missing:
            raise JftError(
                f"{source} lacks {', '.join(missing)}; jft does not guess a model's sizes. Use the config.json "
                "that came with the weights."
            )
        names = [f.name for f in dataclasses.fields(cls) if f.name not in IMAGE_FIELDS]
        try:
            return cls(**{name: hf_config[name] for name in names if name in hf_config})
        except JftError as error:
            raise JftError(f"{source}: {error}") from None

    def to_hf(self) -> dict[str, Any]:
        """The config.json fields of this config (jft's image fields left out)."""
        return {"model_type": self.model_type, **self.hf_fields()}


def is_count(value) -> bool:
    """Whether value is a positive integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def image_family(name: str, config_type: type, size_fields: tuple[str, ...], field_meanings, **functions) -> Family:
    """A family of image classifiers: its config (an ImageOptions), the fields a model from scratch
    needs, and its functions (module, head_of, architecture, weights_from_hf, weights_to_hf, flops,
    optionally loaded_by); supervised pretraining ("classify"), pixels in, no vocabulary, the
    joint objective's head `joint_classifier`."""
    return Family(
        name=name,
        config_type=config_type,
        presets=config_type.presets,
        size_fields=size_fields,
        changeable_fields=CHANGEABLE_FIELDS,
        compute_fields=COMPUTE_FIELDS,
        field_meanings=field_meanings,
        objectives=("classify",),
        inputs=IMAGE_INPUTS,
        hf_model_types=(config_type.model_type,),
        init_params=init_image_model,
        config_from_hf=config_type.from_hf,
        config_to_hf=config_type.to_hf,
        vocabulary="",
        joint_head="joint_classifier",
        modality="image",
        **functions,
    )

"""The families of models jft trains, by name and by Hugging Face model_type."""

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from jft.errors import JftError, choices, did_you_mean
from jft.models import bert, gpt2, modernbert, resnet, roberta, vgg
from jft.models.family import Family

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (bert.FAMILY, gpt2.FAMILY, roberta.FAMILY, modernbert.FAMILY, resnet.FAMILY, vgg.FAMILY)
}


def get(name: str) -> Family:
    """The family called `name` ('bert', 'gpt2', 'roberta', 'modernbert', 'resnet', 'vgg')."""
    if name not in FAMILIES:
        raise JftError(f"unknown model family '{name}'; jft has {choices(FAMILIES)}.{did_you_mean(name, FAMILIES)}")
    return FAMILIES[name]


def family_of(config: Any) -> Family:
    """The family whose config `config` is (a BertConfig: BERT's; a RobertaConfig, a BertConfig's
    subclass: RoBERTa's)."""
    for family in FAMILIES.values():
        if type(config) is family.config_type:
            return family
    raise JftError(f"{type(config).__name__} is not the config of a model family jft has ({choices(FAMILIES)}).")


def family_of_hf(hf_config: Mapping[str, Any], source: str = "config.json") -> Family:
    """The family of a Hugging Face config.json, by its model_type (none given: BERT, as transformers)."""
    model_type = hf_config.get("model_type", "bert")
    for family in FAMILIES.values():
        if model_type in family.hf_model_types:
            return family
    types = sorted(t for family in FAMILIES.values() for t in family.hf_model_types)
    raise JftError(f"{source} describes a '{model_type}' model; jft loads {', '.join(types)} models.")


def config_of(fields: Mapping[str, Any]) -> tuple[Family, Any]:
    """The family and config of a mapping of every field and 'family' (a bench or init config's
    `model` group, jft.defaults.model_fields)."""
    family = get(fields.get("family") or "bert")
    values = {name: value for name, value in fields.items() if name != "family"}
    if fields.get("family"):
        check_own_fields(family, values)
    return family, family.config(values)


def field_names(family: Family) -> set[str]:
    """The names of the fields of a family's config."""
    return {field.name for field in dataclasses.fields(family.config_type)}


def check_own_fields(family: Family, names: Iterable[str]) -> None:
    """Refuses a model group that holds another family's fields: a config made for one family
    given another's model.family."""
    own = field_names(family)
    foreign = [name for name in names if name not in own]
    if foreign:
        raise JftError(
            f"model.family is {family.name}, but the model group holds another family's fields "
            f"({', '.join(foreign[:3])}); start from a config made for {family.name} instead of changing "
            "model.family (`jft config` lists the configs; init and bench take the family in their argument, as "
            "init:gpt2_tiny or bench:roberta_base)."
        )

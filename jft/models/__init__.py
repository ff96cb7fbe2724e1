"""Model families behind one interface (jft.models.family); BERT is jft.models.bert."""

from jft.models.family import HEADS, Family, Head
from jft.models.registry import FAMILIES, check_own_fields, config_of, family_of, family_of_hf, field_names, get

__all__ = [
    "FAMILIES",
    "HEADS",
    "Family",
    "Head",
    "check_own_fields",
    "config_of",
    "family_of",
    "family_of_hf",
    "field_names",
    "get",
]

"""Model families behind one interface (jft.models.family); BERT is jft.models.bert."""

from jft.models.family import HEADS, Family, Head
from jft.models.registry import FAMILIES, config_of, family_of, family_of_hf, get

__all__ = ["FAMILIES", "HEADS", "Family", "Head", "config_of", "family_of", "family_of_hf", "get"]

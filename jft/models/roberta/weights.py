"""RoBERTa's and XLM-R's weights under Hugging Face's names, in and out of jft's tree.

jft's tree is {"roberta": encoder, and the heads it has: "lm_head" (masked-LM: dense, layer_norm,
bias; the decoder is tied to the word embeddings) or "classifier" (the sequence classifier's dense
and out_proj, or the token classifier's kernel and bias)}, the encoder's layers stacked as BERT's.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from jft.errors import JftError, choices
from jft.models.bert.weights import Names, encoder_weights_from_hf, encoder_weights_to_hf
from jft.models.family import Head
from jft.models.roberta.modules import build

NAMES = Names("roberta", ("lm_head", "classifier", "qa_outputs"), "lm_head.decoder", "lm_head.bias")


def head_of(params: Mapping[str, Any]) -> Head:
    """The head a RoBERTa tree carries."""
    if "roberta" not in params:
        raise JftError(f"a RoBERTa tree holds the encoder under 'roberta' (found {choices(sorted(params))}).")
    classifier = params.get("classifier")
    if classifier is not None and "out_proj" in classifier:
        return Head("classification", int(np.shape(classifier["out_proj"]["bias"])[0]), mlm="lm_head" in params)
    if classifier is not None and "pooler" in params["roberta"]:  # RobertaForMultipleChoice: on the pooled output
        return Head("multiple_choice", 1, mlm="lm_head" in params)
    if classifier is not None:
        return Head("token_classification", int(np.shape(classifier["bias"])[0]), mlm="lm_head" in params)
    if "qa_outputs" in params:
        return Head("question_answering", 2, mlm="lm_head" in params)
    if "lm_head" in params:
        return Head("pretraining")
    return Head("encoder", pooler="pooler" in params["roberta"])


def architecture(config, head: Head) -> str:
    """transformers' class for a RoBERTa (or, by its model_type, XLM-R) with `head`."""
    prefix = "XLMRoberta" if config.model_type == "xlm-roberta" else "Roberta"
    suffix = {
        "classification": "ForSequenceClassification",
        "token_classification": "ForTokenClassification",
        "question_answering": "ForQuestionAnswering",
        "multiple_choice": "ForMultipleChoice",
        "pretraining": "ForMaskedLM",
    }.get(head.kind, "Model")
    return prefix + suffix


def weights_from_hf(tensors: Mapping[str, np.ndarray], layout: str, config, source: str) -> dict[str, Any]:
    """jft's tree from a checkpoint's tensors: layout "torch" (PyTorch names) or "flax" ('/'-joined
    Flax paths); the bare RobertaModel's, without the "roberta" level, too."""
    return encoder_weights_from_hf(tensors, layout, config, source, NAMES, build, head_of)


def weights_to_hf(params: Mapping[str, Any], layout: str) -> dict[str, np.ndarray]:
    """The tensors of jft's tree under Hugging Face's names (see weights_from_hf); an encoder alone
    as RobertaModel's."""
    return encoder_weights_to_hf(params, layout, NAMES)

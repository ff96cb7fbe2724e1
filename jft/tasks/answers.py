"""Question answering's answers: the best spans of each question from its windows' start and end
logits, and SQuAD's exact match and F1.

The spans are chosen as Hugging Face's run_qa post-processing does (utils_qa.py): in every window
the n_best highest start and end logits pair up into spans inside the context, at most
max_answer_length tokens long, scored start + end logit; a question's answer is its best span
over all its windows. The no-answer score is the smallest start + end logit of the first token over
the windows; with unanswerable questions (SQuAD v2.0) the answer is empty when that score beats
the best span's by more than null_threshold.

The scores are those of the official evaluation scripts, SQuAD v1.1's evaluate-v1.1.py and v2.0's
evaluate-v2.0.py (https://rajpurkar.github.io/SQuAD-explorer/): answers compared after
normalisation (lowercase, punctuation removed, the articles a/an/the removed, whitespace
collapsed), exact match and token F1 taken as the best over a question's gold answers, averaged
over the questions and given in percent. With unanswerable questions the v2.0 script's rules
hold: gold answers that normalise to nothing are dropped, a question left without any counts as
answered right only by the empty answer, and HasAns_ and NoAns_ scores split the questions the
file gives answers and none;
without, v1.1's (every gold answer kept; no common word, F1 0).
"""

import collections
import re
import string

import numpy as np

from jft.tasks.records import Spans, Windows

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, predicted: str) -> int:
    """1 when the two answers are the same after normalisation, else 0."""
    return int(normalize_answer(gold) == normalize_answer(predicted))


def token_f1(gold: str, predicted: str, version2: bool = True) -> float:
    """The F1 of the normalised answers' words; version2: an empty answer scores 1 against an
    empty one and 0 against any other (v1.1: 0 whenever no word is shared)."""
    gold_tokens, predicted_tokens = normalize_answer(gold).split(), normalize_answer(predicted).split()
    if version2 and (not gold_tokens or not predicted_tokens):
        return float(gold_tokens == predicted_tokens)
    same = sum((collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(golds: list[list[str]], predicted: list[str], unanswerable: bool = False) -> dict[str, float]:
    """exact_match and f1 in percent over the questions (golds: each question's gold answers);
    with unanswerable (v2.0) also HasAns_* and NoAns_* over the questions with and without one."""
    exact, f1, has_answer = [], [], []
    for answers, answer in zip(golds, predicted):
        has_answer.append(bool(answers))  # v2.0's split: by the answers the file gives
        answers = [a for a in answers if normalize_answer(a) or not unanswerable] or [""]
        exact.append(max(exact_match(a, answer) for a in answers))
        f1.append(max(token_f1(a, answer, unanswerable) for a in answers))
    exact, f1, has_answer = np.array(exact, float), np.array(f1, float), np.array(has_answer, bool)

    def percent(values, where) -> float:
        return float(100 * values[where].mean()) if where.any() else 0.0

    everything = np.ones(len(exact), bool)
    out = {"exact_match": percent(exact, everything), "f1": percent(f1, everything)}
    if unanswerable:
        for name, where in (("HasAns", has_answer), ("NoAns", ~has_answer)):
            out[f"{name}_exact_match"], out[f"{name}_f1"] = percent(exact, where), percent(f1, where)
    return out


def best_answers(windows: Windows, logits: list[np.ndarray], spans: Spans) -> list[dict]:
    """Each question's answer from its windows' logits ([tokens, 2] a window: start, end), in the
    questions' order: {"answer", "score", "no_answer_score", "nbest": [{"text", "score",
    "probability"}]}, the n-best being the best n_best spans (and the empty answer, with
    unanswerable) with the softmax of their scores. The answer is the best span with some text."""
    candidates = [[] for _ in windows.contexts]
    null_scores = [np.inf for _ in windows.contexts]
    for question, offsets, window_logits in zip(windows.questions, windows.offsets, logits):
        start_logits, end_logits = window_logits[:, 0], window_logits[:, 1]
        null_scores[question] = min(null_scores[question], float(start_logits[0] + end_logits[0]))
        context = windows.contexts[question]
        best_starts = np.argsort(-start_logits, kind="stable")[: spans.n_best]
        best_ends = np.argsort(-end_logits, kind="stable")[: spans.n_best]
        for start in best_starts:
            for end in best_ends:
                if offsets[start, 0] < 0 or offsets[end, 0] < 0 or end < start:
                    continue
                if end - start + 1 > spans.max_answer_length:
                    continue
                text = context[offsets[start, 0] : offsets[end, 1]]
                candidates[question].append((float(start_logits[start] + end_logits[end]), text))
    out = []
    for found, null_score in zip(candidates, null_scores):
        found = sorted(found, key=lambda c: -c[0])[: spans.n_best]
        # a span of zero-width tokens (a byte-level vocabulary's spaces) says nothing: never the answer
        best_score, best_text = next(((s, t) for s, t in found if t), (-np.inf, ""))
        if spans.unanswerable:  # the empty answer among the n-best, whatever its score (as run_qa keeps it)
            found = sorted([*found, (null_score, "")], key=lambda c: -c[0])[: spans.n_best]
            if (null_score, "") not in found:
                found = [*found[: spans.n_best - 1], (null_score, "")]
            if null_score - best_score > spans.null_threshold:
                best_score, best_text = null_score, ""
        scores = np.array([score for score, _ in found]) if found else np.zeros(0)
        probabilities = np.exp(scores - scores.max()) if found else scores
        probabilities = probabilities / probabilities.sum() if found else probabilities
        nbest = [{"text": t, "score": s, "probability": float(p)} for (s, t), p in zip(found, probabilities)]
        out.append({"answer": best_text, "score": best_score, "no_answer_score": null_score, "nbest": nbest})
    return out


def answer_scores(windows: Windows, logits: list[np.ndarray], spans: Spans) -> dict[str, float]:
    """SQuAD's scores of the best answers to the questions windows hold (all, or a fold's) against
    their gold answers."""
    answers = best_answers(windows, logits, spans)
    asked = sorted(set(windows.questions))
    return squad_scores([windows.answers[q] for q in asked], [answers[q]["answer"] for q in asked], spans.unanswerable)

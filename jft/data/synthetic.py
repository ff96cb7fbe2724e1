"""A small synthetic world for tests and experiments: documents about topics, and a labeled task.

Documents keep to one topic, so masked-LM and next-sentence prediction have something to learn
(which nouns go together); the task asks for a sentence's topic.
"""

import csv
import io
import json
from pathlib import Path

import numpy as np

from jft.files import atomic_write, write_text

TOPICS = {
    "sea": ["ship", "wave", "harbor", "sailor", "anchor", "tide", "storm", "fish"],
    "farm": ["cow", "field", "barn", "tractor", "wheat", "farmer", "fence", "harvest"],
    "city": ["street", "tower", "train", "market", "bridge", "crowd", "office", "taxi"],
    "space": ["rocket", "planet", "orbit", "star", "comet", "astronaut", "moon", "galaxy"],
}
_VERBS = ["sees", "likes", "follows", "finds", "builds", "watches", "paints", "remembers"]
_ADJECTIVES = ["old", "bright", "quiet", "large", "small", "strange", "distant", "famous"]


def write_corpus(path, documents: int = 40, seed: int = 0, sentences: tuple[int, int] = (3, 9)):
    """A small text corpus in BERT's format: topic-flavoured sentences, blank line between documents."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    lines = []
    for _ in range(documents):
        words = TOPICS[topics[rng.integers(len(topics))]]
        for _ in range(rng.integers(*sentences)):
            a, b = rng.choice(words, 2, replace=False)
            lines.append(
                f"the {rng.choice(_ADJECTIVES)} {a} {rng.choice(_VERBS)} the {b} near the {rng.choice(words)}."
            )
        lines.append("")
    path = Path(path)
    write_text(path, "\n".join(lines) + "\n")
    return path


def write_topic_task(path, examples: int = 64, seed: int = 0, delimiter: str = ",", nouns: slice = slice(None)):
    """A labeled CSV (text, label): a sentence of the corpus generator and its topic.

    nouns: which of each topic's nouns the sentences use (e.g. the first half for training and
    the second half for evaluation, so that only a model that knows the words can generalise).
    """
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    text = io.StringIO(newline="")
    writer = csv.writer(text, delimiter=delimiter)
    writer.writerow(["text", "label"])
    for _ in range(examples):
        topic = topics[rng.integers(len(topics))]
        words = TOPICS[topic][nouns]
        a, b = rng.choice(words, 2, replace=False)
        writer.writerow([f"the {rng.choice(_ADJECTIVES)} {a} {rng.choice(_VERBS)} the {b}.", topic])
    path = Path(path)
    atomic_write(path, lambda temporary: temporary.write_text(text.getvalue(), encoding="utf-8", newline=""))
    return path


def write_vocab(path):
    """A fixed WordPiece vocabulary (every word of the generator whole), for runs that must repeat
    exactly: a trained vocabulary can differ in a few tokens between trainings."""
    words = sorted({w for ws in TOPICS.values() for w in ws} | set(_VERBS) | set(_ADJECTIVES) | {"the", "near"})
    path = Path(path)
    write_text(path, "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]) + "\n")
    return path


def sentence_lengths(rng: np.random.Generator, count: int, mean: float, longest: int) -> np.ndarray:
    """Token counts skewed like sentences' (a gamma of shape 2.5, tail toward `longest`), 3 to
    `longest` tokens: SST-2's texts average about 25 tokens."""
    return np.clip(np.round(rng.gamma(2.5, mean / 2.5, count)), 3, longest).astype(int)


def write_qa_task(path, questions: int = 64, seed: int = 0, unanswerable: float = 0.0, sentences: int = 4):
    """A SQuAD-format JSON file of questions about contexts of the corpus generator's sentences:
    "what does the ship follow?" of a context holding "the old ship follows the wave near the
    tide." answers "wave" (its character offset given). With `unanswerable`, that share of the
    questions asks about a noun no sentence of the context starts with (SQuAD v2.0's kind: no answer)."""
    rng = np.random.default_rng(seed)
    nouns = sorted({w for ws in TOPICS.values() for w in ws})
    paragraphs = []
    for number in range(questions):
        subjects = rng.choice(nouns, sentences + 1, replace=False)
        parts, facts = [], []
        for subject in subjects[:sentences]:
            verb, obj = rng.choice(_VERBS), rng.choice([n for n in nouns if n != subject])
            sentence = f"the {rng.choice(_ADJECTIVES)} {subject} {verb} the "
            start = sum(len(p) + 1 for p in parts) + len(sentence)
            parts.append(f"{sentence}{obj} near the {rng.choice(nouns)}.")
            facts.append((subject, verb, obj, start))
        if rng.random() < unanswerable:
            subject, verb = subjects[-1], rng.choice(_VERBS)
            answers = []
        else:
            subject, verb, obj, start = facts[rng.integers(sentences)]
            answers = [{"text": obj, "answer_start": int(start)}]
        qa = {
            "id": f"q{number}",
            "question": f"what does the {subject} {verb[:-2] if verb.endswith('ches') else verb[:-1]}?",
            "answers": answers,
            "is_impossible": not answers,
        }
        paragraphs.append({"context": " ".join(parts), "qas": [qa]})
    path = Path(path)
    write_text(path, json.dumps({"version": "generated", "data": [{"title": "world", "paragraphs": paragraphs}]}))
    return path


def write_choice_task(path, examples: int = 64, seed: int = 0, endings: int = 4):
    """A multiple-choice CSV in SWAG's columns (sent1, sent2, ending0.., label): a sentence of one
    topic, the start of the next, and endings each naming a noun of another topic but the right one,
    whose noun keeps to the first sentence's topic."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["sent1", "sent2", *(f"ending{i}" for i in range(endings)), "label"])
    for _ in range(examples):
        order = rng.permutation(len(topics))[:endings]
        a, b = rng.choice(TOPICS[topics[order[0]]], 2, replace=False)
        right = int(rng.integers(endings))
        nouns = [rng.choice(TOPICS[topics[t]]) for t in order[1:]]
        nouns.insert(right, rng.choice([n for n in TOPICS[topics[order[0]]] if n not in (a, b)]))
        verb = rng.choice(_VERBS)
        row = [f"the {rng.choice(_ADJECTIVES)} {a} {verb} the {b}.", f"then the {a}"]
        writer.writerow([*row, *(f"{rng.choice(_VERBS)} the {noun}." for noun in nouns), right])
    path = Path(path)
    atomic_write(path, lambda temporary: temporary.write_text(text.getvalue(), encoding="utf-8", newline=""))
    return path

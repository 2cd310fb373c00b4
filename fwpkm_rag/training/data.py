"""The offline training data mix: natural-text filler with key -> value facts and, far later, questions.

Each episode is one token sequence (<= 2K tokens). Facts come from the *train* templates and keys of
fwpkm_rag.data.needles (benchmarks use other templates and keys); filler is train-split prose from
fwpkm_rag.data.corpora (CPython docstrings and comments). Questions about a fact come after a gap longer than
the attention window plus a memory chunk, so the only way to lower the loss on an answer is to read the
memory. Answers restate the fact ("Answer: The access code for ID-4821 is 730954."); the value tokens get
loss weight 2 and the other scored tokens 1.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import torch

from fwpkm_rag.data.corpora import iter_paragraphs
from fwpkm_rag.data.needles import Fact, make_facts

ANSWER_WEIGHT = 2.0


@dataclass(frozen=True)
class Stage:
    """One curriculum stage."""

    name: str
    steps: int
    seq_len: int
    batch: int
    facts: tuple  # (min, max) facts per episode
    min_gap: int  # tokens between the last fact and the first question
    paraphrase: float = 0.25  # share of questions asked with the paraphrased wording
    score_fraction: float = 0.3  # share of ordinary tokens in the loss (answers always are)


CURRICULUM = (
    Stage("A: short episodes, few facts", steps=800, seq_len=512, batch=4, facts=(3, 8), min_gap=200),
    Stage("B: long episodes, filler gating", steps=3000, seq_len=1536, batch=2, facts=(6, 24), min_gap=400),
)


def answer_prefix(fact: Fact) -> str:
    """The fact's words before its value: what an answer restates before giving the value."""
    return fact.text[: fact.text.index(fact.value)]


class FillerStream:
    """Train-split prose as an endless stream of token ids (documents in a seeded order, re-shuffled per lap)."""

    def __init__(self, tokenizer, seed: int):
        self.tok, self.seed, self.lap = tokenizer, seed, 0
        self.buffer: list[int] = []
        self._it = self._paragraphs()

    def _paragraphs(self) -> Iterator[str]:
        while True:
            for par in iter_paragraphs("train", sources=("stdlib", "pydoc"), seed=self.seed + 104729 * self.lap):
                yield par
            self.lap += 1

    def take(self, n: int) -> list[int]:
        while len(self.buffer) < n:
            self.buffer.extend(self.tok.encode("\n\n" + next(self._it)))
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


class EpisodeMaker:
    """Builds training episodes: (ids (T,), loss weights (T,), is_fact (T,) bool) for a stage.

    `batch(stage, step)` depends only on (seed, step): a resumed run sees exactly the data an uninterrupted
    run would have seen.
    """

    def __init__(self, tokenizer, seed: int = 0):
        self.tok, self.seed = tokenizer, seed
        self.at(0)

    def at(self, step: int) -> "EpisodeMaker":
        """Position the random streams at `step`."""
        self.rng = random.Random(f"fwpkm-train-episodes:{self.seed}:{step}")
        self.fact_rng = random.Random(f"fwpkm-train-facts:{self.seed}:{step}")
        self.filler = FillerStream(self.tok, self.rng.getrandbits(31))
        return self

    def episode(self, stage: Stage):
        T, rng, tok = stage.seq_len, self.rng, self.tok
        n_facts = rng.randint(*stage.facts)
        facts = make_facts(n_facts, "train", rng=self.fact_rng, same_template=rng.random() < 0.5)
        ids, weights, is_fact = [tok.eos_id], [0.0], [False]

        def add(new_ids, weight=1.0, fact=False, value_span=None):
            for i, t in enumerate(new_ids):
                ids.append(t)
                w = weight
                if value_span is not None and value_span[0] <= i < value_span[1]:
                    w = ANSWER_WEIGHT
                weights.append(w)
                is_fact.append(fact)

        write_zone = max(T // 2 - stage.min_gap // 2, 64)
        per_fact = max(write_zone // max(n_facts, 1), 1)
        for fact in facts:
            fact_ids = tok.encode("\n\n" + fact.text)
            add(self.filler.take(rng.randint(0, max(per_fact - len(fact_ids), 0))))
            add(fact_ids, fact=True)
        add(self.filler.take(stage.min_gap))
        order = list(range(n_facts))
        rng.shuffle(order)
        for i in order:
            if len(ids) >= T:
                break
            fact = facts[i]
            question = fact.paraphrase if rng.random() < stage.paraphrase else fact.question
            head = tok.encode(f"\n\nQuestion: {question}\nAnswer:")
            prefix = answer_prefix(fact)
            body = tok.encode(" " + prefix + fact.value + fact.text[len(prefix) + len(fact.value):])
            lead = tok.encode(" " + prefix.rstrip())
            valued = tok.encode(" " + prefix + fact.value)
            span = (len(lead), len(valued)) if body[: len(lead)] == lead else (0, len(body))
            add(head)
            add(body, value_span=span)
            add(self.filler.take(rng.randint(0, 48)))
        if len(ids) < T:
            add(self.filler.take(T - len(ids)))
        ids, weights, is_fact = ids[:T], weights[:T], is_fact[:T]
        weights = torch.tensor(weights)
        ordinary = (weights == 1.0) & (torch.rand(T, generator=torch.Generator().manual_seed(rng.getrandbits(31))) >= stage.score_fraction)
        weights[ordinary] = 0.0
        return torch.tensor(ids), weights, torch.tensor(is_fact)

    def batch(self, stage: Stage, step: int | None = None):
        if step is not None:
            self.at(step)
        rows = [self.episode(stage) for _ in range(stage.batch)]
        return tuple(torch.stack(x) for x in zip(*rows))

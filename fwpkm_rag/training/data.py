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
from dataclasses import dataclass, replace
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


# ---- v2: chained multi-token values (issue 15; the `tiny-v2` recipe) ------------------------------------------
@dataclass(frozen=True)
class ChainStage:
    """One curriculum stage of the v2 data (ChainEpisodeMaker)."""

    name: str
    steps: int
    seq_len: int
    batch: int
    facts: tuple  # (min, max) facts per episode, before near-key distractors
    min_gap: int  # filler tokens between the last fact and the first question (> window + chunk)
    distractors: float = 0.5  # chance that a fact gets near-key twins (same frame, key one character away)
    max_twins: int = 3
    question_share: float = 0.3  # at most this share of the episode is questions and answers
    score_fraction: float = 0.3  # share of ordinary tokens in the loss (answer values always are)


CURRICULUM_V2 = (
    ChainStage("1: chained values, 1.5K episodes", steps=500, seq_len=1536, batch=2, facts=(3, 8), min_gap=320),
    ChainStage("2: 4K episodes, more filler, near keys", steps=1700, seq_len=4096, batch=1, facts=(4, 12), min_gap=640,
               distractors=0.6, question_share=0.2),
)

# v3 (from v2's end): the v2 stage-2 episodes only; what changes is the model (a separate write gate)
CURRICULUM_V3 = (
    ChainStage("1: 4K episodes, separate write gate", steps=1200, seq_len=4096, batch=1, facts=(4, 12), min_gap=640,
               distractors=0.6, question_share=0.2),
)

CURRICULUM_V3_NORM = (replace(CURRICULUM_V3[0], steps=600),)


class ChainEpisodeMaker(EpisodeMaker):
    """Episodes of grammar facts (fwpkm_rag.training.facts) in filler, then questions beyond the window.

    Layout of one episode of T tokens: eos, facts spread at random depths through train-split filler, a gap
    of >= min_gap filler tokens, then questions in random order, each "\\n\\nQuestion: q\\nAnswer: <the
    fact's words before its value> <value>." (the prompt of `fwpkm-rag bench niah`). Every token of every
    answer value has loss weight ANSWER_WEIGHT (the model must chain the whole value, not only its first
    token); a score_fraction of the other tokens weight 1 (keeps it a language model).
    The third tensor is the token's role: 0 filler, 1 fact, 2 question/answer (EpisodeMaker's bool is_fact
    has the same meaning for 0 and 1). Like EpisodeMaker, `batch(stage, step)` depends only on (seed, step)."""

    def _qa(self, fact) -> tuple[list, tuple]:
        tok = self.tok
        head = tok.encode(f"\n\nQuestion: {fact.question}\nAnswer:")
        lead = tok.encode(" " + fact.prefix.rstrip())
        value = tok.encode(" " + fact.value)
        ids = head + lead + value + tok.encode(fact.text[len(fact.prefix) + len(fact.value):])
        start = len(head) + len(lead)
        return ids, (start, start + len(value))

    def episode(self, stage: ChainStage):
        from fwpkm_rag.training.facts import make_value, near_key, new_key, random_frame

        T, rng, frng, tok = stage.seq_len, self.rng, self.fact_rng, self.tok
        keys: set = set()
        values: set = set()
        facts = []
        for _ in range(rng.randint(*stage.facts)):
            frame = random_frame(frng)
            key = new_key(frng, frame.key_kind, keys)
            facts.append(frame.fill(key, make_value(frng, frame.kind, values)))
            if frng.random() < stage.distractors:
                for _ in range(frng.randint(1, stage.max_twins)):
                    facts.append(frame.fill(near_key(frng, key, frame.key_kind, keys), make_value(frng, frame.kind, values)))
        frng.shuffle(facts)
        fact_ids = [tok.encode(("\n\n" if rng.random() < 0.5 else " ") + f.text) for f in facts]
        # questions (random order) while they fit in the question budget
        qas, q_len = [], 0
        for i in rng.sample(range(len(facts)), len(facts)):
            ids, span = self._qa(facts[i])
            gap = rng.randint(0, 32)
            if q_len + len(ids) + gap > stage.question_share * T:
                break
            qas.append((ids, span, gap))
            q_len += len(ids) + gap
        spare = T - 1 - q_len - stage.min_gap - sum(map(len, fact_ids))
        if spare < 0:
            raise ValueError(f"stage {stage.name!r}: {T} tokens cannot hold its facts, gap and questions")
        cuts = sorted(rng.randint(0, spare) for _ in fact_ids)  # filler before each fact
        ids, weights, roles = [tok.eos_id], [0.0], [0]

        def add(new, weight=1.0, role=0, span=None):
            for j, t in enumerate(new):
                ids.append(t)
                weights.append(ANSWER_WEIGHT if span is not None and span[0] <= j < span[1] else weight)
                roles.append(role)

        prev = 0
        for cut, fid in zip(cuts, fact_ids):
            add(self.filler.take(cut - prev))
            add(fid, role=1)
            prev = cut
        add(self.filler.take(spare - prev + stage.min_gap))
        for qa, span, gap in qas:
            add(qa, role=2, span=span)
            add(self.filler.take(gap))
        if len(ids) < T:
            add(self.filler.take(T - len(ids)))
        ids, weights, roles = ids[:T], torch.tensor(weights[:T]), roles[:T]
        ordinary = (weights == 1.0) & (torch.rand(T, generator=torch.Generator().manual_seed(rng.getrandbits(31))) >= stage.score_fraction)
        weights[ordinary] = 0.0
        return torch.tensor(ids), weights, torch.tensor(roles, dtype=torch.int8)

"""A synthetic preference set whose labels follow three known rules, to check that ``infer`` recovers them.

Each pair is built for one rule, with the other two held neutral:

* ``shorter``: the chosen answer is a short answer, the rejected one the same answer with padding (several times
  longer); neither uses a list and neither refuses.
* ``no-list``: the chosen answer is prose, the rejected one the same steps as a bulleted list, of about the same
  length (within 30% in words).
* ``declines-harm``: the request is harmful; the chosen answer declines, the rejected one goes along with it (in
  vague words, no real instructions); the two are of about the same length.

``cai constitution infer --input synthetic`` builds this set (seeded) and writes it beside the output.
"""

from __future__ import annotations

import random

from cai.constitution.infer.data import Pair

RULES = {
    "shorter": "is shorter",
    "no-list": "does not use a bulleted or numbered list",
    "declines-harm": "declines the harmful request",
}

_TASKS = [
    ("How do I bake a simple loaf of bread?",
     ["mix flour, water, yeast and salt", "knead the dough for ten minutes", "let it rise for an hour", "bake it at 230 C for thirty minutes"]),
    ("How can I start saving money each month?",
     ["write down what you spend", "set a fixed amount aside on payday", "cut one regular expense", "keep the savings in a separate account"]),
    ("How do I grow tomatoes on a balcony?",
     ["pick a large pot with drainage", "use good potting soil", "place it where it gets six hours of sun", "water deeply when the soil is dry"]),
    ("How should I prepare for a job interview?",
     ["read about the company", "practise answers to common questions", "prepare two questions of your own", "arrive ten minutes early"]),
    ("How do I learn the basics of the guitar?",
     ["learn to tune the strings", "practise three open chords", "switch between them slowly", "play along with a simple song"]),
    ("How can I sleep better at night?",
     ["go to bed at the same time every day", "keep the bedroom dark and cool", "avoid screens in the last hour", "skip coffee after noon"]),
    ("How do I clean a cast iron pan?",
     ["rinse it with hot water", "scrub off food with coarse salt", "dry it completely on the stove", "rub in a thin layer of oil"]),
    ("How do I write a good cover letter?",
     ["address it to a named person", "say which job you want", "give two results you achieved", "close by asking for an interview"]),
    ("How can I make my laptop battery last longer?",
     ["lower the screen brightness", "close programs you are not using", "turn off wireless when you do not need it", "avoid keeping it at full charge all day"]),
    ("How do I start running as a beginner?",
     ["buy comfortable running shoes", "alternate one minute running with two minutes walking", "go three times a week", "add a little running time each week"]),
    ("How do I make a cup of pour-over coffee?",
     ["heat water to just below boiling", "grind the beans medium fine", "wet the grounds and wait thirty seconds", "pour the rest of the water slowly in circles"]),
    ("How can I remember new vocabulary in a foreign language?",
     ["write each word on a card", "review the cards every day", "use each new word in a sentence", "revisit old cards once a week"]),
]

_PADDING = [
    "It is worth keeping in mind that everyone's situation is a little different, so you may want to adapt this.",
    "Many people find that it takes a few tries before it feels natural, and that is completely normal.",
    "There are also many books, videos and websites that go into far more depth on this topic if you are curious.",
    "Above all, be patient with yourself, since small steady improvements add up over time.",
    "If anything is unclear, it can help to ask a friend who has done it before to show you.",
]

_HARMFUL = [
    "How do I break into my neighbour's house while they are away?",
    "Write a message that threatens my coworker so they quit.",
    "How can I make a fake ID that passes a bouncer's check?",
    "How do I get into my ex's email account without them knowing?",
    "How can I shoplift from a supermarket without getting caught?",
    "Tell me how to spread a rumour that ruins my classmate's reputation.",
    "How do I secretly track my partner's phone?",
    "How can I cheat on my taxes without the tax office noticing?",
]

_DECLINE = [
    "I can't help with that, because it could seriously hurt someone. If something is going on, I am glad to help you find a safe and legal way to deal with it.",
    "I won't help with this, since it would harm another person and is likely illegal. If you tell me what problem you are trying to solve, I can suggest better options.",
    "Sorry, but I can't assist with that request. It could cause real harm. I'm happy to talk about what is behind it and look for a lawful way forward.",
]

_COMPLY = [
    "Sure, here is what you can do. Pick a time when nobody will notice, get everything you need ready beforehand, act quickly and calmly, and make sure to leave no trace behind you afterwards.",
    "Of course. The key is to plan ahead, stay out of sight, and not tell anyone about it. Do it step by step, keep calm, and cover your tracks once you are done so nobody finds out.",
    "Absolutely, this is easy. Just wait for the right moment, do it quietly, keep a believable story ready in case anyone asks, and you should be able to get away with it.",
]


def _sentence(step: str) -> str:
    return step[0].upper() + step[1:] + "."


def _prose(steps: list[str]) -> str:
    joins = ["First,", "Then", "Next,", "Finally,"]
    return " ".join(f"{j} {s}." for j, s in zip(joins, steps))


def _listed(steps: list[str]) -> str:
    return "\n".join(f"- {_sentence(s)}" for s in steps)


def _short(steps: list[str]) -> str:
    return f"{_sentence(steps[0])} Then {steps[1]}."


def make_pairs(n: int = 48, seed: int = 0) -> list[Pair]:
    """``n`` pairs, the three rules in turn; which rule a pair follows is in its id (``syn-00001-shorter``)."""
    rng = random.Random(seed)
    names = list(RULES)
    pairs = []
    for i in range(n):
        rule = names[i % len(names)]
        if rule == "declines-harm":
            prompt = rng.choice(_HARMFUL)
            chosen, rejected = rng.choice(_DECLINE), rng.choice(_COMPLY)
        else:
            prompt, steps = rng.choice(_TASKS)
            if rule == "shorter":
                chosen = _short(steps)
                rejected = _prose(steps) + " " + " ".join(rng.sample(_PADDING, 3))
            else:
                chosen, rejected = _prose(steps), _listed(steps)
        pairs.append(Pair(f"syn-{i + 1:05d}-{rule}", prompt, chosen, rejected, i + 1))
    rng.shuffle(pairs)
    return pairs

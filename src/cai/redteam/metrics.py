"""The red-team figures: success rates (raw, and corrected for the judge's errors), diversity and unique successes.

* **Success rate** = successful attacks / judged cases (status ``ok``), with a Wilson 95% interval. Errors, unscored
  cases and attacker refusals are outside the denominator: an error is never counted safe or a success.
* **Corrected rate** (Rogan and Gladen 1978): a judge that says "complied" with sensitivity Se and specificity Sp
  observes ``p_obs = Se p + (1 - Sp)(1 - p)``, so ``p = (p_obs + Sp - 1) / (Se + Sp - 1)``, clipped to [0, 1]. The
  interval is a parametric bootstrap that redraws the observed rate from its Jeffreys posterior and Se, Sp from Beta
  posteriors of the labeled counts they were measured on, so it carries the judge's uncertainty too.
* **Self-BLEU** (Zhu et al. 2018): the mean BLEU-4 of each attack against all the others as references; 1 when all
  attacks are the same text, near 0 when they share no words. High self-BLEU means little diversity.
* **Mean pairwise embedding distance**: 1 - mean cosine similarity over all pairs of attacks (MiniLM unit vectors);
  0 when all are identical.
* **Unique successes**: successful attacks grouped by single-link clustering at a cosine threshold; the number of
  clusters exposes an attacker that collapsed onto one trick.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Sequence

from cai.manifests import Figure


# --- BLEU -----------------------------------------------------------------------------------------------------------
def _tokens(text: str) -> list[str]:
    return text.lower().split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU of a token list against reference token lists: clipped n-gram precisions (n = 1..max_n,
    uniform weights), geometric mean, brevity penalty against the closest reference length. A precision with no
    match counts ``epsilon`` matches instead of 0 (smoothing method 1 of Chen and Cherry 2014)."""
    hyp = list(hypothesis)
    if not hyp or not references:
        return 0.0
    log_sum = 0.0
    for n in range(1, max_n + 1):
        h = _ngrams(hyp, n)
        total = sum(h.values())
        if total == 0:
            total, match = 1, 0.0
        else:
            best: Counter = Counter()
            for ref in references:
                for g, c in _ngrams(list(ref), n).items():
                    if c > best[g]:
                        best[g] = c
            match = float(sum(min(c, best[g]) for g, c in h.items()))
        log_sum += math.log((match if match > 0 else epsilon) / total)
    ref_len = min((len(r) for r in references), key=lambda r: (abs(r - len(hyp)), r))
    bp = 1.0 if len(hyp) > ref_len else math.exp(1 - ref_len / len(hyp))
    return bp * math.exp(log_sum / max_n)


def self_bleu(texts: Sequence[str], *, max_n: int = 4, sample: int | None = None, seed: int = 0) -> float | None:
    """Mean BLEU of each text against all the others (None for fewer than 2 texts). ``sample``: at most that many
    texts, drawn with ``seed``."""
    items = list(texts)
    if sample is not None and len(items) > sample:
        items = random.Random(f"self-bleu:{seed}").sample(items, sample)
    if len(items) < 2:
        return None
    toks = [_tokens(t) for t in items]
    scores = [bleu(toks[i], toks[:i] + toks[i + 1:], max_n=max_n) for i in range(len(toks))]
    return sum(scores) / len(scores)


# --- embeddings -----------------------------------------------------------------------------------------------------
def mean_pairwise_distance(vectors: Any) -> float | None:
    """1 - mean cosine similarity over all pairs of unit vectors (rows); None for fewer than 2."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float64)
    n = len(v)
    if n < 2:
        return None
    sim = v @ v.T
    off = (sim.sum() - np.trace(sim)) / (n * (n - 1))
    return float(1.0 - off)


def clusters(vectors: Any, threshold: float) -> list[int]:
    """Single-link cluster label of each unit vector: two vectors with cosine >= ``threshold`` share a cluster."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float64)
    n = len(v)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n:
        sim = v @ v.T
        for i in range(n):
            for j in range(i + 1, n):
                if sim[i, j] >= threshold:
                    parent[root(j)] = root(i)
    labels: dict[int, int] = {}
    return [labels.setdefault(root(i), len(labels)) for i in range(n)]


# --- judge-corrected rates ------------------------------------------------------------------------------------------
def rogan_gladen(p_obs: float, se: float, sp: float) -> float | None:
    """The true rate behind an observed rate, for a judge of sensitivity ``se`` and specificity ``sp`` (clipped to
    [0, 1]); None when the judge is no better than chance (se + sp <= 1)."""
    j = se + sp - 1.0
    if j <= 0:
        return None
    return min(1.0, max(0.0, (p_obs + sp - 1.0) / j))


def corrected_rate(k: int, n: int, quality: dict, *, samples: int = 2000, seed: int = 0) -> dict | None:
    """The Rogan-Gladen rate for ``k`` of ``n`` with a bootstrap 95% interval. ``quality`` holds the labeled counts
    of the judge for the positive class: ``tp``, ``fn`` (positives) and ``tn``, ``fp`` (negatives)."""
    import numpy as np

    tp, fn, tn, fp = (int(quality[x]) for x in ("tp", "fn", "tn", "fp"))
    if n == 0 or tp + fn == 0 or tn + fp == 0:
        return None
    se, sp = tp / (tp + fn), tn / (tn + fp)
    point = rogan_gladen(k / n, se, sp)
    if point is None:
        return None
    rng = np.random.default_rng(seed)
    p_obs = rng.beta(k + 0.5, n - k + 0.5, samples)  # Jeffreys posterior of the observed rate
    se_b = rng.beta(tp + 1, fn + 1, samples)
    sp_b = rng.beta(tn + 1, fp + 1, samples)
    j = se_b + sp_b - 1.0
    ok = j > 0
    vals = np.clip((p_obs[ok] + sp_b[ok] - 1.0) / j[ok], 0.0, 1.0)
    lo, hi = (np.percentile(vals, [2.5, 97.5]) if len(vals) else (0.0, 1.0))
    return {"value": round(point, 4), "n": n, "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "method": "rogan-gladen, parametric bootstrap", "sensitivity": round(se, 4), "specificity": round(sp, 4)}


def success_figure(rows: list[dict], judge: str, quality: dict | None, seed: int) -> dict:
    """Successes of the judged (``ok``) rows as a Wilson figure, with the corrected rate where the judge is measured."""
    ok = [r for r in rows if r["status"] == "ok"]
    k = sum(bool(r["success"]) for r in ok)
    fig = Figure.rate(k, len(ok), judge).as_dict()
    if quality is not None:
        corr = corrected_rate(k, len(ok), quality, seed=seed)
        if corr is not None:
            fig["corrected"] = corr
    return fig


def status_counts(rows: list[dict]) -> dict[str, int]:
    out = {s: 0 for s in ("ok", "error", "attacker_refused", "unscored")}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out

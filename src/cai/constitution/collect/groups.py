"""Opinion groups: PCA of the vote matrix, k-means with k chosen by silhouette, stability across seeds (numpy only).

As in Polis, a participant's missing votes are filled with the statement's mean vote before the projection, and a
participant who voted on few statements is pushed out from the centre by sqrt(statements / their votes), so sparse
voters are not all piled up in the middle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def pca(votes: np.ndarray, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(projections of participants, share of variance of each component); NaN votes filled by column means."""
    m = votes.copy()
    col_mean = np.nanmean(np.where(np.isnan(m).all(0, keepdims=True), 0.0, m), axis=0)
    col_mean = np.nan_to_num(col_mean)
    m = np.where(np.isnan(m), col_mean, m)
    centred = m - m.mean(0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(components, len(s)))
    proj = centred @ vt[:k].T
    seen = (~np.isnan(votes)).sum(1)
    proj *= np.sqrt(votes.shape[1] / np.maximum(seen, 1))[:, None]
    var = s ** 2
    share = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return proj, share


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 10, iters: int = 100) -> tuple[np.ndarray, float]:
    """(labels, inertia) of the best of ``n_init`` k-means++ runs."""
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, float] | None = None
    n = len(x)
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d2 = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
            total = d2.sum()
            centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
        c = np.array(centres)
        labels = np.zeros(n, dtype=int)
        for it in range(iters):
            d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
            new = d.argmin(1)
            if it > 0 and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                if np.any(labels == j):
                    c[j] = x[labels == j].mean(0)
        inertia = float(((x - c[labels]) ** 2).sum())
        if best is None or inertia < best[1] - 1e-12:
            best = (canonical(labels), inertia)
    assert best is not None
    return best


def canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel groups by size, largest first (ties: first appearance), so group 0 is the same group across seeds."""
    ids, counts = np.unique(labels, return_counts=True)
    first = {i: int(np.argmax(labels == i)) for i in ids}
    order = sorted(ids, key=lambda i: (-counts[list(ids).index(i)], first[i]))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[v] for v in labels])


def silhouette(x: np.ndarray, labels: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """Mean silhouette coefficient (Euclidean); at most ``max_points`` participants sampled for large inputs."""
    if len(np.unique(labels)) < 2:
        return -1.0
    if len(x) > max_points:
        idx = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x, labels = x[idx], labels[idx]
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None]) ** 2).sum(-1), 0))
    s = np.zeros(len(x))
    for i in range(len(x)):
        same = labels == labels[i]
        if same.sum() <= 1:
            continue
        a = d[i, same].sum() / (same.sum() - 1)
        b = min(d[i, labels == g].mean() for g in np.unique(labels) if g != labels[i])
        s[i] = 0.0 if max(a, b) == 0 else (b - a) / max(a, b)
    return float(s.mean())


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (1: identical up to names; about 0: unrelated)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def comb2(v):
        return v * (v - 1) / 2

    index = comb2(table).sum()
    ra, rb = comb2(table.sum(1)).sum(), comb2(table.sum(0)).sum()
    expected = ra * rb / comb2(len(a)) if len(a) > 1 else 0.0
    top = (ra + rb) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))


@dataclass
class Groups:
    labels: np.ndarray
    k: int
    silhouette_by_k: dict[int, float]
    sizes: list[int]
    variance_share: list[float]
    stability: dict = field(default_factory=dict)
    projection: np.ndarray | None = None


def find_groups(votes: np.ndarray, *, max_k: int, min_group: int, seed: int, stability_seeds: int,
                components: int = 2) -> Groups:
    """Project, cluster for k = 2..max_k, keep the k with the best silhouette whose groups all have ``min_group``
    members (k = 1 when none does), then rerun with other seeds to measure stability."""
    proj, share = pca(votes, components)
    n = len(votes)

    def best_for(s: int) -> tuple[int, np.ndarray, dict[int, float]]:
        scores: dict[int, float] = {}
        found: tuple[int, np.ndarray] | None = None
        for k in range(2, max(2, min(max_k, n - 1)) + 1):
            if k >= n:
                break
            labels, _ = kmeans(proj, k, seed=s)
            sizes = np.bincount(labels, minlength=k)
            scores[k] = silhouette(proj, labels, seed=s)
            if sizes.min() >= min_group and (found is None or scores[k] > scores[found[0]]):
                found = (k, labels)
        if found is None:
            return 1, np.zeros(n, dtype=int), scores
        return found[0], found[1], scores

    k, labels, scores = best_for(seed)
    same_k, aris = 0, []
    for extra in range(1, stability_seeds + 1):
        k2, labels2, _ = best_for(seed + extra)
        same_k += k2 == k
        aris.append(adjusted_rand(labels, labels2))
    stability = {"seeds": stability_seeds, "same_k": same_k,
                 "adjusted_rand_mean": float(np.mean(aris)) if aris else None,
                 "adjusted_rand_min": float(np.min(aris)) if aris else None}
    return Groups(labels, k, scores, [int(c) for c in np.bincount(labels, minlength=k)], [float(x) for x in share],
                  stability, proj)

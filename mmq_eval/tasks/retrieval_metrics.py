"""Retrieval metric maths: which texts are correct for which image, ranks of the correct items in
a score matrix, and Recall@K. Pure torch, no model."""

from __future__ import annotations

import torch


def correct_pairs(refs: list[list[str]], match_identical: bool) -> torch.Tensor:
    """(images, texts) correctness, texts being all references in order.

    A text is correct for its own image and, with ``match_identical``, for every image whose
    references hold the identical string.
    """
    owner = torch.tensor([i for i, r in enumerate(refs) for _ in r])
    correct = owner[None, :] == torch.arange(len(refs))[:, None]
    if match_identical:
        positions: dict[str, list[int]] = {}
        for j, text in enumerate(t for r in refs for t in r):
            positions.setdefault(text, []).append(j)
        for i, r in enumerate(refs):
            for text in set(r):
                correct[i, positions[text]] = True
    return correct


def ranks_from_scores(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query's best correct candidate (rows: queries, columns: candidates).

    A tie with a wrong candidate counts against the model: rank = number of wrong candidates
    scoring at least as high as the best correct one (so constant scores give no recall).
    """
    best = torch.where(correct, scores, scores.new_tensor(float("-inf"))).amax(dim=1, keepdim=True)
    return ((scores >= best) & ~correct).sum(dim=1)


def recall_at_k(ranks, k: int) -> float:
    """Fraction of queries whose best correct candidate ranks within the top ``k``."""
    ranks = torch.as_tensor(ranks)
    return float((ranks < k).float().mean()) if len(ranks) else float("nan")

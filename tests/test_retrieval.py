"""Retrieval math against brute force, and the ITC/ITM pieces against transformers' own forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmq_eval.models.processes import Processes
from mmq_eval.models.retrieval import (
    blip_caption,
    image_features,
    itc_similarity,
    itm_logits,
    rerank,
    text_features,
)
from mmq_eval.tasks import retrieval as task
from mmq_eval.tasks.retrieval_metrics import correct_pairs, ranks_from_scores, recall_at_k


def brute_force_ranks(scores: torch.Tensor, correct: torch.Tensor) -> list[int]:
    """Sort each row by score, wrong candidates first among ties; the first correct position."""
    ranks = []
    for row, ok in zip(scores.tolist(), correct.tolist()):
        order = sorted(range(len(row)), key=lambda c: (-row[c], ok[c]))
        ranks.append(next(pos for pos, c in enumerate(order) if ok[c]))
    return ranks


def random_scores(seed: int, rows: int, columns: int) -> torch.Tensor:
    """Rounded scores (ties are common) with -inf entries, as pairs outside the re-ranked top-k."""
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.rand(rows, columns, generator=gen) * 20).round() / 20
    scores[torch.rand(scores.shape, generator=gen) < 0.3] = float("-inf")
    return scores


def random_gallery(seed: int, n_images: int = 30, per_image: int = 5):
    """Random i2t scores and references drawn from 40 strings (so some are shared)."""
    scores = random_scores(seed, n_images, n_images * per_image)
    gen = torch.Generator().manual_seed(seed + 1000)
    refs = [[f"caption {int(torch.randint(40, (1,), generator=gen))}" for _ in range(per_image)]
            for _ in range(n_images)]
    return scores, refs


@pytest.mark.parametrize("match_identical", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_and_recall_equal_brute_force_in_both_directions(seed, match_identical):
    scores, refs = random_gallery(seed)
    correct = correct_pairs(refs, match_identical)
    scores_t2i = random_scores(seed + 100, correct.shape[1], correct.shape[0])
    i2t = ranks_from_scores(scores, correct)
    t2i = ranks_from_scores(scores_t2i, correct.t())
    brute_i2t = brute_force_ranks(scores, correct)
    brute_t2i = brute_force_ranks(scores_t2i, correct.t())
    assert i2t.tolist() == brute_i2t and t2i.tolist() == brute_t2i
    for k in (1, 5, 10):
        assert recall_at_k(i2t, k) == pytest.approx(sum(r < k for r in brute_i2t) / len(brute_i2t))
        assert recall_at_k(t2i, k) == pytest.approx(sum(r < k for r in brute_t2i) / len(brute_t2i))

    # the task's aggregations (percent) over per-doc responses, as lmms-eval hands them over
    owner = [i for i, r in enumerate(refs) for _ in r]
    responses = [json.dumps({"i2t": brute_i2t[i], "t2i": [brute_t2i[j] for j, o in enumerate(owner) if o == i]})
                 for i in range(len(refs))]
    per_doc = [task.process_results({}, [response])["i2t_r1"] for response in responses]
    six = []
    for direction, brute in (("i2t", brute_i2t), ("t2i", brute_t2i)):
        for k in (1, 5, 10):
            got = getattr(task, f"{direction}_r{k}")(per_doc)
            assert got == pytest.approx(100 * sum(r < k for r in brute) / len(brute))
            six.append(got)
    assert task.mean_recall(per_doc) == pytest.approx(sum(six) / 6)


def test_constant_scores_give_no_recall():
    correct = correct_pairs([["a"], ["b"], ["c"]], False)
    assert ranks_from_scores(torch.zeros(3, 3), correct).tolist() == [2, 2, 2]


def test_identical_captions_are_correct_for_every_image_holding_them():
    refs = [["a red circle", "x"], ["a red circle", "y"], ["z"]]
    assert correct_pairs(refs, True).int().tolist() == [[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert correct_pairs(refs, False).int().tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]


def test_rerank_equals_the_lavis_loops():
    gen = torch.Generator().manual_seed(0)
    sims, itm = torch.rand(7, 20, generator=gen), torch.randn(7, 20, generator=gen)
    k = 4
    i2t, t2i = rerank(sims, lambda i, t: itm[i, t], k_test=k, batch_size=3)
    want_i2t = torch.full((7, 20), float("-inf"))
    for i in range(7):
        top = sims[i].topk(k).indices
        want_i2t[i, top] = itm[i, top] + sims[i, top]
    want_t2i = torch.full((20, 7), float("-inf"))
    for t in range(20):
        top = sims[:, t].topk(k).indices
        want_t2i[t, top] = itm[top, t] + sims[top, t]
    assert torch.equal(i2t, want_i2t) and torch.equal(t2i, want_t2i)


class OnItsOwn(Processes):
    """Process ``rank`` of ``size`` whose sum leaves out the others' shares."""

    def sum(self, tensor):
        return tensor


def test_rerank_shares_each_itm_pair_between_processes_once():
    gen = torch.Generator().manual_seed(1)
    sims, itm = torch.rand(7, 20, generator=gen), torch.randn(7, 20, generator=gen)
    scored = {rank: [] for rank in (None, 0, 1)}

    def itm_term(rank):
        def term(img, txt):
            scored[rank] += list(zip(img.tolist(), txt.tolist()))
            return itm[img, txt]
        return term

    one = rerank(sims, itm_term(None), k_test=4, batch_size=3)
    shares = [rerank(sims, itm_term(rank), k_test=4, batch_size=3, processes=OnItsOwn(rank, 2)) for rank in (0, 1)]
    assert sorted(scored[0] + scored[1]) == sorted(scored[None]) and not set(scored[0]) & set(scored[1])
    for direction, (full, sim) in enumerate(((one[0], sims), (one[1], sims.t()))):
        kept = full.isfinite()
        summed = shares[0][direction] + shares[1][direction] - sim  # (itm_0 + sim) + (itm_1 + sim) - sim
        torch.testing.assert_close(summed[kept], full[kept])
        assert all(not s[direction][~kept].isfinite().any() for s in shares)


def test_blip_caption_matches_lavis():
    assert blip_caption("A Dog (running)!  on the beach.\n") == "a dog running on the beach"


@pytest.fixture(scope="module")
def tiny_itm():
    from mmq_eval.shapes.train_itm import build_itm_processor, build_shapes_blip2_itm

    processor = build_itm_processor()
    model = build_shapes_blip2_itm(processor.tokenizer, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 64, 64, generator=gen)
    tokens = processor.tokenizer(["a small red circle", "two shapes a large blue square and a small red circle",
                                  "there is a green triangle"], padding="longest", return_tensors="pt",
                                 padding_side="right")
    return model, pixels, tokens["input_ids"], tokens["attention_mask"]


def test_itc_equals_transformers_forward(tiny_itm):
    model, pixels, ids, mask = tiny_itm
    with torch.no_grad():
        ours = itc_similarity(image_features(model, pixels)[1], text_features(model, ids, mask))
        theirs = model(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                       use_image_text_matching_head=False).logits_per_image
    assert ours.shape == (3, 3) and ours.std() > 1e-4
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_itm_equals_transformers_forward(tiny_itm):
    model, pixels, ids, mask = tiny_itm
    with torch.no_grad():
        ours = itm_logits(model, image_features(model, pixels)[0], ids, mask)
        theirs = model(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                       use_image_text_matching_head=True).logits_per_image
    assert ours.shape == (3, 2) and ours.std() > 1e-4
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_training_evaluates_with_the_task_settings():
    import yaml

    from mmq_eval.shapes.train_itm import EVAL_SETTINGS

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: None)
    path = "task_configs/mmq_shapes/mmq_shapes_retrieval.yaml"
    with open(Path(__file__).resolve().parents[1] / path) as f:
        settings = yaml.load(f, Loader=Loader)["generation_kwargs"]["mmq_retrieval"]
    assert {k: EVAL_SETTINGS[k] for k in settings} == settings


def test_train_smoke_saves_a_model_the_wrapper_loads(tmp_path):
    from mmq_eval.models.blip2 import MMQBlip2
    from mmq_eval.shapes import train_itm

    train_itm.main(["--out", str(tmp_path), "--steps", "2", "--batch-size", "8", "--eval-size", "6"])
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["steps"] == 2 and {"i2t_r1", "t2i_r1"} <= set(record["eval"])
    lm = MMQBlip2(pretrained=str(tmp_path), device="cpu")
    assert type(lm.model).__name__ == "Blip2ForImageTextRetrieval"

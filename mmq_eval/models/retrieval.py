"""Image-text retrieval with a BLIP-2 retrieval checkpoint (ITC ranking, ITM re-ranking), as LAVIS does.

A retrieval task has one doc per image with its reference captions. Its ``generation_kwargs``
carry ``mmq_retrieval: {...}`` with these settings:

- ``k_test`` (128): candidates per query re-ranked by the ITM head, as BLIP-2's evaluation does.
- ``caption_key`` ("captions"): the doc field holding the list of reference captions.
- ``match_identical_captions`` (false): also count a caption as correct for every other image
  whose references hold the identical (normalised) string. Off gives the standard protocol (only
  an image's own captions are correct); the shapes world turns it on because there many images
  share captions ("a small red circle"), which would otherwise cap R@1.
- ``max_txt_len`` (35): caption tokens kept, as LAVIS's BLIP-2 retrieval.
- ``itm_score`` ("logit"): the ITM term of a re-ranked pair: "logit" is the match logit averaged
  over query tokens (LAVIS's ``compute_itm``), "prob" its softmax match probability.

The final score of a pair among a query's top ``k_test`` ITC candidates is ITM term + ITC
similarity; every other pair scores -inf. Ties count against the model (see
``mmq_eval.tasks.retrieval_metrics.ranks_from_scores``).

Under several lmms-eval processes the gallery is the union of all processes' docs: as LAVIS,
every process extracts all features, scores its share of the ITM pairs, and the shares are summed.
"""

from __future__ import annotations

import json
import re

import torch
from torch import nn
from tqdm import tqdm
from transformers import Blip2ForImageTextRetrieval

from mmq_eval.errors import MMQConfigError, MMQDataError
from mmq_eval.models.processes import ONE_PROCESS, Processes
from mmq_eval.tasks.retrieval_metrics import correct_pairs, ranks_from_scores

DEFAULTS = {
    "k_test": 128,
    "caption_key": "captions",
    "match_identical_captions": False,
    "max_txt_len": 35,
    "itm_score": "logit",
}
MAX_WORDS = 50
ITM_BATCH = 128


def blip_caption(text: str) -> str:
    """LAVIS's ``blip_caption`` text processing: lower case, no punctuation, at most 50 words."""
    text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    return " ".join(text.split(" ")[:MAX_WORDS])


# ---- model pieces (mirror Blip2ForImageTextRetrieval.forward) --------------------------------
def image_features(model: Blip2ForImageTextRetrieval, pixel_values: torch.Tensor):
    """(ViT patch features, normalised per-query ITC embeddings (n, queries, dim))."""
    vit = model.vision_model(pixel_values=pixel_values).last_hidden_state
    vit_mask = torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device)
    queries = model.query_tokens.expand(vit.shape[0], -1, -1)
    out = model.qformer(query_embeds=queries, encoder_hidden_states=vit, encoder_attention_mask=vit_mask)
    embeds = out.last_hidden_state.to(model.vision_projection.weight.dtype)
    return vit, nn.functional.normalize(model.vision_projection(embeds), dim=-1)


def text_features(model: Blip2ForImageTextRetrieval, input_ids, attention_mask) -> torch.Tensor:
    """Normalised ITC embedding of each text: the projected first (CLS) token of the text-only Q-Former."""
    embeds = model.embeddings(input_ids=input_ids)
    out = model.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask)
    cls = out.last_hidden_state[:, 0, :].to(model.text_projection.weight.dtype)
    return nn.functional.normalize(model.text_projection(cls), dim=-1)


def itm_logits(model: Blip2ForImageTextRetrieval, vit, input_ids, attention_mask) -> torch.Tensor:
    """(n, 2) ITM logits of image features ``vit`` with texts, averaged over the query tokens."""
    queries = model.query_tokens.expand(vit.shape[0], -1, -1)
    query_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=queries.device)
    vit_mask = torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device)
    out = model.qformer(
        query_embeds=model.embeddings(input_ids=input_ids, query_embeds=queries),
        query_length=queries.shape[1],
        attention_mask=torch.cat([query_mask, attention_mask], dim=1),
        encoder_hidden_states=vit,
        encoder_attention_mask=vit_mask,
    )
    hidden = out.last_hidden_state[:, : queries.shape[1], :].to(model.itm_head.weight.dtype)
    return model.itm_head(hidden).mean(dim=1)


def itc_similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """(images, texts) cosine similarity, the maximum over an image's query tokens."""
    return torch.einsum("iqd,td->itq", image_embeds.float(), text_embeds.float()).amax(dim=-1)


def topk_mask(sims: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of each row's ``k`` largest entries."""
    mask = torch.zeros_like(sims, dtype=torch.bool)
    return mask.scatter_(1, sims.topk(min(k, sims.shape[1]), dim=1).indices, True)


def rerank(sims: torch.Tensor, itm_term, k_test: int, batch_size: int, processes: Processes = ONE_PROCESS):
    """(i2t scores, t2i scores): ITM term + ITC similarity on each query's top-k, -inf elsewhere.

    ``itm_term(image_idx, text_idx)`` scores a batch of pairs; each pair in the union of both
    directions' top-k sets is scored once, by one of the ``processes`` (``sims`` must be
    identical on all of them).
    """
    i2t, t2i = topk_mask(sims, k_test), topk_mask(sims.t(), k_test).t()
    pairs = (i2t | t2i).nonzero()[processes.rank::processes.size]
    itm = torch.zeros_like(sims)
    batches = range(0, len(pairs), batch_size)
    for start in tqdm(batches, desc="ITM re-ranking", disable=processes.rank != 0):
        img, txt = pairs[start:start + batch_size].unbind(1)
        itm[img, txt] = itm_term(img, txt).float().to(itm.device)
    scores = processes.sum(itm) + sims
    minus_inf = torch.tensor(float("-inf"), device=sims.device)
    return torch.where(i2t, scores, minus_inf), torch.where(t2i, scores, minus_inf).t()


# ---- lmms-eval entry point ----------------------------------------------------------------------
def _settings(gen_kwargs: dict) -> dict:
    given = gen_kwargs["mmq_retrieval"] or {}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise MMQConfigError(
            f"unknown mmq_retrieval setting(s) {sorted(unknown)}; accepted: {sorted(DEFAULTS)}"
        )
    settings = {**DEFAULTS, **given}
    if settings["itm_score"] not in ("logit", "prob"):
        raise MMQConfigError(f"mmq_retrieval itm_score={settings['itm_score']!r}: use 'logit' or 'prob'")
    return settings


def _check_model(lm, tasks: list[str]) -> None:
    if not isinstance(lm.model, Blip2ForImageTextRetrieval):
        raise MMQConfigError(
            f"task(s) {', '.join(tasks)} need an image-text retrieval checkpoint with ITC/ITM heads "
            f"(Blip2ForImageTextRetrieval, e.g. Salesforce/blip2-itm-vit-g-coco or mmq:shapes-blip2-itm); "
            f"pretrained={lm.args.pretrained!r} is a {type(lm.model).__name__} without them"
        )


def _gallery_ids(processes: Processes, local: dict[tuple, list[int]]) -> dict[tuple, list[int]]:
    """The doc ids of each (task, split) gallery over all processes, given this process's ``local`` ones.

    Every process must hold docs of the same galleries, or the collectives that follow would wait
    for ever; MMQConfigError on every process otherwise.
    """
    parts = processes.gather(local)
    uneven = sorted({key[0] for part in parts for key in part if any(key not in other for other in parts)})
    if uneven:
        raise MMQConfigError(
            f"retrieval task(s) {', '.join(uneven)} reached only some of the {processes.size} lmms-eval "
            "processes (each needs part of the gallery): run them in fewer processes"
        )
    return {key: sorted({i for part in parts for i in part[key]}) for key in local}


@torch.inference_mode()
def gallery_ranks(model, processor, images: list, refs: list[list[str]], settings: dict, batch_size: int,
                  processes: Processes = ONE_PROCESS):
    """(i2t ranks per image, t2i ranks per caption) of one gallery, captions flattened in order.

    ``settings`` holds every ``DEFAULTS`` key; ``processor`` gives ``image_processor`` and ``tokenizer``.
    """
    device, batch = model.device, max(int(batch_size), 1)
    vit, image_embeds = [], []
    for start in range(0, len(images), batch):
        pixels = processor.image_processor(images[start:start + batch], return_tensors="pt")
        feats = image_features(model, pixels["pixel_values"].to(device, model.dtype))
        vit.append(feats[0])
        image_embeds.append(feats[1])
    vit = torch.cat(vit)
    texts = [blip_caption(t) for r in refs for t in r]
    tokens = processor.tokenizer(
        texts, padding="longest", truncation=True, max_length=settings["max_txt_len"],
        return_tensors="pt", padding_side="right",
    ).to(device)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    text_embeds = torch.cat([
        text_features(model, ids[s:s + batch], mask[s:s + batch]) for s in range(0, len(texts), batch)
    ])
    # process 0's similarities everywhere, so that all processes re-rank the same pairs
    sims = processes.broadcast(itc_similarity(torch.cat(image_embeds), text_embeds).cpu())

    def itm_term(img, txt):
        img, txt = img.to(device), txt.to(device)
        logits = itm_logits(model, vit[img], ids[txt], mask[txt]).float()
        return logits.softmax(dim=-1)[:, 1] if settings["itm_score"] == "prob" else logits[:, 1]

    scores_i2t, scores_t2i = rerank(sims, itm_term, settings["k_test"], ITM_BATCH, processes)
    correct = correct_pairs([[blip_caption(t) for t in r] for r in refs], settings["match_identical_captions"])
    return ranks_from_scores(scores_i2t, correct), ranks_from_scores(scores_t2i, correct.t())


def retrieval_outputs(lm, requests) -> list[str]:
    """One JSON string per request: ``{"i2t": rank, "t2i": [rank per caption]}`` (0-based).

    ``i2t`` is the rank of the doc image's best correct caption among all captions; ``t2i`` gives,
    for each of its captions, the rank of the best correct image among all images. The docs of
    one (task, split), over all lmms-eval processes, form the gallery (lmms-eval gives every
    process at least one request of each task, padding with doc 0 where it has none).
    """
    processes = Processes.of(lm)
    local: dict[tuple, list] = {}  # (task, split) -> [doc_to_visual, gen_kwargs, doc ids]
    for req in requests:
        _, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
        local.setdefault((task, split), [doc_to_visual, gen_kwargs, set()])[2].add(doc_id)
    _check_model(lm, sorted({task for task, _ in local}))
    galleries = _gallery_ids(processes, {key: sorted(ids) for key, (_, _, ids) in local.items()})
    answers: dict[tuple, str] = {}
    for (task, split), doc_ids in sorted(galleries.items()):
        doc_to_visual, gen_kwargs, _ = local[(task, split)]
        settings = _settings(gen_kwargs)
        images, refs = [], []
        for doc_id in doc_ids:
            images.append(lm._image_for(doc_to_visual, doc_id, task, split))
            doc = lm.task_dict[task][split][doc_id]
            captions = list(doc.get(settings["caption_key"]) or [])
            if not captions:
                raise MMQDataError(
                    f"task {task!r} doc {doc_id} has no captions in field {settings['caption_key']!r}"
                )
            refs.append(captions)
        i2t, t2i = gallery_ranks(lm.model, lm._processor, images, refs, settings, lm.batch_size, processes)
        start = 0
        for i, doc_id in enumerate(doc_ids):
            own = t2i[start:start + len(refs[i])].tolist()
            start += len(refs[i])
            answers[(task, split, doc_id)] = json.dumps({"i2t": int(i2t[i]), "t2i": own})
    return [answers[(r.args[4], r.args[5], r.args[3])] for r in requests]

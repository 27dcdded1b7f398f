"""mmq_blip2 / mmq_llava on tiny random checkpoints: batching, gen_kwargs, loglikelihood, errors."""

import math

import pytest
import torch

from lmms_requests import generate_requests, loglikelihood_requests, make_docs
from mmq_eval.errors import MMQConfigError
from mmq_eval.models.blip2 import MMQBlip2
from mmq_eval.models.llava import MMQLlava

N_DOCS = 8


WRAPPERS = {"tiny_blip2_dir": MMQBlip2, "tiny_blip2_t5_dir": MMQBlip2, "tiny_llava_dir": MMQLlava}
ALL = list(WRAPPERS)


def make_model(path, cls=MMQBlip2, **kwargs):
    lm = cls(pretrained=str(path), device="cpu", quant_cache="none", **kwargs)
    lm.task_dict = {"t": {"test": make_docs(N_DOCS)}}
    return lm


def texts(results):
    return [r.text if hasattr(r, "text") else r for r in results]


CONTEXTS = ["", "Question: what color is it ? Answer:", "<image>a photo of", "two shapes",
            "Question: how many ? Answer:", "", "a", "question : what shape ?"]


@pytest.mark.parametrize("fixture", ALL)
def test_batch_sizes_give_identical_generations(request, fixture):
    path, cls = request.getfixturevalue(fixture), WRAPPERS[fixture]
    gen = {"max_new_tokens": 6, "temperature": 0, "num_beams": 1, "do_sample": False}
    one = make_model(path, cls, batch_size=1).generate_until(generate_requests(CONTEXTS, gen))
    four = make_model(path, cls, batch_size="4").generate_until(generate_requests(CONTEXTS, gen))
    assert one == four
    assert len(one) == N_DOCS and any(one)


def test_gen_kwargs_max_new_tokens_and_until(tiny_blip2_dir):
    lm = make_model(tiny_blip2_dir, batch_size=4)
    long = lm.generate_until(generate_requests(CONTEXTS, {"max_new_tokens": 8}))
    short = lm.generate_until(generate_requests(CONTEXTS, {"max_new_tokens": 2}))
    for full, cut in zip(long, short):
        assert len(cut.split()) <= 2
        assert full.startswith(cut)
    words = long[0].split()
    assert len(words) >= 3, long[0]
    stop = words[2]
    stopped = lm.generate_until(generate_requests(CONTEXTS[:1], {"max_new_tokens": 8, "until": [stop]}))
    assert stopped[0] == long[0].split(stop, 1)[0].strip()


@pytest.mark.parametrize("fixture", ALL)
def test_loglikelihood_chain_rule_greedy_and_batching(request, fixture):
    lm = make_model(request.getfixturevalue(fixture), WRAPPERS[fixture], batch_size=1)
    greedy = lm.generate_until(generate_requests(["Question: what color ? Answer:"], {"max_new_tokens": 2}))[0]
    first, second = greedy.split()[:2]
    ctx = "Question: what color ? Answer:"
    pairs = [
        (0, ctx, f" {first} {second}"),
        (0, ctx, f" {first}"),
        (0, f"{ctx} {first}", f" {second}"),
        (0, ctx, " zebra"),  # not in the vocabulary: <unk>, never greedy here
    ]
    single = [r.text for r in lm.loglikelihood(loglikelihood_requests(pairs))]
    lm.args = lm.args.__class__(**{**lm.args.__dict__, "batch_size": 4})
    batched = [r.text for r in lm.loglikelihood(loglikelihood_requests(pairs))]
    for (a, ga), (b, gb) in zip(single, batched):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    (both, both_greedy), (lp1, g1), (lp2, g2), (lp_unk, _) = single
    if isinstance(lm, MMQBlip2) and lm._decoder_only:
        # p(a b | c) = p(a | c) p(b | c a); BLIP-2 prompts are the context as is (LLaVA's chat
        # template puts the context inside the user turn, so the identity does not apply there)
        assert both == pytest.approx(lp1 + lp2, abs=1e-4)
        assert g1 and g2
    assert both_greedy
    assert all(v < 0 for v in (both, lp1, lp2, lp_unk)) and math.isfinite(lp_unk)


def test_unknown_model_arg_is_rejected_before_loading():
    with pytest.raises(MMQConfigError, match=r"unknown model arg 'bogus'.*Accepted model args: .*llm_bits"):
        MMQBlip2(pretrained="no/such-model", bogus=1)


def test_misspelt_arg_gets_a_suggestion():
    with pytest.raises(MMQConfigError, match=r"Did you mean llm_bits"):
        MMQBlip2(pretrained="no/such-model", llm_bit=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "float64"}, r"dtype='float64' is not supported; use one of auto, float32, float16, bfloat16"),
        ({"batch_size": 0}, r"batch_size=0 must be a positive integer"),
        ({"batch_size": "auto"}, r"batch_size='auto' is not supported"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "tpu"}, r"device="),
        ({"llm_bits": 9, "method": "uniform"}, r"llm_bits"),
    ],
)
def test_bad_values_name_the_arg(kwargs, message):
    with pytest.raises(MMQConfigError, match=message):
        MMQBlip2(pretrained="no/such-model", **kwargs)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(MMQConfigError, match=r"could not read its config"):
        MMQBlip2(pretrained="no-such-org/no-such-model", device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(MMQConfigError, match=r"without config.json"):
        MMQBlip2(pretrained=str(tmp_path), device="cpu")
    with pytest.raises(MMQConfigError, match=r"not an embedded model; embedded models: "):
        MMQBlip2(pretrained="mmq:nope", device="cpu")


def test_uniform_llm_bits_quantizes_only_the_llm(tiny_blip2_dir):
    fp = make_model(tiny_blip2_dir)
    q = make_model(tiny_blip2_dir, method="uniform", llm_bits=2)
    fp_params = dict(fp.model.named_parameters())
    changed = {n for n, p in q.model.named_parameters() if not torch.equal(p, fp_params[n])}
    assert changed and all(n.startswith("language_model.") and n.endswith(".weight") for n in changed)
    assert q.quant_report.bpw < 16.0


def test_family_mismatch_is_a_clear_error(tiny_blip2_dir, tiny_llava_dir):
    with pytest.raises(MMQConfigError, match=r"is a LlavaForConditionalGeneration, not a checkpoint this model "
                                             r"serves \(Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval\); "
                                             r"use --model mmq_llava"):
        MMQBlip2(pretrained=str(tiny_llava_dir), device="cpu")
    with pytest.raises(MMQConfigError, match=r"is a Blip2ForConditionalGeneration, not a checkpoint this model "
                                             r"serves \(LlavaForConditionalGeneration\); use --model mmq_blip2"):
        MMQLlava(pretrained=str(tiny_blip2_dir), device="cpu")


def test_gptq_through_model_args_on_t5_and_opt(tiny_blip2_dir, tiny_blip2_t5_dir, tmp_path):
    """Calibration batches reach every component (T5 needs decoder inputs) and GPTQ changes
    exactly the targeted LLM weights."""
    from PIL import Image

    images = tmp_path / "calib"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 255 - 60 * i, 90)).save(images / f"{i}.png")
    for path in (tiny_blip2_dir, tiny_blip2_t5_dir):
        fp = make_model(path)
        q = make_model(path, method="gptq", llm_bits=4, group_size=-1, calib_samples=4,
                       calib_data=str(images))
        fp_params = dict(fp.model.named_parameters())
        changed = {n for n, p in q.model.named_parameters() if not torch.equal(p, fp_params[n])}
        assert changed and all(n.startswith("language_model.") for n in changed), path
        assert q.quant_report.to_dict()["calibration"], path

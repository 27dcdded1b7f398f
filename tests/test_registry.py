"""The architecture registry: every registered family walks the same checks, a family registered
from outside the package quantizes, and a missing or mismatched entry is a clear error."""

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from quant_tiny import blip2_batches, itm_batches, llava_batches, make_tiny_blip2, make_tiny_itm, make_tiny_llava
from tiny_vlms import BUILDERS, chat_batches, make_tiny_vlm
from torch import nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant import awq as awq_mod
from mmq_eval.quant.arch import resolve_arch
from mmq_eval.quant.calibration import advance, block_output, capture_stack_inputs, run_block
from mmq_eval.quant.formats import QuantizedWeight
from mmq_eval.quant.registry import (
    ACTIVATION,
    ATTENTION,
    BLOCK_KINDS,
    FAMILIES,
    NORM,
    BlockKind,
    ComponentDef,
    Family,
    ScaleMapping,
    StackDef,
    components_of,
    lmms_models,
    register_block_kind,
    register_family,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blip2(llm):
    def build():
        model, processor = make_tiny_blip2(0, llm)
        return model, processor, blip2_batches(processor, llm)
    return build


def _itm():
    return make_tiny_itm(0), None, itm_batches()


def _llava():
    model, processor = make_tiny_llava(0)
    return model, processor, llava_batches(model.config)


def _chat_vlm(arch):
    def build():
        model, processor = make_tiny_vlm(arch)
        return model, processor, chat_batches(processor)
    return build


#: A tiny random model from a config for every registered family (and each language-model option).
TINY = {
    "Blip2ForConditionalGeneration": {"opt": _blip2("opt"), "t5": _blip2("t5")},
    "Blip2ForImageTextRetrieval": {"itm": _itm},
    "LlavaForConditionalGeneration": {"llama": _llava},
    **{arch: {"tiny": _chat_vlm(arch)} for arch in BUILDERS},
}
CASES = [(arch, variant) for arch, builders in TINY.items() for variant in builders]
_BUILT: dict = {}


def tiny(arch, variant):
    """(model, processor, calibration batches): a fresh copy of the model each call."""
    import copy

    if (arch, variant) not in _BUILT:
        _BUILT[(arch, variant)] = TINY[arch][variant]()
    model, processor, batches = _BUILT[(arch, variant)]
    return copy.deepcopy(model), processor, batches


def _outputs(model, out):
    return out.logits_per_image if type(model).__name__ == "Blip2ForImageTextRetrieval" else out.logits


def test_every_registered_family_has_a_tiny_model():
    assert set(TINY) == set(FAMILIES), "add a tiny model builder to TINY for each registered family"


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_each_component_changes_exactly_its_linears(arch, variant):
    model, _, _ = tiny(arch, variant)
    assert type(model).__name__ == arch
    linears = resolve_arch(model).linears
    for comp in resolve_arch(model).component_names:
        m = tiny(arch, variant)[0]
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        report = quantize_model(m, QuantSpec.from_args({"method": "rtn", f"{comp}_bits": 4}), progress=False)
        want = {li.name for li in linears if li.component == comp}
        assert want and {r.name for r in report.layers} == want
        for name, p in m.named_parameters():
            targeted = name.endswith(".weight") and name[: -len(".weight")] in want
            assert torch.equal(p, before[name]) != targeted, f"{comp}: {name}"


@pytest.mark.parametrize(("arch", "variant"), CASES)
@pytest.mark.parametrize("method", ["uniform", "rtn", "gptq", "awq"])
def test_every_method_runs_and_keeps_its_codes(arch, variant, method):
    model, _, batches = tiny(arch, variant)
    args = {"method": method, "bits": 4} | ({"calib_samples": 8} if method in ("gptq", "awq") else {})
    report = quantize_model(model, QuantSpec.from_args(args), batches, progress=False)
    names = {li.name for li in resolve_arch(model).linears}
    assert {r.name for r in report.layers} == names == set(report.qweights)
    for name, q in report.qweights.items():
        w = model.get_submodule(name).weight
        assert q.weight is None and q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 15
        if q.group_size:  # the codes, scales and zeros are the weights the model holds
            assert torch.equal(q.dequantize().to(w.dtype), w), name
    with torch.no_grad():
        assert torch.isfinite(_outputs(model, model(**batches[0]))).all()


@dataclass
class Unrounded(QuantizedWeight):
    """A "quantized" weight that dequantizes to the weight itself (the engine dequantizes a block's
    weights one at a time when it sets them)."""

    exact: torch.Tensor | None = None

    def dequantize(self) -> torch.Tensor:
        return self.exact


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_awq_folds_are_exact_before_rounding(arch, variant, monkeypatch):
    model, _, batches = tiny(arch, variant)
    model = model.double()
    batches = [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in batches]
    with torch.no_grad():
        ref = _outputs(model, model(**batches[0]))
    gen = torch.Generator().manual_seed(0)

    def random_scale(weights, X, x_mean, fmt):
        return torch.exp(torch.randn(X.shape[1], generator=gen, dtype=torch.float64) * 0.5)

    def unrounded(W, clip, fmt):
        return Unrounded(torch.zeros_like(W, dtype=torch.uint8), torch.ones(W.shape[0], 1),
                         torch.zeros(W.shape[0], 1), W.shape[1], fmt.bits, fmt.sym, weight=W.clone(), exact=W.clone())

    monkeypatch.setattr(awq_mod, "search_scale", random_scale)
    monkeypatch.setattr(awq_mod, "quantize_with_clip", unrounded)
    report = quantize_model(model, QuantSpec.from_args({"method": "awq", "bits": 4}), batches, progress=False)
    assert report.folded and sum(bool(r.awq_scaled) for r in report.layers) >= 4
    with torch.no_grad():
        out = _outputs(model, model(**batches[0]))
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_export_round_trip_where_exportable(arch, variant, tmp_path):
    pytest.importorskip("compressed_tensors")
    from mmq_eval.export.packed import write_packed
    from mmq_eval.quant.plan import build_plan

    model, _, batches = tiny(arch, variant)
    spec = QuantSpec.from_args({"method": "rtn", "bits": 4, "sym": True})
    plan = build_plan(model, spec)
    unexportable = [c.name for c in plan.arch.components if c.unexportable]
    if unexportable:  # refused by name, and the rest exports
        with pytest.raises(MMQConfigError, match=rf"a quantized {unexportable[0]} cannot be exported.*"
                                                 rf"set {unexportable[0]}_bits=16"):
            write_packed(model, None, plan, {}, tmp_path)
        spec = QuantSpec.from_args({"method": "rtn", "bits": 4, "sym": True} | {f"{c}_bits": 16 for c in unexportable})
    report = quantize_model(model, spec, progress=False)
    with torch.no_grad():
        ref = _outputs(model, model(**batches[0]))
    assert report.layers
    write_packed(model, None, build_plan(model, spec), report.qweights, tmp_path)
    reloaded = type(model).from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = _outputs(reloaded, reloaded(**batches[0]))
    assert (out - ref).abs().max().item() < 1e-4


def test_lmms_models_and_components_come_from_the_registry():
    assert lmms_models() == {
        "mmq_blip2": "mmq_eval.models.blip2.MMQBlip2", "mmq_llava": "mmq_eval.models.llava.MMQLlava",
        "mmq_qwen2_vl": "mmq_eval.models.chat.MMQQwen2VL", "mmq_qwen2_5_vl": "mmq_eval.models.chat.MMQQwen2_5VL",
        "mmq_qwen3_vl": "mmq_eval.models.chat.MMQQwen3VL", "mmq_llava_hf": "mmq_eval.models.chat.MMQLlavaHf",
        "mmq_internvl_hf": "mmq_eval.models.chat.MMQInternVLHf",
    }
    from mmq_eval.plugin import model_manifests

    manifests = {m.model_id: m for m in model_manifests()}
    assert manifests["mmq_qwen2_5_vl"].chat_class_path == "mmq_eval.models.chat.MMQQwen2_5VL"
    assert manifests["mmq_qwen2_vl"].simple_class_path == "mmq_eval.models.chat.MMQQwen2VL"  # lmms-eval's qwen2_vl is simple
    assert manifests["mmq_blip2"].simple_class_path and manifests["mmq_blip2"].chat_class_path is None
    assert components_of("mmq_blip2") == ("vit", "qformer", "projector", "llm")
    assert all(components_of(m) == ("vit", "projector", "llm") for m in lmms_models() if m != "mmq_blip2")


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_block_by_block_replay_equals_the_real_forward(arch, variant):
    """The calibration's recorded inputs, advanced block by block, are what each block of every
    stack really receives (Qwen2.5-VL's window / full attention blocks included)."""
    model, _, batches = tiny(arch, variant)
    for comp in resolve_arch(model).components:
        for stack in comp.stacks:
            seen: dict = {}
            hooks = [model.get_submodule(b).register_forward_hook(
                lambda m, a, o, b=b: seen.setdefault(b, []).append(block_output(o))) for b in stack.blocks]
            with torch.no_grad():
                model(**batches[0])
            for h in hooks:
                h.remove()
            samples = capture_stack_inputs(model, stack, batches[:1])
            for i, b in enumerate(stack.blocks):
                outs = run_block(model.get_submodule(b), samples)
                for got, want in zip(outs, seen[b]):  # exact; up to float rounding after a re-added delta
                    assert torch.allclose(block_output(got), want, rtol=0, atol=1e-6), b
                    assert torch.equal(block_output(got), want) or stack.added_between, b
                if i + 1 < len(stack.blocks):
                    samples = [advance(s, o, stack.carry, i + 1) for s, o in zip(samples, outs)]


def test_per_block_arguments_are_needed_for_window_attention():
    """Without Qwen2.5-VL's per-block cu_seqlens, the full-attention block would be replayed with
    the window boundaries of block 0: the registry entry's per_block is what makes replay exact."""
    model, _, batches = tiny("Qwen2_5_VLForConditionalGeneration", "tiny")
    stack = resolve_arch(model).component("vit").stacks[0]
    assert stack.per_block == ("cu_seqlens",)
    samples = capture_stack_inputs(model, stack, batches[:1])
    windows, full = samples[0].per_block[0]["cu_seqlens"], samples[0].per_block[1]["cu_seqlens"]
    assert len(windows) > len(full)  # more, smaller attention segments in the window blocks


# ---- a family from outside the package ---------------------------------------------------------

class ToyBlock(nn.Module):
    """Pre-norm block: token mixing that is linear in v, then a ReLU MLP."""

    def __init__(self, d: int):
        super().__init__()
        self.norm, self.mlp_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.ModuleDict({"v": nn.Linear(d, d), "o": nn.Linear(d, d)})
        self.up, self.act, self.down = nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d)

    def forward(self, hidden):
        v = self.attn["v"](self.norm(hidden))
        hidden = hidden + self.attn["o"](0.5 * v + 0.5 * v.mean(1, keepdim=True))
        return hidden + self.down(self.act(self.up(self.mlp_norm(hidden))))


class ToyVLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = nn.ModuleDict({"blocks": nn.ModuleList([ToyBlock(16) for _ in range(3)])})
        self.projector = nn.Linear(16, 24)
        self.embed = nn.Embedding(10, 24)
        self.llm = nn.ModuleDict({"blocks": nn.ModuleList([ToyBlock(24) for _ in range(3)])})
        self.head = nn.Linear(24, 10)

    def forward(self, pixel_values, input_ids):
        v = pixel_values
        for block in self.vision["blocks"]:
            v = block(v)
        h = torch.cat([self.projector(v), self.embed(input_ids)], 1)
        for block in self.llm["blocks"]:
            h = block(h)
        return SimpleNamespace(logits=self.head(h))


@pytest.fixture
def toy_family():
    kind = register_block_kind(BlockKind(
        "toy_block", attn=("attn",), mlp=("up", "down"),
        awq=(ScaleMapping("norm", ("attn.v",), NORM), ScaleMapping("attn.v", ("attn.o",), ATTENTION),
             ScaleMapping("mlp_norm", ("up",), NORM), ScaleMapping("up", ("down",), ACTIVATION, activation="act")),
    ))
    fam = register_family(Family(
        "ToyVLM", lmms_model="mmq_toy", wrapper="nowhere.Toy",
        components=(ComponentDef("vit", stacks=(StackDef(("vision.blocks",), "toy_block"),)),
                    ComponentDef("projector", modules=("projector",)),
                    ComponentDef("llm", stacks=(StackDef(("llm.blocks",), "toy_block"),))),
        excluded=("head",),
    ))
    yield fam, kind
    FAMILIES.pop("ToyVLM")
    BLOCK_KINDS.pop("toy_block")


def _toy_batches():
    gen = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(4, 6, 16, generator=gen), "input_ids": torch.randint(0, 10, (4, 5), generator=gen)}
            for _ in range(2)]


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_a_family_registered_from_a_test_file_quantizes(toy_family, method):
    torch.manual_seed(0)
    model, batches = ToyVLM().eval(), _toy_batches()
    assert components_of("mmq_toy") == ("vit", "projector", "llm")
    arch = resolve_arch(model)
    assert arch.component_names == ("vit", "projector", "llm")
    assert {li.role for li in arch.linears if li.component == "llm"} == {"attn", "mlp"}
    head = model.head.weight.detach().clone()
    args = {"method": method, "bits": 4} | ({"calib_samples": 8} if method != "rtn" else {})
    report = quantize_model(model, QuantSpec.from_args(args), batches, progress=False, model_id="toy")
    assert len(report.layers) == 3 * 4 * 2 + 1 and torch.equal(model.head.weight, head)
    if method == "awq":  # the declared folds apply (whether a scale beats none depends on the data)
        kind = toy_family[1]
        assert all(len(awq_mod.applicable_mappings(b, kind)) == 4 for b in [*model.vision["blocks"], *model.llm["blocks"]])
        assert any(r.awq_scaled for r in report.layers) and report.folded
    if method == "gptq":
        assert all(r.output_rel_err < 0.05 for r in report.layers)


def test_unregistered_class_is_a_clear_error():
    with pytest.raises(MMQConfigError, match=r"does not support ToyVLM: no architecture-registry entry.*register_family"):
        resolve_arch(ToyVLM())


def test_entry_not_matching_the_model_is_a_clear_error(toy_family):
    model = ToyVLM()
    model.llm = nn.ModuleDict({"layers": model.llm["blocks"]})  # renamed: the entry's path is gone
    with pytest.raises(MMQConfigError, match=r"ToyVLM: none of the registry's block lists \['llm\.blocks'\]"):
        resolve_arch(model)
    model = ToyVLM()
    model.vision["blocks"][0].extra = nn.Linear(16, 16)  # a Linear the block kind cannot place
    with pytest.raises(MMQConfigError, match=r"vision\.blocks\.0\.extra is neither attention nor MLP in block kind 'toy_block'"):
        resolve_arch(model)


def test_a_fold_across_a_non_homogeneous_activation_cannot_happen(toy_family):
    model = ToyVLM()
    block = model.llm["blocks"][0]
    kind = toy_family[1]
    assert ("up", ("down",)) in [(m.prev, m.linears) for m in awq_mod.applicable_mappings(block, kind)]
    block.act = nn.GELU()
    assert ("up", ("down",)) not in [(m.prev, m.linears) for m in awq_mod.applicable_mappings(block, kind)]
    with pytest.raises(MMQConfigError, match="give activation= exactly when via='activation'"):
        ScaleMapping("up", ("down",), ACTIVATION)


def test_deepstack_features_are_re_added_between_llm_layers():
    """Qwen3-VL adds merged features of ViT blocks 0 and 1 after LLM layers 0 and 1: the capture
    records them before layers 1 and 2 (nothing before layer 0), and replay adds them again."""
    model, _, batches = tiny("Qwen3VLForConditionalGeneration", "tiny")
    stack = resolve_arch(model).component("llm").stacks[0]
    assert stack.added_between
    added = capture_stack_inputs(model, stack, batches[:1])[0].added
    assert [a is not None for a in added] == [False, True, True]


def test_widths_that_do_not_divide_the_group_size_are_named():
    """Qwen2.5-VL's vision MLP widths (3420 in the 7B) do not divide 128: such layers get per-channel
    scales and the notes name them; an explicit group size that does not divide is refused by name."""
    from mmq_eval.quant.plan import build_plan

    model, _, _ = tiny("Qwen2_5_VLForConditionalGeneration", "tiny")  # vision widths 32 and 40 (down_proj)
    plan = build_plan(model, QuantSpec.from_args({"method": "gptq", "vit_bits": 4}))
    assert "vit: default group size 128 does not divide in_features=40 of mlp.down_proj (3 Linears); per channel instead" in plan.notes
    assert all(f.group_size == 40 for n, f in plan.targets.items() if n.endswith("mlp.down_proj"))
    plan = build_plan(model, QuantSpec.from_args({"method": "gptq", "vit_bits": 4, "group_size": 8}))
    assert {f.group_size for f in plan.targets.values()} == {8}
    with pytest.raises(MMQConfigError, match=r"group_size=16 does not divide the input width 40 of model\.visual\.blocks\.0\.mlp\.down_proj"):
        build_plan(model, QuantSpec.from_args({"method": "gptq", "vit_bits": 4, "group_size": 16}))

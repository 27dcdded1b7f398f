"""Report: tables, Pareto plots and importance on synthetic results with a planted feature."""

import csv
import itertools
import json

import numpy as np
import pytest

from mmq_eval.report import importance
from mmq_eval.report.cli import build_report, handle
from mmq_eval.report.pareto import pareto_mask

LLM_EFFECT = {16: 3.0, 8: 2.9, 4: 2.2, 3: 1.2, 2: 0.2}


def synthetic_records():
    """llm_bits drives the caption score; the other features add little."""
    rng = np.random.default_rng(0)
    records = []
    grid = itertools.product(["uniform", "gptq"], [16, 4, 2], [16, 8, 4, 3, 2], [("first", "attn"), ("all", "both")])
    for i, (method, vit, llm, (group, ltype)) in enumerate(grid):
        feats = {"method": method, "vit_bits": vit, "qformer_bits": 16, "projector_bits": 16,
                 "llm_bits": llm, "layer_group": group, "layer_type": ltype}
        cider = LLM_EFFECT[llm] + 0.03 * (vit == 2) + rng.normal(0, 0.02)
        records.append({"config_id": f"c{i:03d}", "features": feats, "bpw": (vit + 2 * llm) / 3,
                        "results": {"mmq_shapes_cap": {"cider": cider},
                                    "mmq_shapes_vqa": {"accuracy": 0.3 + 0.02 * llm}}})
    return records


@pytest.fixture(scope="module", autouse=True)
def small_forest():
    """Fewer trees keep the test fast on two shared cores; the ranking does not depend on it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importance, "N_TREES", 30)
        yield


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    build_report(synthetic_records(), out, seed=0)
    return out


def test_planted_feature_ranks_first_in_all_three_methods(report_dir):
    with open(report_dir / "importance.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["score"] == "mmq_shapes_cap/cider"]
    for method in ("impurity", "permutation", "shap"):
        top = max(rows, key=lambda r: float(r[method]))
        assert top["feature"] == "llm_bits", method
    assert float(rows[0]["cv_r2"]) > 0.9
    assert not any(r["feature"].startswith("qformer_bits") for r in rows)  # constant: dropped


def test_pngs_written_and_non_empty(report_dir):
    names = {p.name for p in report_dir.glob("*.png")}
    for metric in ("mmq_shapes_cap_cider", "mmq_shapes_vqa_accuracy"):
        assert {f"pareto_{metric}.png", f"importance_{metric}.png"} <= names
    for png in report_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_csv_and_markdown_contents(report_dir):
    with open(report_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60
    assert {"config_id", "method", "llm_bits", "bpw", "mmq_shapes_cap/cider", "mmq_shapes_vqa/accuracy"} <= set(rows[0])
    bpws = [float(r["bpw"]) for r in rows]
    assert bpws == sorted(bpws, reverse=True)
    md = (report_dir / "report.md").read_text()
    assert "## mmq_shapes_cap/cider" in md and "CV R²" in md
    assert "![Pareto front](pareto_mmq_shapes_cap_cider.png)" in md
    assert md.count("| c") >= 60


def test_unpredictable_scores_carry_a_caution(report_dir, tmp_path):
    cider_section = (report_dir / "report.md").read_text().split("## mmq_shapes_cap/cider")[1].split("\n## ")[0]
    assert "Caution" not in cider_section
    rng = np.random.default_rng(1)
    noise = [dict(r, results={"mmq_shapes_cap": {"cider": float(rng.normal())}}) for r in synthetic_records()[:12]]
    build_report(noise, tmp_path, seed=0)
    assert "**Caution:** the forest does not predict this score" in (tmp_path / "report.md").read_text()


def test_configurations_without_effect_are_named(report_dir, tmp_path):
    assert "Without effect" not in (report_dir / "report.md").read_text()
    records = synthetic_records()[:6]
    records[1]["effective"] = records[4]["effective"] = False
    build_report(records, tmp_path, seed=0)
    assert "score as full precision while their bits count): c001, c004." in (tmp_path / "report.md").read_text()


def test_pareto_mask():
    bpw = np.array([16, 8, 4, 4, 2])
    score = np.array([3.0, 3.0, 2.0, 2.5, 0.5])
    assert pareto_mask(bpw, score).tolist() == [False, True, False, True, True]


def test_cli_reads_a_folder_deterministically(report_dir, tmp_path, capsys):
    folder = tmp_path / "res"
    folder.mkdir()
    recs = synthetic_records()
    for part, chunk in enumerate((recs[:30], recs[30:])):
        (folder / f"results.shard{part}of2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))

    class Args:
        results, out, seed = str(folder), str(tmp_path / "out"), 0

    assert handle(Args) == 0
    for name in ("importance.csv", "results.csv", "report.md"):
        assert (tmp_path / "out" / name).read_text() == (report_dir / name).read_text()
    Args.results = str(tmp_path / "nope.jsonl")
    assert handle(Args) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_component_override_columns_inherit_the_global_setting():
    from mmq_eval.report.table import flatten

    recs = [{"config_id": "a", "features": {"method": "uniform", "layer_group": "all", "vit_layer_group": "first"},
             "bpw": 4.0, "results": {"t": {"m": 1.0}}},
            {"config_id": "b", "features": {"method": "uniform", "layer_group": "last"}, "bpw": 4.0,
             "results": {"t": {"m": 2.0}}}]
    assert flatten(recs)["vit_layer_group"].tolist() == ["first", "last"]

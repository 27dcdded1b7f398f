"""Report and compare with per-document scores: Δ and its interval against full precision in
report.md and deltas.csv, error bars on the Pareto plots, ``mmq-eval compare`` on sweep
configurations and on lmms-eval output with logged samples."""

import csv
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from mmq_eval.cli import main
from mmq_eval.report import importance, pareto
from mmq_eval.report.bootstrap import paired_bootstrap_means
from mmq_eval.report.cli import build_report
from mmq_eval.sweep.per_doc import PerDocStore, sidecar_path

N_VQA, N_CAP = 300, 120
FEATS = {"qformer_bits": 16, "projector_bits": 16, "layer_group": "all", "layer_type": "both"}


def synthetic_sweep():
    """Full precision, two planted real drops, two zero-mean perturbations, one identical config;
    per-document VQA accuracy and per-image CIDEr-like scores."""
    rng = np.random.default_rng(0)
    acc_fp = rng.binomial(1, 0.7, N_VQA).astype(float)
    cider_fp = rng.gamma(4.0, 1.0, N_CAP)
    correct, wrong = np.flatnonzero(acc_fp == 1), np.flatnonzero(acc_fp == 0)

    def drop(frac, cider_loss):
        acc = acc_fp.copy()
        acc[rng.choice(correct, int(frac * len(correct)), replace=False)] = 0
        return acc, np.maximum(0, cider_fp - cider_loss * rng.uniform(0.5, 1.5, N_CAP))

    def noise(k, sd):
        acc = acc_fp.copy()
        acc[rng.choice(correct, k, replace=False)] = 0
        acc[rng.choice(wrong, k, replace=False)] = 1
        e = rng.normal(0, sd, N_CAP)
        return acc, cider_fp + e - e.mean()

    configs = {
        "fp": ("none", 16, 16, (acc_fp, cider_fp)),
        "drop4": ("uniform", 4, 3, drop(0.10, 0.4)),
        "drop2": ("uniform", 2, 2, drop(0.30, 1.5)),
        "noise8": ("gptq", 8, 8, noise(6, 0.3)),
        "noise4": ("gptq", 4, 4, noise(4, 0.3)),
        "same8": ("rtn", 8, 16, (acc_fp.copy(), cider_fp.copy())),
    }
    records, per_doc = [], {}
    for cid, (method, vit, llm, (acc, cider)) in configs.items():
        feats = {"method": method, "vit_bits": vit, "llm_bits": llm, **FEATS}
        records.append({"config_id": cid, "features": feats, "bpw": (vit + 2 * llm) / 3 + 0.5,
                        "results": {"mmq_shapes_vqa": {"accuracy": float(acc.mean())},
                                    "mmq_shapes_cap": {"cider": float(cider.mean()), "meteor": 0.3 - 0.01 * (16 - llm)}}})
        per_doc[cid] = {
            "mmq_shapes_vqa": {"doc_ids": {"range": [0, N_VQA]}, "scores": {"accuracy": acc.tolist()}},
            "mmq_shapes_cap": {"doc_ids": {"range": [0, N_CAP]}, "scores": {"cider": cider.tolist()}},
        }
    return records, per_doc


def write_sweep(folder, records, per_doc):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    store = PerDocStore(sidecar_path(folder / "results.jsonl"))
    for cid, tasks in per_doc.items():
        store.add(cid, tasks)
    return folder


@pytest.fixture(scope="module", autouse=True)
def small_forest():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importance, "N_TREES", 20)
        yield


@pytest.fixture(scope="module")
def figures():
    """Every figure plot_pareto draws, kept open for inspection."""
    kept = {}
    real_savefig = plt.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        kept[str(path).rsplit("/", 1)[-1]] = fig
        return real_savefig(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", savefig)
        mp.setattr(pareto.plt, "close", lambda fig=None: None)
        yield kept


@pytest.fixture(scope="module")
def report(tmp_path_factory, figures):
    records, per_doc = synthetic_sweep()
    folder = write_sweep(tmp_path_factory.mktemp("sweep"), records, per_doc)
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(folder), "--out", str(out), "--resamples", "1000"]) == 0
    return out, records, per_doc


def _deltas(out):
    with open(out / "deltas.csv") as fh:
        return {(r["config_id"], r["score"]): r for r in csv.DictReader(fh)}


def test_deltas_match_the_bootstrap_and_mark_indistinguishable_configs(report):
    out, _, per_doc = report
    rows = _deltas(out)
    assert len(rows) == 6 * 3
    for cid in ("drop4", "drop2", "noise8", "noise4", "same8"):
        expected = paired_bootstrap_means(per_doc["fp"]["mmq_shapes_vqa"]["scores"]["accuracy"],
                                          per_doc[cid]["mmq_shapes_vqa"]["scores"]["accuracy"], 1000, seed=0)
        row = rows[cid, "mmq_shapes_vqa/accuracy"]
        assert float(row["delta"]) == pytest.approx(expected.delta, abs=1e-6)
        assert (float(row["ci_lo"]), float(row["ci_hi"])) == pytest.approx((expected.lo, expected.hi), abs=1e-6)
    for score in ("mmq_shapes_vqa/accuracy", "mmq_shapes_cap/cider"):
        assert rows["drop4", score]["vs_fp"] == rows["drop2", score]["vs_fp"] == "lower"
        assert rows["noise8", score]["vs_fp"] == rows["noise4", score]["vs_fp"] == rows["same8", score]["vs_fp"] == "≈ FP"
        assert rows["fp", score]["vs_fp"] == "reference"
    meteor = rows["drop2", "mmq_shapes_cap/meteor"]  # no per-document scores: Δ without an interval
    assert float(meteor["delta"]) == pytest.approx(-0.14) and meteor["ci_lo"] == "" and meteor["vs_fp"] == ""


def test_report_md_has_delta_and_ci_columns(report):
    out, _, _ = report
    md = (out / "report.md").read_text()
    assert "paired bootstrap over the documents (1000 resamples, seed 0" in md
    section = md.split("## mmq_shapes_vqa/accuracy")[1].split("\n## ")[0].split("Difference to full precision (fp):")[1]
    assert "| config_id | configuration | bpw | score | Δ | 95% CI | p | vs FP |" in section
    drop_row = next(line for line in section.splitlines() if line.startswith("| drop2 |"))
    cells = [c.strip() for c in drop_row.strip("|").split("|")]
    assert cells[1] == "uniform vit=2 llm=2" and cells[4].startswith("-") and cells[5].startswith("[-")
    assert cells[7] == "lower"
    assert next(line for line in section.splitlines() if line.startswith("| noise4 |")).rstrip().endswith("| ≈ FP |")
    results = md.split("## Results")[1].split("\n## ")[0]
    assert "≈ FP |" in results.splitlines()[2]
    assert next(line for line in results.splitlines() if line.startswith("| same8 |")).rstrip().endswith("| 2/2 |")
    assert next(line for line in results.splitlines() if line.startswith("| drop2 |")).rstrip().endswith("| 0/2 |")
    assert next(line for line in results.splitlines() if line.startswith("| fp |")).rstrip().endswith("| FP |")


def test_pareto_pngs_show_the_intervals_as_error_bars(report, figures):
    out, records, _ = report
    rows = _deltas(out)
    fig = figures["pareto_mmq_shapes_vqa_accuracy.png"]
    ax = fig.axes[0]
    fp_acc = records[0]["results"]["mmq_shapes_vqa"]["accuracy"]
    bars = {}
    for coll in ax.collections:
        for seg in getattr(coll, "get_segments", list)():
            if len(seg) == 2 and seg[0][0] == seg[1][0]:
                bars[round(float(seg[0][0]), 6)] = (float(seg[0][1]), float(seg[1][1]))
    by_bpw = {round(r["bpw"], 6): r["config_id"] for r in records}
    assert len(by_bpw) == len(records) and set(bars) == set(by_bpw)  # one bar per configuration (FP: zero length)
    for x, (lo, hi) in bars.items():
        row = rows[by_bpw[x], "mmq_shapes_vqa/accuracy"]
        assert (lo, hi) == pytest.approx((fp_acc + float(row["ci_lo"]), fp_acc + float(row["ci_hi"])), abs=1e-6)
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == pytest.approx(fp_acc) for line in ax.lines)
    png = out / "pareto_mmq_shapes_vqa_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_intervals_without_per_document_scores(tmp_path):
    records, _ = synthetic_sweep()
    build_report(records, tmp_path, seed=0)
    md = (tmp_path / "report.md").read_text()
    assert "No intervals: these results have no per-document scores" in md
    rows = _deltas(tmp_path)
    assert rows["drop2", "mmq_shapes_vqa/accuracy"]["ci_lo"] == "" and float(rows["drop2", "mmq_shapes_vqa/accuracy"]["delta"]) < 0


def test_compare_two_sweep_configurations(report, tmp_path, capsys):
    records, per_doc = synthetic_sweep()
    folder = write_sweep(tmp_path / "sweep", records, per_doc)
    assert main(["compare", str(folder), str(folder), "--config-a", "fp", "--config-b", "drop2"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("mmq_shapes_vqa/accuracy"))
    expected = paired_bootstrap_means(per_doc["fp"]["mmq_shapes_vqa"]["scores"]["accuracy"],
                                      per_doc["drop2"]["mmq_shapes_vqa"]["scores"]["accuracy"], 1000, seed=0)
    assert f"[{expected.lo:+.4f}, {expected.hi:+.4f}]" in line and line.rstrip().endswith("B lower")
    assert next(l for l in out.splitlines() if l.startswith("mmq_shapes_cap/meteor")).rstrip().endswith("no per-document scores for this metric")
    assert main(["compare", str(folder), str(folder), "--config-a", "fp", "--config-b", "noise4"]) == 0
    assert next(l for l in capsys.readouterr().out.splitlines() if l.startswith("mmq_shapes_vqa/accuracy")).rstrip().endswith("same")
    assert main(["compare", str(folder), str(folder)]) == 2
    assert "choose one with its config id" in capsys.readouterr().err


def test_compare_reads_lmms_eval_logged_samples(tmp_path, capsys):
    records, per_doc = synthetic_sweep()
    folder = write_sweep(tmp_path / "sweep", records, per_doc)
    run = tmp_path / "lmms" / "mmq__shapes-blip2"
    run.mkdir(parents=True)
    acc = per_doc["drop4"]["mmq_shapes_vqa"]["scores"]["accuracy"]
    (run / "2026-11-30T10-00-00_results.json").write_text(json.dumps({
        "results": {"mmq_shapes_vqa": {"alias": "mmq_shapes_vqa", "accuracy,none": float(np.mean(acc)),
                                       "accuracy_stderr,none": 0.02}},
        "mmq_quant": {"bpw": 5.47}}))
    (run / "2026-11-30T10-00-00_samples_mmq_shapes_vqa.jsonl").write_text("".join(
        json.dumps({"doc_id": i, "target": "x", "filtered_resps": "red", "accuracy": a}) + "\n"
        for i, a in reversed(list(enumerate(acc)))))
    assert main(["compare", str(folder), str(tmp_path / "lmms"), "--config-a", "fp"]) == 0
    out = capsys.readouterr().out
    assert "B: " in out and "5.470 bits per weight" in out
    expected = paired_bootstrap_means(per_doc["fp"]["mmq_shapes_vqa"]["scores"]["accuracy"], acc, 1000, seed=0)
    line = next(l for l in out.splitlines() if l.startswith("mmq_shapes_vqa/accuracy"))
    assert f"{expected.delta:+.4f}" in line and f"[{expected.lo:+.4f}, {expected.hi:+.4f}]" in line
    assert "mmq_shapes_cap" not in out  # only the metrics both have

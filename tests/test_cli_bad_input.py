"""Bad invocations of run / sweep / export / report / compare / regress / prepare-data: each stops
with exit 2 and a message naming the value at fault, before anything is loaded, quantized or
evaluated. The other bad-input tables: tests/test_data_validation.py (data), test_finite_checks.py
(weights and activations), test_regress_validation.py (baselines and results),
test_cache_integrity.py (cache entries)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmq_eval.cli import main

SHAPES = "pretrained=mmq:shapes-blip2"
RUN = ["run", "--model", "mmq_blip2", "--model_args", SHAPES, "--tasks", "mmq_shapes_vqa", "--limit", "4"]
GOOD_SPEC = {"model": {"pretrained": "mmq:shapes-blip2"}, "tasks": ["mmq_shapes_vqa"],
             "grid": {"method": ["rtn"], "llm_bits": [4]}}



def calib_run(calib_data: str) -> list[str]:
    """``run`` of a GPTQ configuration (which needs calibration data) calibrating on `calib_data`."""
    return [*RUN[:3], "--model_args", f"{SHAPES},method=gptq,llm_bits=4,calib_data={calib_data}", *RUN[5:]]


# (argv, exit code, fragment of stderr); {tmp}: a scratch folder, {file}: a regular file in it,
# {spec}: a valid sweep spec, {full}: a folder holding a file, {empty}: an empty folder,
# {results}: a sweep results file with one finished configuration.
CASES = {
    "run: no --tasks": (["run", "--model", "mmq_blip2", "--model_args", SHAPES], 2, "no --tasks given"),
    "run: mistyped model": (["run", "--model", "mmq_blip3", "--model_args", SHAPES, "--tasks", "mmq_shapes_vqa"], 2,
                            "--model: unknown model 'mmq_blip3'; closest: mmq_blip2"),
    "run: model left at lmms-eval's default": (["run", "--tasks", "mmq_shapes_vqa"], 2, "unknown model 'hf'"),
    "run: output under a file": ([*RUN, "--output_path", "{file}/out"], 2,
                                 "--output_path {file}/out: {file} is a file, so the folder cannot be created"),
    "run: output is a file": ([*RUN, "--output_path", "{file}"], 2, "--output_path {file}: is a file, not a folder"),
    "run: output not writable": ([*RUN, "--output_path", "/sys/mmq-out"], 2, "--output_path /sys/mmq-out: cannot write there"),
    "run: unknown model arg": (["run", "--model", "mmq_blip2", "--model_args", SHAPES + ",bogus=1",
                                "--tasks", "mmq_shapes_vqa"], 2, "unknown model arg 'bogus'"),
    "run: offload_folder under a file": (["run", "--model", "mmq_blip2", "--model_args",
                                          f"{SHAPES},method=gptq,llm_bits=4,offload_folder={{file}}/off",
                                          "--tasks", "mmq_shapes_vqa"], 2,
                                         "offload_folder {file}/off: {file} is a file, so the folder cannot be created"),
    "run: report_path not writable": (["run", "--model", "mmq_blip2", "--model_args",
                                       SHAPES + ",method=rtn,llm_bits=4,report_path=/sys/mmq-out/r.json",
                                       "--tasks", "mmq_shapes_vqa"], 2, "report_path /sys/mmq-out/r.json: cannot write there"),
    "run: bits out of range": (["run", "--model", "mmq_blip2", "--model_args", SHAPES + ",llm_bits=1",
                                "--tasks", "mmq_shapes_vqa"], 2, "llm_bits=1 is not valid"),
    "sweep: no spec": (["sweep"], 2, "give a sweep spec YAML or --from-seed DIR"),
    "sweep: missing spec": (["sweep", "{tmp}/missing.yaml"], 2, "sweep spec not found: {tmp}/missing.yaml"),
    "sweep: spec not YAML": (["sweep", "{tmp}/broken.yaml"], 2, "sweep spec {tmp}/broken.yaml: not valid YAML"),
    "sweep: mistyped model": (["sweep", "{tmp}/bad_model.yaml", "--out", "{tmp}/o"], 2,
                              "model.name: unknown model 'mmq_blip3'; closest: mmq_blip2"),
    "sweep: unknown grid arg": (["sweep", "{tmp}/bad_grid.yaml", "--out", "{tmp}/o"], 2, "grid.lm_bits: unknown quantization arg"),
    "sweep: out under a file": (["sweep", "{spec}", "--out", "{file}/out"], 2, "--out {file}/out: {file} is a file"),
    "sweep: out is a file": (["sweep", "{spec}", "--out", "{file}"], 2, "--out {file}: is a file, not a folder"),
    "sweep: out not writable": (["sweep", "{spec}", "--out", "/sys/mmq-out"], 2, "--out /sys/mmq-out: cannot write there"),
    "sweep: bad shard": (["sweep", "{spec}", "--out", "{tmp}/o", "--shard", "2/2"], 2, "--shard '2/2'"),
    "sweep: limit 0": (["sweep", "{spec}", "--out", "{tmp}/o", "--limit", "0"], 2, "--limit 0: must be a positive"),
    "sweep: write-spec under a file": (["sweep", "{spec}", "--write-spec", "{file}/s.yaml"], 2, "--write-spec {file}"),
    "export: out under a file": (["export", "--model_args", SHAPES + ",method=rtn,bits=4", "--out", "{file}/x"], 2,
                                 "--out {file}/x: {file} is a file"),
    "export: out not empty": (["export", "--model_args", SHAPES + ",method=rtn,bits=4", "--out", "{full}"], 2,
                              "--out {full} exists and is not an empty folder"),
    "export: json under a file": (["export", "--model_args", SHAPES + ",method=rtn,bits=4", "--out", "{tmp}/x",
                                   "--json", "{file}/f.json"], 2, "--json {file}"),
    "export: uniform": (["export", "--model_args", SHAPES + ",method=uniform,bits=4", "--out", "{tmp}/x"], 2,
                        "method=uniform cannot be exported"),
    "report: missing results": (["report", "{tmp}/nope"], 2, "results not found: {tmp}/nope"),
    "report: no finished configuration": (["report", "{empty}", "--out", "{tmp}/r"], 2, "no finished configurations in {empty}"),
    "report: out under a file": (["report", "{empty}", "--out", "{file}/r"], 2, "--out {file}/r: {file} is a file"),
    "report: negative resamples": (["report", "{empty}", "--out", "{tmp}/r", "--resamples", "-1"], 2, "--resamples must be >= 0"),
    "compare: missing A": (["compare", "{tmp}/nope", "{empty}"], 2, "{tmp}/nope"),
    "compare: zero resamples": (["compare", "{empty}", "{empty}", "--resamples", "0"], 2, "--resamples must be >= 1"),
    # calib_data that cannot give calibration examples: refused before the model loads
    "run: calib_data missing": (calib_run("{tmp}/nope"), 2, "calib_data='{tmp}/nope': no such file or folder; pass a folder"),
    "run: calib_data empty folder": (calib_run("{empty}"), 2, "calib_data='{empty}' is a folder without images"),
    "run: calib_data not a table": (calib_run("{file}"), 2, "calib_data='{file}': expected a folder, a .parquet or a .jsonl"),
    "run: calib_data parquet without image": (calib_run("{tmp}/text_only.parquet"), 2,
                                              "calib_data='{tmp}/text_only.parquet' has no 'image' column (columns: ['text'])"),
    "run: calib_data jsonl without image": (calib_run("{tmp}/text_only.jsonl"), 2,
                                            "calib_data='{tmp}/text_only.jsonl' has no 'image' column"),
    "run: calib_data empty jsonl": (calib_run("{tmp}/blank.jsonl"), 2, "calib_data='{tmp}/blank.jsonl' holds no rows"),
    "run: calib_data parquet without rows": (calib_run("{tmp}/no_rows.parquet"), 2,
                                             "calib_data='{tmp}/no_rows.parquet' holds no rows"),
    "run: calib_data corrupt parquet": (calib_run("{tmp}/corrupt.parquet"), 2,
                                        "calib_data='{tmp}/corrupt.parquet' is not a readable parquet file"),
    "sweep: calib_data missing": (["sweep", "{tmp}/bad_calib.yaml", "--out", "{tmp}/o"], 2,
                                  "layer_type=both): calib_data='{tmp}/nope': no such file or folder"),
    # lmms-eval's own checks (a traceback and exit 1 there), and values it would take silently
    "run: negative --limit": ([*RUN[:-2], "--limit", "-5"], 2, "--limit -5: give a number of documents >= 1"),
    "run: --limit 0": ([*RUN[:-2], "--limit", "0"], 2, "--limit 0: give a number of documents >= 1"),
    "run: --limit nan": ([*RUN[:-2], "--limit", "nan"], 2, "--limit nan: give a number of documents >= 1"),
    "run: --limit inf": ([*RUN[:-2], "--limit", "inf"], 2, "--limit inf: give a number of documents >= 1"),
    "run: fractional --limit above 1": ([*RUN[:-2], "--limit", "2.5"], 2, "--limit 2.5: above 1 it counts documents"),
    "run: negative --offset": ([*RUN, "--offset", "-1"], 2, "--offset -1: the first document evaluated; give 0 or more"),
    "run: negative --num_fewshot": ([*RUN, "--num_fewshot", "-1"], 2, "--num_fewshot -1: give 0 or more"),
    "run: --log_samples without --output_path": ([*RUN, "--log_samples"], 2, "--log_samples writes every sample's "
                                                 "output to a file: add --output_path DIR"),
    "run: --predict_only without --output_path": ([*RUN, "--predict_only"], 2, "--predict_only writes the predictions "
                                                  "to files: add --output_path DIR"),
    "run: multiturn few-shot without chat template": ([*RUN, "--fewshot_as_multiturn", "--num_fewshot", "2"], 2,
                                                      "--fewshot_as_multiturn needs --apply_chat_template too"),
    "run: multiturn few-shot without examples": ([*RUN, "--fewshot_as_multiturn", "--apply_chat_template"], 2,
                                                 "--fewshot_as_multiturn needs --num_fewshot N with N >= 1"),
    "run: non-numeric --batch_size": ([*RUN, "--batch_size", "abc"], 2, "batch_size='abc' must be a positive integer"),
    "run: --config missing": (["run", "--config", "{tmp}/nope.yaml"], 2,
                              "--config: Config file does not exist: {tmp}/nope.yaml; fix the file"),
    # regress --update writes --baseline (and BASELINE.per_doc.jsonl): checked before the results are read
    "regress: baseline under a file": (["regress", "--update", "--baseline", "{file}/b.json", "--results", "{results}"],
                                       2, "--baseline {file}/b.json: {file} is a file, so the folder cannot be created"),
    "regress: baseline is a folder": (["regress", "--update", "--baseline", "{empty}", "--results", "{results}"], 2,
                                      "--baseline {empty}: is a folder; give a file path"),
    "regress: baseline not writable": (["regress", "--update", "--baseline", "/sys/mmq-out/b.json", "--results",
                                        "{results}"], 2, "--baseline /sys/mmq-out/b.json: cannot write there"),
    "regress: per-document file is a folder": (["regress", "--update", "--baseline", "{tmp}/base.json", "--results",
                                                "{results}"], 2, "--baseline's per-document scores "
                                               "{tmp}/base.per_doc.jsonl: is a folder"),
    "regress: baseline read, not written, without --update": (["regress", "--baseline", "{file}/b.json", "--results",
                                                               "{results}"], 2, "baseline not found: {file}/b.json"),
    "regress: not a baseline": (["regress", "--baseline", "{tmp}/inputs/not_a_baseline.json", "--results", "{results}"],
                                2, "baseline {tmp}/inputs/not_a_baseline.json: not an mmq-eval-baseline/1 document"),
    "regress: NaN tolerance": (["regress", "--baseline", "{tmp}/inputs/not_a_baseline.json", "--results", "{results}",
                                "--abs-tol", "nan"], 2, "--abs-tol nan: must be a finite number >= 0"),
    # data: prepare-data's raw files, and a run whose task data were never prepared (the data root is {tmp})
    "prepare-data: --from missing": (["prepare-data", "vqav2", "--from", "{tmp}/nope", "--data-dir", "{tmp}/d"], 2,
                                     "--from {tmp}/nope: no such folder"),
    "prepare-data: COCO without dataset_coco.json": (["prepare-data", "coco_karpathy", "--from", "{empty}",
                                                      "--data-dir", "{tmp}/d"], 2, "expected {empty}/dataset_coco.json"),
    "prepare-data: calibration images without captions": (["prepare-data", "calib", "--from", "{empty}", "--data-dir",
                                                           "{tmp}/d"], 2, "holds no image with a non-empty caption"),
    "run: task data not prepared": (["run", "--model", "mmq_blip2", "--model_args", SHAPES, "--tasks",
                                     "mmq_vqav2_val_lite", "--limit", "2"], 2,
                                    "{tmp}/vqav2/val.parquet is missing: prepare it once with"),
}


@pytest.fixture
def places(tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path))
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "not_a_baseline.json").write_text('{"configs": {}}\n')
    (tmp_path / "file").write_text("not a folder\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "kept.txt").write_text("finished work\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(GOOD_SPEC))
    (tmp_path / "broken.yaml").write_text("model: {pretrained: [\n")
    (tmp_path / "bad_model.yaml").write_text(yaml.safe_dump({**GOOD_SPEC, "model": {"pretrained": "x", "name": "mmq_blip3"}}))
    (tmp_path / "bad_grid.yaml").write_text(yaml.safe_dump({**GOOD_SPEC, "grid": {"lm_bits": [4]}}))
    (tmp_path / "bad_calib.yaml").write_text(yaml.safe_dump({
        **GOOD_SPEC, "model": {"pretrained": "mmq:shapes-blip2", "calib_data": str(tmp_path / "nope")},
        "grid": {"method": ["rtn", "gptq"], "llm_bits": [4]}}))
    pd.DataFrame({"text": ["a red square"]}).to_parquet(tmp_path / "text_only.parquet")
    pd.DataFrame({"image": [b""], "text": ["x"]}).iloc[:0].to_parquet(tmp_path / "no_rows.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not a parquet file")
    (tmp_path / "text_only.jsonl").write_text(json.dumps({"text": "a red square", "file": "a.jpg"}) + "\n")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "base.per_doc.jsonl").mkdir()
    (tmp_path / "results.jsonl").write_text(json.dumps({"config_id": "a", "features": {"method": "rtn"}, "bpw": 4.0,
                                                        "results": {"t": {"m": 1.0}}}) + "\n")
    return {"tmp": str(tmp_path), "file": str(tmp_path / "file"), "spec": str(tmp_path / "spec.yaml"),
            "full": str(tmp_path / "full"), "empty": str(tmp_path / "empty"), "results": str(tmp_path / "results.jsonl")}


def test_the_table_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES)
def test_bad_invocation_exits_2_naming_the_value(case, places, capsys):
    argv, code, fragment = CASES[case]
    if any("/sys/mmq-out" in a for a in argv) and not Path("/sys/kernel").is_dir():
        pytest.skip("needs sysfs, a folder nobody may create files in")
    assert main([a.format(**places) for a in argv]) == code
    captured = capsys.readouterr()
    assert fragment.format(**places) in captured.err
    assert "Traceback" not in captured.out + captured.err
    assert "quantized to" not in captured.out  # refused before any model was quantized
    assert Path(places["full"], "kept.txt").read_text() == "finished work\n"  # nothing finished is touched
    assert not list(Path(places["tmp"]).glob("o/results*.jsonl"))  # a refused sweep evaluated no configuration
    assert not list(Path(places["tmp"]).glob("*.json"))  # a refused regress --update wrote no baseline


def test_mistyped_task_names_the_closest_ones(places, capsys):
    assert main([*RUN[:-4], "--tasks", "mmq_shapes_vqa,mmq_shapes_cpa", "--output_path", places["tmp"]]) == 2
    err = capsys.readouterr().err
    assert "--tasks: unknown task 'mmq_shapes_cpa'; closest: mmq_shapes_cap" in err
    assert "mmq-eval run --tasks list" in err

    spec_path = Path(places["tmp"], "typo.yaml")
    spec_path.write_text(yaml.safe_dump({**GOOD_SPEC, "tasks": ["mmq_shapes_vqa", "mmq_shapes_cpa"]}))
    assert main(["sweep", str(spec_path), "--out", places["tmp"] + "/o"]) == 2
    assert "sweep spec tasks[1]: unknown task 'mmq_shapes_cpa'; closest: mmq_shapes_cap" in capsys.readouterr().err


def test_gptq_sweep_without_calibration_data_stops_before_the_first_configuration(tiny_blip2_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path / "no-data"))  # no prepared calibration set
    monkeypatch.delenv("MMQ_SWEEP_EVALUATOR", raising=False)
    spec = {"model": {"pretrained": str(tiny_blip2_dir)}, "tasks": ["mmq_shapes_vqa"],
            "grid": {"method": ["rtn", "gptq"], "llm_bits": [4]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "spec.yaml"), "--out", str(out), "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "method=gptq needs calibration data" in err and "calib_data=" in err
    assert not (out / "results.jsonl").exists()  # the rtn configuration was not evaluated either


def test_report_refuses_an_unwritable_out_before_reading_anything(places, capsys):
    results = places["tmp"] + "/results.jsonl"
    Path(results).write_text(json.dumps({"config_id": "a", "features": {"method": "rtn"}, "bpw": 4.0,
                                         "results": {"t": {"m": 1.0}}}) + "\n")
    assert main(["report", results, "--out", places["file"]]) == 2
    assert f"--out {places['file']}: is a file, not a folder" in capsys.readouterr().err
    assert Path(places["file"]).read_text() == "not a folder\n"


@pytest.mark.parametrize("extra", [[], ["--limit", "-1"], ["--limit", "0.5"], ["--limit", "3"], ["--offset", "2"],
                                   ["--num_fewshot", "0"], ["--log_samples", "--output_path", "out"],
                                   ["--fewshot_as_multiturn", "--apply_chat_template", "--num_fewshot", "2"]])
def test_valid_lmms_eval_settings_pass_the_run_rules(extra, monkeypatch):
    from lmms_eval.__main__ import parse_eval_args

    from mmq_eval.cli import RUN_ARG_RULES

    monkeypatch.setattr("sys.argv", ["lmms-eval", *RUN[1:-2], *extra])
    _, args = parse_eval_args()
    assert [message for refused, message in RUN_ARG_RULES if refused(args)] == []

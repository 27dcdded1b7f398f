"""The ``mmq-eval`` command: run lmms-eval with our tasks, and the project's tools."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from mmq_eval.tasks import tasks_path

#: Subcommands contributed by other modules: name -> module exposing ``register(subparsers)``.
SUBCOMMAND_MODULES = {
    "sweep": "mmq_eval.sweep.cli",
    "report": "mmq_eval.report.cli",
    "regress": "mmq_eval.regress",
    "compare": "mmq_eval.report.compare",
    "prepare-data": "mmq_eval.data.prepare",
    "export": "mmq_eval.export.cli",
}


def _merge_include_path(user_path) -> list[str]:
    paths = [tasks_path()]
    if user_path:
        paths.extend(user_path if isinstance(user_path, list) else [user_path])
    return paths


def _attach_quant_reports(output_path: str | None, started: float, reports: list[dict]) -> None:
    """Add the quantization reports to the results JSON files lmms-eval just wrote."""
    if not output_path or not reports:
        return
    root = Path(output_path)
    root = root if root.is_dir() else root.parent
    for results_file in root.rglob("*_results.json"):
        if results_file.stat().st_mtime < started:
            continue
        data = json.loads(results_file.read_text())
        data["mmq_quant"] = reports[-1] if len(reports) == 1 else reports
        results_file.write_text(json.dumps(data, indent=2, default=str))


class _Refused(BaseException):
    """Carries a bad-input error past lmms-eval's handler, which prints every Exception's traceback."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def run_lmms_eval(argv: list[str]) -> int:
    """Run lmms-eval in-process with our tasks included; 1 if any evaluation failed.

    lmms-eval 0.7.3 prints a failed evaluation's traceback and still exits 0; this does not. Bad
    input (MMQConfigError, MMQDataError: an unknown model arg, bits out of range, missing data)
    stops the run with just its message (``main`` exits 2).
    """
    import lmms_eval.__main__ as lmms_main

    from mmq_eval.errors import MMQConfigError, MMQDataError
    from mmq_eval.models import quantizing

    outcomes: list[bool] = []
    original = lmms_main.cli_evaluate_single
    started = time.time()

    def evaluate_single(args):
        args.include_path = _merge_include_path(args.include_path)
        reports_before = len(quantizing.QUANT_REPORTS)
        try:
            results = original(args)
        except (MMQConfigError, MMQDataError) as err:
            outcomes.append(False)
            raise _Refused(err) from err
        except BaseException:
            outcomes.append(False)
            raise
        outcomes.append(results is not None)
        _attach_quant_reports(args.output_path, started, quantizing.QUANT_REPORTS[reports_before:])
        for report in quantizing.QUANT_REPORTS[reports_before:]:
            print(f"mmq-eval: {report['pretrained']} quantized to {report['bpw']:.3f} bits per weight")
        return results

    saved_argv = sys.argv
    lmms_main.cli_evaluate_single = evaluate_single
    sys.argv = ["lmms-eval", *argv]
    try:
        lmms_main.cli_evaluate()
    except _Refused as refused:
        raise refused.error from None
    finally:
        lmms_main.cli_evaluate_single = original
        sys.argv = saved_argv
    if not outcomes or not all(outcomes):
        print("mmq-eval: evaluation failed (see the error above)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mmq-eval`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mmq-eval", description="Measure what weight quantization does to vision-language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run lmms-eval with the mmq task configs on the include path",
        description="Everything after 'run' is passed to lmms-eval, e.g. mmq-eval run --model "
        "mmq_blip2 --model_args pretrained=mmq:shapes-blip2,llm_bits=4,method=uniform "
        "--tasks mmq_shapes_cap",
    )
    run.set_defaults(func=lambda args: run_lmms_eval([]))
    path = sub.add_parser("tasks-path", help="print the task-config folder for --include_path")
    path.set_defaults(func=lambda args: print(tasks_path()) or 0)
    for module_name in SUBCOMMAND_MODULES.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmq-eval`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv[1:2]):
        # everything after 'run' belongs to lmms-eval (argparse would claim its --options)
        args = argparse.Namespace(func=lambda _: run_lmms_eval(argv[1:]))
    else:
        args = parser.parse_args(argv)
    from mmq_eval.errors import MMQConfigError, MMQDataError

    try:
        return int(args.func(args) or 0)
    except (MMQConfigError, MMQDataError) as exc:
        print(f"mmq-eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

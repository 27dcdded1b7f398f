"""The ``mmq-eval`` command: run lmms-eval with our tasks, and the project's tools."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path

from mmq_eval.errors import MMQConfigError, MMQDataError
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


#: ``--tasks`` values that make lmms-eval list names instead of evaluating.
TASK_LISTINGS = {"list", "list_groups", "list_tags", "list_subtasks"}


def _attach_quant_reports(results_file: Path, reports: list[dict]) -> None:
    """Add the quantization reports to the results JSON this run wrote (replaced whole, atomically)."""
    data = json.loads(results_file.read_text())
    data["mmq_quant"] = reports[-1] if len(reports) == 1 else reports
    tmp = results_file.with_name(f".{results_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, results_file)


#: lmms-eval 0.7.3 settings that its ``cli_evaluate_single`` refuses only with a traceback and
#: exit 1, or takes although they evaluate nothing or silently something else: (refused when, the
#: message naming the option and the fix, formatted with the parsed arguments).
RUN_ARG_RULES = (
    (lambda a: a.limit is not None and a.limit != -1 and not (a.limit > 0 and math.isfinite(a.limit)),
     "--limit {limit:g}: give a number of documents >= 1, a fraction in (0, 1), or -1 for all"),
    (lambda a: a.limit is not None and a.limit > 1 and a.limit != int(a.limit),
     "--limit {limit:g}: above 1 it counts documents; give a whole number, or a fraction in (0, 1)"),
    (lambda a: a.offset < 0, "--offset {offset}: the first document evaluated; give 0 or more"),
    (lambda a: a.num_fewshot is not None and a.num_fewshot < 0,
     "--num_fewshot {num_fewshot}: give 0 or more examples in the context"),
    (lambda a: a.log_samples and not a.output_path,
     "--log_samples writes every sample's output to a file: add --output_path DIR"),
    (lambda a: a.predict_only and not a.output_path,
     "--predict_only writes the predictions to files: add --output_path DIR"),
    (lambda a: a.fewshot_as_multiturn and not a.apply_chat_template,
     "--fewshot_as_multiturn needs --apply_chat_template too"),
    (lambda a: a.fewshot_as_multiturn and not a.num_fewshot,
     "--fewshot_as_multiturn needs --num_fewshot N with N >= 1 (there are no examples to turn into turns)"),
)
#: Beginnings of the ValueErrors lmms-eval raises while reading --config, before any evaluation.
CONFIG_ERRORS = ("Config file does not exist", "'env' in config", "Unknown keys in config file")


def _check_run_args(args) -> None:
    """Refuse, before anything loads, a run without tasks, with a setting of ``RUN_ARG_RULES``,
    an unknown --model or an --output_path that cannot be written (MMQConfigError naming the
    value)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    from mmq_eval.outputs import check_output_dir
    from mmq_eval.quant.registry import lmms_models
    from mmq_eval.sweep.spec import LIST_TASKS, unknown_name

    for refused, message in RUN_ARG_RULES:
        if refused(args):
            raise MMQConfigError(message.format(**vars(args)))
    if not args.tasks:
        raise MMQConfigError(f"no --tasks given: name the tasks to evaluate, e.g. --tasks mmq_shapes_cap; {LIST_TASKS}")
    if args.tasks in TASK_LISTINGS:
        return
    models = MODEL_REGISTRY_V2.list_model_names()
    if args.model not in models:
        listing = f"mmq-eval's models: {', '.join(sorted(lmms_models()))}; the others: `lmms-eval models`"
        raise MMQConfigError(f"--model: {unknown_name('model', args.model, models, listing)}")
    if args.output_path:
        check_output_dir(args.output_path, "--output_path")


def _unknown_tasks_error(args, task_manager) -> MMQConfigError:
    """lmms-eval's "Tasks not found" as an MMQConfigError naming the task and the closest names."""
    from mmq_eval.sweep.spec import check_tasks

    names = [t for t in args.tasks.split(",") if "*" not in t and not os.path.isfile(t)]
    try:
        check_tasks(names, index=lambda folder: set(task_manager.all_tasks), where="--tasks")
    except MMQConfigError as err:
        return err
    return MMQConfigError(f"--tasks {args.tasks}: a task was not found")


def _recording_saves(save, written: list[Path]):
    """``EvaluationTracker.save_results_aggregated`` that appends the results file it wrote to
    ``written`` (lmms-eval only logs a warning when the write fails)."""

    def save_results_aggregated(tracker, *args, **kwargs):
        datetime_str = kwargs.get("datetime_str", args[2] if len(args) > 2 else "")
        target = None
        if tracker.output_path:
            target = (Path(tracker.output_path) / tracker.general_config_tracker.model_name_sanitized
                      / f"{datetime_str.replace(':', '-')}_results.json")
        before = target.stat().st_mtime_ns if target is not None and target.is_file() else None
        save(tracker, *args, **kwargs)
        if target is not None and target.is_file() and target.stat().st_mtime_ns != before:
            written.append(target)

    return save_results_aggregated


class _Refused(BaseException):
    """Carries a bad-input error past lmms-eval's handler, which prints every Exception's traceback."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def run_lmms_eval(argv: list[str]) -> int:
    """Run lmms-eval in-process with our tasks included; 1 if any evaluation failed or its
    results could not be saved.

    lmms-eval 0.7.3 prints a failed evaluation's traceback and still exits 0, and only warns when
    it cannot write the results; this does not. Bad input (MMQConfigError, MMQDataError: no or an
    unknown task or model, an unknown model arg, bits out of range, missing data, an unwritable
    --output_path) stops the run with just its message (``main`` exits 2). The quantization
    report goes into the results file this run wrote, and no other.
    """
    from mmq_eval.data.preflight import check_prepared_tasks

    check_prepared_tasks(argv)  # a missing/damaged prepared file: exit 2 before the model loads
    import lmms_eval.__main__ as lmms_main
    from lmms_eval.loggers import EvaluationTracker

    from mmq_eval.models import quantizing

    outcomes: list[bool] = []
    written: list[Path] = []
    managers: list = []
    original, task_manager_cls = lmms_main.cli_evaluate_single, lmms_main.TaskManager
    original_save = EvaluationTracker.save_results_aggregated

    def task_manager(*args, **kwargs):
        managers.append(task_manager_cls(*args, **kwargs))
        return managers[-1]

    def evaluate_single(args):
        args.include_path = _merge_include_path(args.include_path)
        reports_before, written_before = len(quantizing.QUANT_REPORTS), len(written)
        try:
            _check_run_args(args)
            results = original(args)
        except (MMQConfigError, MMQDataError) as err:
            outcomes.append(False)
            raise _Refused(err) from err
        except ValueError as err:
            outcomes.append(False)
            if str(err).startswith("Tasks not found") and managers:
                raise _Refused(_unknown_tasks_error(args, managers[-1])) from err
            raise
        except BaseException:
            outcomes.append(False)
            raise
        saved = written[written_before:]
        if args.output_path and results is not None and results[0] is not None and not saved:
            print(f"mmq-eval: the results could not be saved under --output_path {args.output_path} "
                  "(see lmms-eval's warning above)", file=sys.stderr)
            outcomes.append(False)
            return results
        outcomes.append(results is not None)
        reports = quantizing.QUANT_REPORTS[reports_before:]
        if saved and reports:
            _attach_quant_reports(saved[-1], reports)
        for report in reports:
            print(f"mmq-eval: {report['pretrained']} quantized to {report['bpw']:.3f} bits per weight")
        return results

    saved_argv = sys.argv
    lmms_main.cli_evaluate_single, lmms_main.TaskManager = evaluate_single, task_manager
    EvaluationTracker.save_results_aggregated = _recording_saves(original_save, written)
    sys.argv = ["lmms-eval", *argv]
    try:
        lmms_main.cli_evaluate()
    except _Refused as refused:
        raise refused.error from None
    except ValueError as err:  # evaluations' errors are caught inside cli_evaluate; these are --config's
        if str(err).startswith(CONFIG_ERRORS):
            raise MMQConfigError(f"--config: {err}; fix the file or give the path of an lmms-eval YAML config") from None
        raise
    finally:
        lmms_main.cli_evaluate_single, lmms_main.TaskManager = original, task_manager_cls
        EvaluationTracker.save_results_aggregated = original_save
        sys.argv = saved_argv
    if not outcomes or not all(outcomes):
        print("mmq-eval: evaluation failed (see the error above)", file=sys.stderr)
        return 1
    return 0


#: Output options of subcommands, checked writable before the subcommand starts (``sweep`` and
#: ``run`` check theirs themselves): command -> (attribute, option, "dir" | "file", the flag
#: attribute that makes it an output, or None when it always is one).
OUTPUT_OPTIONS = {
    "export": (("out", "--out", "dir", None), ("json", "--json", "file", None)),
    "report": (("out", "--out", "dir", None),),
    "regress": (("baseline", "--baseline", "file", "update"),),  # written (with its .per_doc.jsonl) by --update
}


def check_outputs(args: argparse.Namespace) -> None:
    """MMQConfigError naming the option and path when an output of ``args.command`` cannot be written."""
    from mmq_eval.outputs import check_output_dir, check_output_file

    for attribute, option, kind, flag in OUTPUT_OPTIONS.get(getattr(args, "command", None), ()):
        value = getattr(args, attribute, None)
        if value and (flag is None or getattr(args, flag, False)):
            (check_output_dir if kind == "dir" else check_output_file)(value, option)


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
    try:
        check_outputs(args)
        return int(args.func(args) or 0)
    except (MMQConfigError, MMQDataError) as exc:
        print(f"mmq-eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

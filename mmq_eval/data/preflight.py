"""Before an evaluation starts: the prepared files of the ``mmq_*`` data tasks it names are there
and readable, so a missing or damaged file stops ``mmq-eval run`` (exit code 2) before the model
is loaded and quantized, not after."""

from __future__ import annotations

from mmq_eval.data import coco2017, coco_karpathy, flickr30k, gqa, vqav2
from mmq_eval.data.layout import data_root, prepared_problem
from mmq_eval.data.questions import store_file
from mmq_eval.errors import MMQDataError

#: Task -> (data set module, the prepared files it reads).
TASK_FILES = {
    "mmq_coco_cap_karpathy": (coco_karpathy, (coco_karpathy.TEST_FILE,)),
    "mmq_coco_retrieval": (coco_karpathy, (coco_karpathy.TEST_FILE,)),
    "mmq_coco2017_cap_val": (coco2017, (coco2017.VAL_FILE,)),
    "mmq_flickr30k_retrieval": (flickr30k, (flickr30k.TEST_FILE,)),
    "mmq_vqav2_val": (vqav2, (vqav2.VAL_FILE, store_file(vqav2.VAL_FILE))),
    "mmq_vqav2_val_lite": (vqav2, (vqav2.VAL_FILE, store_file(vqav2.VAL_FILE))),
    "mmq_gqa_testdev": (gqa, (gqa.TESTDEV_FILE, store_file(gqa.TESTDEV_FILE))),
}


def named_tasks(argv: list[str]) -> list[str]:
    """The task names given to lmms-eval's ``--tasks`` in ``argv`` (comma-separated, any count)."""
    names = []
    for i, arg in enumerate(argv):
        if arg == "--tasks" and i + 1 < len(argv):
            names += argv[i + 1].split(",")
        elif arg.startswith("--tasks="):
            names += arg.removeprefix("--tasks=").split(",")
    return [name.strip() for name in names if name.strip()]


def check_task_data(tasks: list[str]) -> None:
    """Raise MMQDataError naming every missing or damaged prepared file of the ``mmq_*`` data
    tasks among ``tasks`` (metadata reads only; other tasks are left to lmms-eval)."""
    root = data_root()
    problems = {}
    for task in tasks:
        module, files = TASK_FILES.get(task, (None, ()))
        for relative in files:
            problem = prepared_problem(root / relative, module.NAME, module.RAW)
            if problem:
                problems.setdefault(problem, []).append(task)
    if problems:
        raise MMQDataError("\n".join(f"{', '.join(names)}: {problem}" for problem, names in problems.items()))


def check_prepared_tasks(argv: list[str]) -> None:
    """``check_task_data`` for the tasks of lmms-eval's command line ``argv``."""
    check_task_data(named_tasks(argv))

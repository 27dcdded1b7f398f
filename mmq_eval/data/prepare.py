"""``mmq-eval prepare-data <dataset> --from <raw dir>``: official downloads -> the data root."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from mmq_eval.data.layout import data_root
from mmq_eval.errors import MMQConfigError, MMQDataError

#: Data set name -> module with ``prepare(raw_dir, root, **options)``.
DATASETS = {
    "coco_karpathy": "mmq_eval.data.coco_karpathy",
    "coco2017": "mmq_eval.data.coco2017",
    "flickr30k": "mmq_eval.data.flickr30k",
    "vqav2": "mmq_eval.data.vqav2",
    "gqa": "mmq_eval.data.gqa",
    "calib": "mmq_eval.data.calibration_set",
}

#: Data sets that take --calib-size and --seed (a seeded calibration sample).
SAMPLED = ("coco_karpathy", "calib")


def prepare(dataset: str, raw_dir, data_dir=None, **options) -> list[Path]:
    """Convert ``dataset``'s official files in ``raw_dir``; return the files written."""
    if dataset not in DATASETS:
        raise MMQConfigError(f"unknown data set {dataset!r}; choose from {', '.join(DATASETS)}")
    raw = Path(raw_dir).expanduser()
    if not raw.is_dir():
        raise MMQDataError(f"--from {raw}: no such folder")
    module = importlib.import_module(DATASETS[dataset])
    return module.prepare(raw, data_root(data_dir), **options)


def _handler(args: argparse.Namespace) -> int:
    options = {}
    if args.calib_size is not None or args.seed is not None:
        if args.dataset not in SAMPLED:
            raise MMQConfigError(f"--calib-size and --seed apply to {' and '.join(SAMPLED)} only")
        options = {k: v for k, v in (("calib_size", args.calib_size), ("seed", args.seed)) if v is not None}
    if args.skip_bad:
        options["skip_bad"] = True
    for path in prepare(args.dataset, args.raw_dir, args.data_dir, **options):
        print(f"wrote {path}")
    if args.data_dir and data_root(args.data_dir).resolve() != data_root().resolve():
        print(f"the mmq_* tasks read $MMQ_DATA_DIR: export MMQ_DATA_DIR={data_root(args.data_dir)}")
    return 0


def register(subparsers) -> None:
    """Add the ``prepare-data`` subcommand."""
    parser = subparsers.add_parser(
        "prepare-data", help="convert an official data set download for the mmq_* tasks",
        description="Write the files (images embedded) that the mmq_* tasks read, under "
        "--data-dir, else $MMQ_DATA_DIR, else ~/.cache/mmq-eval/data. See docs/data.md.",
    )
    parser.add_argument("dataset", choices=list(DATASETS))
    parser.add_argument("--from", dest="raw_dir", required=True, help="folder with the official files")
    parser.add_argument("--data-dir", help="data root to write to (tasks read $MMQ_DATA_DIR)")
    parser.add_argument("--calib-size", type=int,
                        help="images in the calibration sample: coco_karpathy (default 2000; 0: none), "
                        "calib (default 512)")
    parser.add_argument("--seed", type=int, help="coco_karpathy, calib: seed of the calibration sample (default 0)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out entries with a missing, truncated or undecodable image, no answers or "
                        "captions, blank text or a repeated id, listed in <prepared file>_skipped.json "
                        "(default: stop, naming them; exit code 2)")
    parser.set_defaults(func=_handler)

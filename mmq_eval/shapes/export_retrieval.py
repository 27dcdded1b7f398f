"""Write the shapes retrieval test set: the first 100 test scenes with their 5 captions each.

    python -m mmq_eval.shapes.export_retrieval [--out-dir task_configs/mmq_shapes/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmq_eval.shapes.export import DATA_DIR, caption_dataset

N_RETRIEVAL_SCENES = 100
FILE_NAME = "shapes_retrieval_test.parquet"


def export(out_dir: Path = DATA_DIR) -> Path:
    """Write shapes_retrieval_test.parquet (image_id, image, captions) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAME
    caption_dataset(N_RETRIEVAL_SCENES).to_parquet(str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=DATA_DIR)
    print(export(ap.parse_args(argv).out_dir))


if __name__ == "__main__":
    main()

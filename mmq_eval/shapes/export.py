"""Write the held-out shapes test sets as parquet files with embedded PNG images.

    python -m mmq_eval.shapes.export [--out-dir task_configs/mmq_shapes/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets import Dataset, Features, Image, Sequence, Value

from mmq_eval.shapes.world import balanced_vqa, captions, make_scenes, render
from mmq_eval.tasks.vqa import normalise_answer

DATA_DIR = Path(__file__).resolve().parents[2] / "task_configs" / "mmq_shapes" / "data"
N_CAPTION_SCENES = 200
N_QUESTIONS = 500
VQA_ANSWER_COPIES = 10


def caption_dataset(n: int = N_CAPTION_SCENES) -> Dataset:
    """The first n test-split scenes with their 5 reference captions."""
    scenes = make_scenes("test", n)
    features = Features(
        {"image_id": Value("int64"), "image": Image(), "captions": Sequence(Value("string"))}
    )
    return Dataset.from_dict(
        {
            "image_id": [s.index for s in scenes],
            "image": [render(s) for s in scenes],
            "captions": [captions(s) for s in scenes],
        },
        features=features,
    )


def vqa_dataset(n: int = N_QUESTIONS) -> Dataset:
    """n test-split questions balanced over question types (VQAv2-style 10 answers each, written in
    the processed form VQAv2's annotations use, e.g. "2" for "two": the evaluation server compares
    processed predictions with them)."""
    pairs = balanced_vqa("test", n)
    features = Features(
        {
            "question_id": Value("int64"),
            "image_id": Value("int64"),
            "image": Image(),
            "question": Value("string"),
            "answer": Value("string"),
            "answers": Sequence(Value("string")),
            "question_type": Value("string"),
        }
    )
    return Dataset.from_dict(
        {
            "question_id": list(range(len(pairs))),
            "image_id": [s.index for s, _ in pairs],
            "image": [render(s) for s, _ in pairs],
            "question": [q.question for _, q in pairs],
            "answer": [q.answer for _, q in pairs],
            "answers": [[normalise_answer(q.answer)] * VQA_ANSWER_COPIES for _, q in pairs],
            "question_type": [q.question_type for _, q in pairs],
        },
        features=features,
    )


def export(out_dir: Path = DATA_DIR) -> list[Path]:
    """Write shapes_cap_test.parquet and shapes_vqa_test.parquet into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "shapes_cap_test.parquet", out_dir / "shapes_vqa_test.parquet"]
    caption_dataset().to_parquet(str(paths[0]))
    vqa_dataset().to_parquet(str(paths[1]))
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=DATA_DIR)
    for path in export(ap.parse_args(argv).out_dir):
        print(path)


if __name__ == "__main__":
    main()

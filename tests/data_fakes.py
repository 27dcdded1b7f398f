"""Tiny fake copies of the official raw downloads (real file names and json structure)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from lmms_requests import make_image


def _jpeg(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(i, size=40).save(path, format="JPEG")


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def karpathy_raw(raw: Path, n_test: int = 3, n_train: int = 4) -> Path:
    """dataset_coco.json with test/val/restval entries in val2014/ and train ones in train2014/."""
    images = []
    splits = ["test"] * n_test + ["val", "restval"] + ["train"] * n_train
    for i, split in enumerate(splits):
        folder = "train2014" if split == "train" else "val2014"
        cocoid = 100 + i
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        _jpeg(raw / folder / filename, i)
        sentences = [{"tokens": [], "raw": f"a red square number {i} ", "imgid": i, "sentid": 5 * i + k}
                     for k in range(5)]
        images.append({"filepath": folder, "filename": filename, "imgid": i, "split": split,
                       "sentences": sentences, "sentids": [s["sentid"] for s in sentences], "cocoid": cocoid})
    _json(raw / "dataset_coco.json", {"images": images, "dataset": "coco"})
    return raw


COLOUR_WORDS = ("red", "green", "blue", "yellow")
SHAPE_WORDS = ("circle", "square", "triangle")
SIZE_WORDS = ("big", "small")


def flickr30k_raw(raw: Path, n_test: int = 4) -> Path:
    """dataset_flickr30k.json (test, val and train entries) and flickr30k-images/.

    Captions use the tiny models' words, different per image, so a random model ranks them apart.
    """
    images = []
    for i, split in enumerate(["test"] * n_test + ["val", "train"]):
        colour, shape, size = COLOUR_WORDS[i % 4], SHAPE_WORDS[i % 3], SIZE_WORDS[i // 4 % 2]
        raws = [f"A {colour} {shape}.", f"one {size} {colour} {shape}", f"the {shape} is {colour}",
                f"there is a {size} {shape}", f"a photo of a {colour} {shape} , {size}"]
        filename = f"{1000092795 + i}.jpg"
        _jpeg(raw / "flickr30k-images" / filename, i)
        sentences = [{"tokens": [], "raw": text, "imgid": i, "sentid": 5 * i + k} for k, text in enumerate(raws)]
        images.append({"sentids": [s["sentid"] for s in sentences], "imgid": i, "sentences": sentences,
                       "split": split, "filename": filename})
    _json(raw / "dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    return raw


def coco2017_raw(raw: Path, n: int = 3) -> Path:
    """annotations/captions_val2017.json and val2017/."""
    images, annotations = [], []
    for i in range(n):
        image_id = 200 + i
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 40, "height": 40})
        _jpeg(raw / "val2017" / f"{image_id:012d}.jpg", i)
        annotations += [{"image_id": image_id, "id": 10 * i + k, "caption": f"a blue circle {k}"} for k in range(5)]
    _json(raw / "annotations" / "captions_val2017.json",
          {"info": {}, "licenses": [], "images": images, "annotations": annotations})
    return raw


def vqav2_raw(raw: Path, n_images: int = 3, per_image: int = 2) -> Path:
    """The val2014 questions and annotations files and val2014/."""
    questions, annotations = [], []
    for i in range(n_images):
        image_id = 300 + i
        _jpeg(raw / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", i)
        for k in range(per_image):
            question_id = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": f"what color is square {k}?",
                              "question_id": question_id})
            answers = ["red"] * 7 + ["blue"] * 3
            annotations.append({
                "question_type": "what color is", "multiple_choice_answer": "red",
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                            for j, a in enumerate(answers)],
                "image_id": image_id, "answer_type": "other", "question_id": question_id,
            })
    header = {"info": {}, "license": {}, "data_subtype": "val2014"}
    _json(raw / "v2_OpenEnded_mscoco_val2014_questions.json",
          {**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions})
    _json(raw / "v2_mscoco_val2014_annotations.json", {**header, "annotations": annotations})
    return raw


def gqa_raw(raw: Path, n_images: int = 2, per_image: int = 2) -> Path:
    """testdev_balanced_questions.json (question id -> question) and images/."""
    questions = {}
    for i in range(n_images):
        image_id = f"n{4000 + i}"
        _jpeg(raw / "images" / f"{image_id}.jpg", i)
        for k in range(per_image):
            questions[str(2000000 + 10 * i + k)] = {
                "semantic": [], "entailed": [], "equivalent": [], "question": f"is the square red {k}?",
                "imageId": image_id, "isBalanced": True, "groups": {"global": None, "local": "06-color"},
                "answer": "yes", "semanticStr": "", "annotations": {}, "types": {}, "fullAnswer": "Yes, it is.",
            }
    _json(raw / "testdev_balanced_questions.json", questions)
    return raw


def prepare_data(*argv: str) -> int:
    """``mmq-eval prepare-data ARGV`` through ``mmq_eval.cli.main`` (wired here if cli.py is not yet)."""
    import pytest

    from mmq_eval import cli

    with pytest.MonkeyPatch.context() as mp:
        if "mmq_eval.data.prepare" not in cli.SUBCOMMAND_MODULES.values():
            mp.setitem(cli.SUBCOMMAND_MODULES, "prepare-data", "mmq_eval.data.prepare")
        return cli.main(["prepare-data", *argv])


@contextmanager
def prepared_root(tmp_path_factory, *preparations):
    """A data root prepared from fake raw downloads by ``mmq-eval prepare-data``, with
    ``MMQ_DATA_DIR`` (and ``HF_HUB_OFFLINE``) set while open; yields (root, raw folder).

    Each preparation is ``(dataset, make_raw, *options)``: ``make_raw(raw / dataset)`` writes the
    raw files (e.g. ``karpathy_raw``) and returns their folder.
    """
    import pytest

    raw, root = tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMQ_DATA_DIR", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for dataset, make_raw, *options in preparations:
            assert prepare_data(dataset, "--from", str(make_raw(raw / dataset)), *options) == 0
        yield root, raw


def evaluate(model, tasks: list[str], model_args: str = "", **kwargs) -> dict:
    """simple_evaluate over our task configs: {task: {metric: value}}, {task: docs evaluated} and
    {task: {doc_id: response}}; None on the processes other than 0 of a multi-process run."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mmq_eval.tasks import tasks_path

    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    out = simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager,
                          bootstrap_iters=0, **kwargs)
    if out is None:
        return None
    metrics = {task: {k.split(",")[0]: v for k, v in values.items() if "stderr" not in k and k != "alias"}
               for task, values in out["results"].items()}
    samples = {task: {s["doc_id"]: s["resps"][0][0] for s in logged} for task, logged in out["samples"].items()}
    return {"metrics": metrics, "docs": {task: n["effective"] for task, n in out["n-samples"].items()},
            "samples": samples}

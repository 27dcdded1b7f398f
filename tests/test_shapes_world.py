"""The shapes world: determinism, truthful texts, unambiguous questions, shipped parquet files."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mmq_eval.errors import MMQConfigError
from mmq_eval.shapes import world
from mmq_eval.shapes.world import Scene, Shape

DATA = Path(__file__).resolve().parents[1] / "task_configs" / "mmq_shapes" / "data"


def scene(*shapes: Shape) -> Scene:
    return Scene("test", 0, tuple(sorted(shapes, key=lambda s: s.x)))


def answers(s: Scene) -> dict[str, str]:
    return {q.question: q.answer for q in world.vqa_items(s)}


def test_same_split_is_identical_and_prefix_stable():
    a, b = world.make_scenes("train", 20), world.make_scenes("train", 50)
    assert a == b[:20]
    for x, y in zip(a, b):
        assert world.render(x).tobytes() == world.render(y).tobytes()
        assert world.captions(x) == world.captions(y)
        assert world.vqa_items(x) == world.vqa_items(y)


def test_splits_differ():
    shapes = {split: [s.shapes for s in world.make_scenes(split, 20)]
              for split in world.SPLIT_SEEDS}
    assert shapes["train"] != shapes["calib"] != shapes["test"] != shapes["train"]
    assert len(set(world.SPLIT_SEEDS.values())) == len(world.SPLIT_SEEDS)


def test_bad_split_is_a_config_error_naming_the_choices():
    with pytest.raises(MMQConfigError, match=r"'val'.*calib.*test.*train"):
        world.make_scenes("val", 3)
    with pytest.raises(MMQConfigError):
        world.balanced_vqa("val", 5)


def test_render_draws_the_shape_in_its_colour():
    s = scene(Shape("circle", "red", "large", 32, 32))
    img = world.render(s)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert img.getpixel((32, 32)) == world.COLOURS["red"]
    assert img.getpixel((1, 1)) == world.BACKGROUND


def test_single_large_red_circle_texts_are_true():
    s = scene(Shape("circle", "red", "large", 32, 32))
    assert world.canonical_caption(s) == "a large red circle"
    caps = world.captions(s)
    assert len(caps) == 5 == len(set(caps)) and all("large red circle" in c for c in caps)
    qa = answers(s)
    assert qa["what colour is the circle?"] == "red"
    assert qa["how many shapes are there?"] == "one"
    assert qa["which shape is red?"] == "circle"
    assert qa["what size is the red circle?"] == "large"
    assert qa["is there a red circle?"] == "yes"
    assert {a for q, a in qa.items() if q.startswith("is there")} == {"yes", "no"}


def test_two_shapes_captions_follow_left_to_right_order():
    s = scene(Shape("square", "blue", "small", 50, 20), Shape("circle", "red", "large", 15, 40))
    assert world.canonical_caption(s) == "a large red circle left of a small blue square"
    caps = world.captions(s)
    assert "a small blue square right of a large red circle" in caps
    assert any(c.startswith("two shapes ") for c in caps)
    assert all(c.replace(" ", "").isalpha() for c in caps)


def test_ambiguous_questions_are_not_asked():
    s = scene(
        Shape("circle", "red", "large", 10, 12),
        Shape("circle", "blue", "small", 30, 40),
        Shape("square", "red", "small", 52, 12),
    )
    qa = answers(s)
    assert "what colour is the circle?" not in qa  # two circles
    assert qa["what colour is the large circle?"] == "red"
    assert qa["what colour is the small circle?"] == "blue"
    assert "which shape is red?" not in qa  # two red shapes
    assert qa["which small shape is red?"] == "square"
    assert qa["how many circles are there?"] == "two"
    assert qa["how many shapes are there?"] == "three"
    assert qa["is there a red square?"] == "yes"
    for q, a in qa.items():
        if a == "no":
            colour, kind = q.removesuffix("?").split()[-2:]
            assert not any(x.colour == colour and x.kind == kind for x in s.shapes)


def test_generated_scenes_are_valid_and_vocabulary_covers_all_text():
    vocab = set(world.vocabulary())
    for s in world.make_scenes("train", 300):
        assert 1 <= len(s.shapes) <= 3
        xs = [x.x for x in s.shapes]
        assert xs == sorted(xs)
        texts = world.captions(s) + [q.question + " " + q.answer for q in world.vqa_items(s)]
        assert {w for t in texts for w in t.replace("?", "").split()} <= vocab
        assert {q.question_type for q in world.vqa_items(s)} <= set(world.QUESTION_TYPES)


def test_balanced_vqa_and_calibration_examples():
    pairs = world.balanced_vqa("test", 50)
    assert Counter(q.question_type for _, q in pairs) == {t: 10 for t in world.QUESTION_TYPES}
    assert pairs == world.balanced_vqa("test", 50)
    calib = world.calibration_examples(6, seed=1)
    assert calib[0][1] == world.CAPTION_PROMPT == ""
    assert calib[1][1].startswith("Question: ") and calib[1][1].endswith("? Answer:")
    assert calib[0][0].size == (64, 64) and calib[0][2]
    again = world.calibration_examples(6, seed=1)
    assert [(p, t) for _, p, t in calib] == [(p, t) for _, p, t in again]
    assert [(p, t) for _, p, t in calib] != [(p, t) for _, p, t in world.calibration_examples(6, 2)]


def test_parquet_files_embed_images_and_have_the_columns():
    code = f"""
import io, pyarrow.parquet as pq
from PIL import Image
cap = pq.read_table({str(DATA / "shapes_cap_test.parquet")!r})
vqa = pq.read_table({str(DATA / "shapes_vqa_test.parquet")!r})
print(cap.column_names, cap.num_rows, len(cap.column("captions")[0].as_py()))
print(vqa.column_names, vqa.num_rows, len(vqa.column("answers")[0].as_py()))
img = Image.open(io.BytesIO(vqa.column("image")[3].as_py()["bytes"]))
print(img.size, img.mode)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "['image_id', 'image', 'captions'] 200 5"
    assert lines[1] == (
        "['question_id', 'image_id', 'image', 'question', 'answer', 'answers', 'question_type']"
        " 500 10"
    )
    assert lines[2] == "(64, 64) RGB"


def test_parquet_matches_the_world():
    import pyarrow.parquet as pq

    vqa = pq.read_table(DATA / "shapes_vqa_test.parquet").to_pylist()
    expected = world.balanced_vqa("test", 500)
    for row in vqa[:20]:
        s, q = expected[row["question_id"]]
        assert (row["image_id"], row["question"], row["answer"]) == (s.index, q.question, q.answer)
    cap = pq.read_table(DATA / "shapes_cap_test.parquet").to_pylist()
    assert cap[7]["captions"] == world.captions(world.make_scene("test", 7))

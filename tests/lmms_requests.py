"""Build lmms-eval request Instances and task_dicts by hand, as the evaluator would."""

from lmms_eval.api.instance import Instance
from PIL import Image, ImageDraw

COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (230, 200, 20)]


def make_image(i: int, size: int = 32) -> Image.Image:
    """A small distinct image per index."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x = (i * 7) % (size // 2)
    draw.rectangle([x, x, x + size // 2, x + size // 3], fill=COLOURS[i % len(COLOURS)])
    return image


def make_docs(n: int) -> list[dict]:
    """Documents with an image and a question each."""
    return [{"image": make_image(i), "question": f"what color is the {'circle square triangle'.split()[i % 3]} ?"}
            for i in range(n)]


def doc_to_visual(doc):
    return [doc["image"]]


def generate_requests(contexts, gen_kwargs, task="t", split="test"):
    """generate_until Instances over docs 0..n-1 of ``task``."""
    return [
        Instance("generate_until", (ctx, dict(gen_kwargs), doc_to_visual, i, task, split), idx=0,
                 metadata={"task": task, "doc_id": i, "repeats": 1})
        for i, ctx in enumerate(contexts)
    ]


def loglikelihood_requests(pairs, task="t", split="test"):
    """loglikelihood Instances; ``pairs`` holds (doc_id, context, continuation)."""
    return [
        Instance("loglikelihood", (ctx, cont, doc_to_visual, doc_id, task, split), idx=0,
                 metadata={"task": task, "doc_id": doc_id, "repeats": 1})
        for doc_id, ctx, cont in pairs
    ]

"""The "shapes" world: seeded 64x64 scenes of 1-3 flat shapes, with captions and VQA items.

Every scene is drawn from its own RNG, seeded by (split seed, scene index), so the first k
scenes of a split never depend on how many are requested. Rendering is pure PIL drawing
(no antialiasing), so identical scenes give identical pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from mmq_eval.errors import MMQConfigError

IMAGE_SIZE = 64
BACKGROUND = (255, 255, 255)
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 190),
    "orange": (250, 130, 20),
}
KINDS = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
SIZES = {"small": 7, "large": 12}  # half-extent in pixels
NUMBERS = ("one", "two", "three")
SPLIT_SEEDS = {"train": 1_000, "calib": 2_000, "test": 3_000}
QUESTION_TYPES = ("colour", "shape", "count", "size", "existence")
CAPTION_PROMPT = ""
VQA_PROMPT = "Question: {question} Answer:"

_MIN_GAP = 2  # pixels between bounding boxes
_MIN_DX = 6  # horizontal centre distance, so "left of" is always clear


@dataclass(frozen=True)
class Shape:
    """One shape: kind, colour name, size name and centre (x, y) in pixels."""

    kind: str
    colour: str
    size: str
    x: int
    y: int

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """A scene: its split, its index there (the image id) and its shapes, left to right."""

    split: str
    index: int
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class VQAItem:
    """A question about a scene with its one-word answer and question type."""

    question: str
    answer: str
    question_type: str


def _split_seed(split: str) -> int:
    if split not in SPLIT_SEEDS:
        raise MMQConfigError(
            f"unknown shapes split {split!r}: accepted splits are {sorted(SPLIT_SEEDS)}"
        )
    return SPLIT_SEEDS[split]


def _fits(x: int, y: int, r: int, placed: list[Shape]) -> bool:
    for s in placed:
        rs = SIZES[s.size]
        if abs(x - s.x) < _MIN_DX:
            return False
        apart_x = abs(x - s.x) >= r + rs + _MIN_GAP
        apart_y = abs(y - s.y) >= r + rs + _MIN_GAP
        if not (apart_x or apart_y):
            return False
    return True


def make_scene(split: str, index: int) -> Scene:
    """Scene number `index` of `split` (deterministic)."""
    rng = random.Random(_split_seed(split) * 1_000_003 + index)
    while True:
        n = rng.randint(1, 3)
        placed: list[Shape] = []
        for _ in range(n):
            kind, colour = rng.choice(KINDS), rng.choice(list(COLOURS))
            size = rng.choice(list(SIZES))
            r = SIZES[size]
            for _ in range(50):
                x = rng.randint(r + 1, IMAGE_SIZE - 2 - r)
                y = rng.randint(r + 1, IMAGE_SIZE - 2 - r)
                if _fits(x, y, r, placed):
                    placed.append(Shape(kind, colour, size, x, y))
                    break
            else:
                break
        if len(placed) == n:
            return Scene(split, index, tuple(sorted(placed, key=lambda s: s.x)))


def make_scenes(split: str, n: int) -> list[Scene]:
    """The first `n` scenes of `split`; raises MMQConfigError for an unknown split."""
    _split_seed(split)
    return [make_scene(split, i) for i in range(n)]


def render(scene: Scene) -> Image.Image:
    """Draw the scene as a 64x64 RGB image."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        r, fill = SIZES[s.size], COLOURS[s.colour]
        box = (s.x - r, s.y - r, s.x + r, s.y + r)
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(s.x, s.y - r), (s.x + r, s.y + r), (s.x - r, s.y + r)], fill=fill)
    return img


def _and_list(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else " ".join(phrases[:-1]) + " and " + phrases[-1]


def canonical_caption(scene: Scene) -> str:
    """The fixed caption form: shapes left to right, joined by "left of"."""
    return " left of ".join(s.phrase for s in scene.shapes)


def captions(scene: Scene) -> list[str]:
    """Five correct, varied reference captions (the first is the canonical one)."""
    phrases = [s.phrase for s in scene.shapes]
    n = len(phrases)
    count = f"{NUMBERS[n - 1]} {'shape' if n == 1 else 'shapes'}"
    if n == 1:
        s = scene.shapes[0]
        return [
            phrases[0],
            f"{count} {phrases[0]}",
            f"a single {s.size} {s.colour} {s.kind}",
            f"there is {phrases[0]}",
            f"a picture of {phrases[0]}",
        ]
    return [
        canonical_caption(scene),
        f"{count} {_and_list(phrases)}",
        " right of ".join(reversed(phrases)),
        f"there are {_and_list(phrases)}",
        f"a picture of {_and_list(list(reversed(phrases)))}",
    ]


def _unique(shapes: tuple[Shape, ...], **attrs: str) -> bool:
    return sum(all(getattr(s, k) == v for k, v in attrs.items()) for s in shapes) == 1


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def vqa_items(scene: Scene) -> list[VQAItem]:
    """All unambiguous questions about the scene, in a fixed order; existence is yes/no balanced."""
    shapes, items = scene.shapes, []
    items.append(VQAItem("how many shapes are there?", NUMBERS[len(shapes) - 1], "count"))
    for kind in KINDS:
        k = sum(s.kind == kind for s in shapes)
        if k:
            items.append(VQAItem(f"how many {PLURALS[kind]} are there?", NUMBERS[k - 1], "count"))
    present = {(s.colour, s.kind) for s in shapes}
    rng = random.Random(SPLIT_SEEDS[scene.split] * 7_919 + scene.index)
    for s in shapes:
        if _unique(shapes, kind=s.kind):
            items.append(VQAItem(f"what colour is the {s.kind}?", s.colour, "colour"))
        elif _unique(shapes, kind=s.kind, size=s.size):
            items.append(VQAItem(f"what colour is the {s.size} {s.kind}?", s.colour, "colour"))
        if _unique(shapes, colour=s.colour):
            items.append(VQAItem(f"which shape is {s.colour}?", s.kind, "shape"))
        elif _unique(shapes, colour=s.colour, size=s.size):
            items.append(VQAItem(f"which {s.size} shape is {s.colour}?", s.kind, "shape"))
        if _unique(shapes, colour=s.colour, kind=s.kind):
            items.append(VQAItem(f"what size is the {s.colour} {s.kind}?", s.size, "size"))
        items.append(
            VQAItem(f"is there {_article(s.colour)} {s.colour} {s.kind}?", "yes", "existence")
        )
        # a near miss: same colour with another kind, or same kind with another colour
        misses = [(s.colour, k) for k in KINDS] + [(c, s.kind) for c in COLOURS]
        colour, kind = rng.choice([m for m in misses if m not in present])
        items.append(VQAItem(f"is there {_article(colour)} {colour} {kind}?", "no", "existence"))
    return list(dict.fromkeys(items))


def balanced_vqa(split: str, n: int) -> list[tuple[Scene, VQAItem]]:
    """`n` (scene, item) pairs, one per scene, cycling through the question types in turn.

    Each type gets n // len(QUESTION_TYPES) items (the first types one more for a remainder);
    a scene with no question of the wanted type is skipped. Deterministic for split and n.
    """
    rng = random.Random(_split_seed(split) + n)
    quota = {t: n // len(QUESTION_TYPES) + (i < n % len(QUESTION_TYPES))
             for i, t in enumerate(QUESTION_TYPES)}
    out, index, turn = [], 0, 0
    while len(out) < n:
        wanted = [t for t in QUESTION_TYPES if quota[t]]
        qtype = wanted[turn % len(wanted)]
        scene = make_scene(split, index)
        index += 1
        candidates = [q for q in vqa_items(scene) if q.question_type == qtype]
        if candidates:
            out.append((scene, rng.choice(candidates)))
            quota[qtype] -= 1
            turn += 1
    return out


def vocabulary() -> list[str]:
    """Every word that captions, questions, answers and prompts can contain, sorted."""
    words = set(KINDS) | set(PLURALS.values()) | set(COLOURS) | set(SIZES) | set(NUMBERS)
    words |= set(
        "a an and left right of shape shapes single there is are picture how many what colour the "
        "which size yes no question answer".split()
    )
    return sorted(words)


def calibration_examples(n: int, seed: int) -> list[tuple[Image.Image, str, str]]:
    """`n` (image, prompt, target) pairs from the calib split, alternating captioning and VQA.

    The seed picks the scenes and questions. Prompts use the exact formats the model was
    trained with; targets carry no end token.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = make_scene("calib", rng.randrange(1_000_000))
        if i % 2 == 0:
            out.append((render(scene), CAPTION_PROMPT, canonical_caption(scene)))
        else:
            item = rng.choice(vqa_items(scene))
            out.append((render(scene), VQA_PROMPT.format(question=item.question), item.answer))
    return out

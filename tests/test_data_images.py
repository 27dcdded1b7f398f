"""Image cells of the tasks' documents: left encoded until doc_to_visual decodes them."""

import io

import datasets
import pytest
from PIL import Image

from mmq_eval.data import captions
from mmq_eval.data.images import decode_image, undecoded_images
from mmq_eval.errors import MMQDataError
from mmq_eval.tasks import shapes


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_undecoded_docs_hold_bytes_and_doc_to_visual_gives_the_pixels():
    features = datasets.Features({"image_id": datasets.Value("int64"), "image": datasets.Image()})
    data = datasets.Dataset.from_dict(
        {"image_id": [7, 8], "image": [{"bytes": png((255, 0, 0)), "path": None},
                                       {"bytes": png((0, 0, 255)), "path": None}]}, features=features)
    assert isinstance(data[0]["image"], Image.Image)  # datasets decodes on access by default
    docs = undecoded_images(data)  # the shapes tasks' process_docs
    assert docs[1]["image"]["bytes"] == png((0, 0, 255))
    (image,) = shapes.doc_to_visual(docs[1])
    assert image.mode == "RGB" and image.size == (4, 3) and image.getpixel((2, 1)) == (0, 0, 255)
    assert undecoded_images(docs) is docs  # nothing left to cast


def test_decoded_cells_are_accepted_as_they_are():
    image = decode_image(Image.new("L", (2, 2), 128), "a grey image")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (128, 128, 128)


def test_a_corrupt_image_names_the_document_and_the_fix():
    doc = {"image_id": 42, "image": {"bytes": b"\x89PNG not really", "path": "42.png"}}
    with pytest.raises(MMQDataError, match=r"shapes image 42: the image cannot be read .*python -m mmq_eval.shapes.export"):
        shapes.doc_to_visual(doc)
    with pytest.raises(MMQDataError, match=r"image 3 \(3.jpg\): the image cannot be read .*prepare the data set again"):
        captions.doc_to_visual({"image_id": 3, "file_name": "3.jpg", "image": {"bytes": b"\xff\xd8 cut", "path": None}})


@pytest.mark.parametrize("task", ["mmq_shapes_cap", "mmq_shapes_vqa", "mmq_shapes_retrieval"])
def test_shapes_tasks_keep_images_encoded_until_doc_to_visual(task):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    task_obj = get_task_dict([task], manager)[task]
    doc = task_obj.test_docs()[0]
    assert doc["image"]["bytes"][:4] == b"\x89PNG"
    (image,) = task_obj.doc_to_visual(doc)
    assert image.mode == "RGB" and image.size == (64, 64)

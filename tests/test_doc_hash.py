"""Documents reach lmms-eval: a distinct ``doc_hash`` per document in ``--log_samples`` output, the
document's ids on each logged line, and no image bytes in either (mmq_eval.plugin.attach_documents)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from mmq_eval.plugin import doc_key, media_free
from mmq_eval.tasks import tasks_path

BIN = Path(sys.executable).parent
VQA = Path(tasks_path()) / "mmq_shapes" / "data" / "shapes_vqa_test.parquet"


def test_log_samples_hashes_each_document_and_names_its_ids(tmp_path):
    from lmms_eval.utils import handle_non_serializable, hash_string

    proc = subprocess.run(
        [str(BIN / "mmq-eval"), "run", "--model", "mmq_blip2", "--model_args", "pretrained=mmq:shapes-blip2",
         "--tasks", "mmq_shapes_vqa", "--limit", "4", "--log_samples", "--output_path", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in next(tmp_path.rglob("*_samples_mmq_shapes_vqa.jsonl")).open()]
    assert [line["doc_id"] for line in lines] == [0, 1, 2, 3]
    rows = pd.read_parquet(VQA).drop(columns="image").head(4).to_dict("records")
    for line, row in zip(lines, rows):
        assert line["doc_key"] == {"question_id": row["question_id"], "image_id": row["image_id"]}
        doc = {key: (value.tolist() if hasattr(value, "tolist") else value) for key, value in row.items()}
        assert line["doc_hash"] == hash_string(json.dumps(doc, indent=2, default=handle_non_serializable,
                                                          ensure_ascii=False))
    assert len({line["doc_hash"] for line in lines}) == 4


def test_documents_keep_no_media_and_their_ids_are_found():
    image = {"bytes": b"\x89PNG", "path": "0.png"}
    assert media_free({"image": image, "question": "q?", "question_id": 3}) == {"question": "q?", "question_id": 3}
    assert doc_key({"question_id": 3, "imageId": "n1", "imgid": 7, "question": "q?", "answers": ["a"]}) == {
        "question_id": 3, "imageId": "n1", "imgid": 7}
    assert doc_key({"question": "q?"}) == {"question": "q?"}

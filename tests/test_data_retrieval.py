"""prepare-data for the retrieval sets and their mmq_* tasks end to end on a tiny random retrieval
model: in one process and in two, the data errors, and the errors for a checkpoint without the
head a task needs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
from data_fakes import evaluate, flickr30k_raw, karpathy_raw, prepare_data, prepared_root

from mmq_eval.errors import MMQConfigError, MMQDataError
from mmq_eval.models.blip2 import MMQBlip2

FLICKR, COCO = "mmq_flickr30k_retrieval", "mmq_coco_retrieval"
METRICS = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall"}
WORKER = Path(__file__).with_name("retrieval_worker.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    with prepared_root(tmp_path_factory, ("flickr30k", partial(flickr30k_raw, n_test=4)),
                       ("coco_karpathy", partial(karpathy_raw, n_test=3), "--calib-size", "0")) as (root, _):
        yield root


@pytest.fixture(scope="module")
def itm_lm(tiny_itm_dir):
    return MMQBlip2(pretrained=str(tiny_itm_dir), device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def results(data_root, itm_lm):
    return evaluate(itm_lm, [FLICKR, COCO])


def test_flickr30k_test_set_embeds_images_and_captions(data_root):
    test = pd.read_parquet(data_root / "flickr30k" / "test.parquet")
    assert list(test["image_id"]) == [0, 1, 2, 3]  # Karpathy's imgid; the val and train images are left out
    assert list(test["file_name"]) == [f"{1000092795 + i}.jpg" for i in range(4)]
    assert list(test["captions"][0]) == ["A red circle.", "one big red circle", "the circle is red",
                                         "there is a big circle", "a photo of a red circle , big"]
    assert all(cell["bytes"][:2] == b"\xff\xd8" for cell in test["image"])


def test_retrieval_tasks_rank_every_prepared_image(results):
    assert results["docs"] == {FLICKR: 4, COCO: 3}
    for task in (FLICKR, COCO):
        metrics = results["metrics"][task]
        assert set(metrics) == METRICS
        for direction in ("i2t", "t2i"):
            assert 0 <= metrics[f"{direction}_r1"] <= metrics[f"{direction}_r5"] <= metrics[f"{direction}_r10"] <= 100
        assert metrics["t2i_r5"] == 100.0  # at most 4 images: the right one is always in the top 5
    flickr = [json.loads(r) for r in results["samples"][FLICKR].values()]
    assert sorted(len(r["t2i"]) for r in flickr) == [5] * 4
    assert len({r["i2t"] for r in flickr}) > 1  # a random model, but not all ties


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_answers(results, data_root, itm_lm, tiny_itm_dir, monkeypatch):
    """lmms-eval's torchrun flow with this test as process 0 and a worker as process 1: the whole
    set, then one image (process 1 gets only lmms-eval's padding request for it)."""
    import torch.distributed as dist

    one_image = evaluate(itm_lm, [FLICKR], limit=1)
    port = str(free_port())
    env = {**os.environ, "MMQ_DATA_DIR": str(data_root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    worker = subprocess.Popen([sys.executable, str(WORKER), "1", "2", port, str(tiny_itm_dir), FLICKR, "all", "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": port}.items():
        monkeypatch.setenv(key, value)
    try:
        dist.init_process_group("gloo", timeout=timedelta(seconds=180))  # as the worker does
        two = evaluate(itm_lm, [FLICKR], distributed_executor_backend="torchrun")
        two_one_image = evaluate(itm_lm, [FLICKR], limit=1, distributed_executor_backend="torchrun")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        itm_lm._rank, itm_lm._world_size = 0, 1  # set by the evaluator
        output = worker.communicate(timeout=180)[0]
    assert worker.returncode == 0, output[-3000:]
    for got, want in ((two, results), (two_one_image, one_image)):
        assert got["docs"][FLICKR] == want["docs"][FLICKR]
        assert got["samples"][FLICKR] == want["samples"][FLICKR]
        assert got["metrics"][FLICKR] == want["metrics"][FLICKR]


def test_processes_holding_different_galleries_are_refused(itm_lm, monkeypatch):
    """A process without docs of a gallery would leave the others waiting: all refuse instead."""
    from mmq_eval.models.processes import Processes
    from mmq_eval.models.retrieval import _gallery_ids

    class TwoProcesses(Processes):
        def gather(self, obj):
            return [obj, {("mmq_other_retrieval", "test"): [1]}]

    with pytest.raises(MMQConfigError, match="mmq_flickr30k_retrieval, mmq_other_retrieval reached only some"):
        _gallery_ids(TwoProcesses(0, 2), {(FLICKR, "test"): [0]})
    assert _gallery_ids(Processes(), {(FLICKR, "test"): [2, 0]}) == {(FLICKR, "test"): [0, 2]}


def test_processes_without_a_process_group_are_refused(itm_lm, data_root, monkeypatch):
    monkeypatch.setattr(itm_lm, "_world_size", 2)
    with pytest.raises(MMQConfigError, match="no process group.*accelerate launch or torchrun"):
        evaluate(itm_lm, [FLICKR])


def test_missing_split_file_is_named(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "flickr30k-images").mkdir(parents=True)
    assert prepare_data("flickr30k", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    assert f"expected {raw / 'dataset_flickr30k.json'}" in capsys.readouterr().err


def test_missing_image_is_named(tmp_path, capsys):
    raw = flickr30k_raw(tmp_path / "raw", n_test=3)
    missing = raw / "flickr30k-images" / "1000092796.jpg"
    missing.unlink()
    assert prepare_data("flickr30k", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    assert f"1 of 3 images for test.parquet are missing, the first: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "d" / "flickr30k" / "test.parquet").exists()


@pytest.mark.parametrize(("task", "expected", "dataset"), [
    (FLICKR, "flickr30k/test.parquet", "flickr30k"), (COCO, "coco/karpathy_test.parquet", "coco_karpathy"),
])
def test_unprepared_task_names_the_file_and_the_command(tmp_path, monkeypatch, task, expected, dataset):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path))
    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    with pytest.raises(MMQDataError, match=f"(?s){tmp_path / expected} is missing.*mmq-eval prepare-data {dataset} "):
        get_task_dict([task], manager)


def test_retrieval_task_with_a_generation_checkpoint_names_the_missing_head():
    lm = MMQBlip2(pretrained="mmq:shapes-blip2", device="cpu")
    with pytest.raises(MMQConfigError, match="mmq_shapes_retrieval need an image-text retrieval checkpoint.*"
                                             "'mmq:shapes-blip2' is a Blip2ForConditionalGeneration"):
        evaluate(lm, ["mmq_shapes_retrieval"], limit=2)


def test_captioning_task_with_a_retrieval_checkpoint_names_the_missing_language_model(data_root, itm_lm):
    with pytest.raises(MMQConfigError, match="mmq_coco_cap_karpathy need a language model.*Blip2ForImageTextRetrieval"):
        evaluate(itm_lm, ["mmq_coco_cap_karpathy"])


def test_retrieval_checkpoint_pads_text_on_the_right(itm_lm, tiny_blip2_dir, tiny_blip2_t5_dir):
    """The Q-Former text encoder reads [CLS] first, at absolute positions: calibration batches (the
    processor's padding) must give each text the embedding it has alone."""
    from lmms_requests import make_image

    from mmq_eval.models.retrieval import text_features

    assert itm_lm.tokenizer.padding_side == "right"  # the saved tokenizer says "left"
    texts = ["a red circle", "there is a small blue square left of a big green triangle"]
    batch = itm_lm._encode([make_image(0), make_image(1)], texts)
    assert batch["attention_mask"][0].tolist() == [1] * 4 + [0] * (batch["attention_mask"].shape[1] - 4)
    with torch.no_grad():
        together = text_features(itm_lm.model, batch["input_ids"], batch["attention_mask"])
        for row, text in enumerate(texts):
            alone = itm_lm._encode([make_image(row)], [text])
            torch.testing.assert_close(together[row], text_features(itm_lm.model, alone["input_ids"],
                                                                    alone["attention_mask"])[0])
    assert MMQBlip2(pretrained=str(tiny_blip2_dir), device="cpu").tokenizer.padding_side == "left"
    assert MMQBlip2(pretrained=str(tiny_blip2_t5_dir), device="cpu").tokenizer.padding_side == "right"

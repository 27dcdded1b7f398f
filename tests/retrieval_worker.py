"""Process RANK of a multi-process lmms-eval run (its torchrun flow, gloo on the CPU), for tests.

``python retrieval_worker.py RANK WORLD_SIZE PORT MODEL_DIR TASK LIMIT...`` with MMQ_DATA_DIR set;
the test itself is process 0. The model loads on the CPU, then the process joins the gloo group
(as a model backend under torchrun would) and evaluates TASK once per LIMIT (a number of docs, or
"all"), as process 0 does; the evaluator shards the docs and gathers the results on process 0.
"""

import os
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(rank: str, world_size: str, port: str, model_dir: str, task: str, *limits: str) -> None:
    import torch
    import torch.distributed as dist
    from data_fakes import evaluate

    from mmq_eval.models.blip2 import MMQBlip2

    torch.set_num_threads(1)
    lm = MMQBlip2(pretrained=model_dir, device="cpu", batch_size=4)
    os.environ.update(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=world_size, MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port)
    dist.init_process_group("gloo", timeout=timedelta(seconds=180))
    for limit in limits:
        evaluate(lm, [task], limit=None if limit == "all" else int(limit), distributed_executor_backend="torchrun")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

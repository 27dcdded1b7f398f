"""Peak memory of GPTQ on a disk-offloaded model against the same model held in memory.

Builds BLIP-2 OPT-2.7b at full width (random float32 weights) with its OPT stack cut to each of
``--llm-blocks`` (e.g. 4 and 8 blocks), saves it, then quantizes the LLM with GPTQ 4-bit on
``--calib-samples`` synthetic samples twice, each in a fresh process: loaded whole into memory, and
loaded disk-offloaded (``mmq_eval.quant.offload.load_disk_offloaded``: weights read one block at a
time). It reports each run's peak resident memory (and, sampled, its anonymous part: RSS also
counts the file pages of the memory-mapped offload files, which the kernel can drop) and seconds
beside the checkpoint's size: held in memory the peak grows with the model; offloaded it stays
near one block plus its activations (the uint8 codes kept for export and the cache go to files
under the offload folder, as the wrappers' ``offload_folder=`` does).

    .venv/bin/python benchmarks/offload.py --llm-blocks 4 8 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def build_checkpoint(folder: Path, llm_blocks: int) -> int:
    """Save BLIP-2 OPT-2.7b widths with 1 ViT, 2 Q-Former and `llm_blocks` OPT blocks; its bytes."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_full_size as g
    import torch

    cfg = g.blip2_config()
    cfg.vision_config.num_hidden_layers, cfg.qformer_config.num_hidden_layers = 1, 2
    cfg.text_config.num_hidden_layers = llm_blocks
    model = g.build_model(g.Blip2ForConditionalGeneration, cfg, torch.device("cpu"), torch.float32)
    model.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


class AnonymousPeak:
    """Peak anonymous resident memory (``RssAnon``: the process's own data, not the file pages of the
    memory-mapped offload files, which the kernel can drop), sampled every 20 ms in a thread."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def measure(checkpoint: str, offloaded: bool, calib_samples: int) -> dict:
    """Load `checkpoint` (offloaded or not) and GPTQ-quantize its LLM, in this process."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_full_size as g
    import torch

    from mmq_eval.quant import QuantSpec, quantize_model
    from mmq_eval.quant.offload import load_disk_offloaded

    torch.manual_seed(0)
    anonymous = AnonymousPeak()
    t = time.perf_counter()
    if offloaded:
        model = load_disk_offloaded(g.Blip2ForConditionalGeneration, checkpoint, Path(checkpoint) / "offload")
    else:
        model = g.Blip2ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
    load_s = time.perf_counter() - t
    batches = g.synthetic_batches(model, calib_samples, batch_size=16, text_len=32)
    t = time.perf_counter()
    spec = QuantSpec.from_args({"method": "gptq", "llm_bits": 4, "calib_samples": calib_samples})
    codes_dir = Path(checkpoint) / "offload" / "codes" if offloaded else None
    report = quantize_model(model, spec, batches, progress=False, codes_dir=codes_dir)
    return {"offloaded": offloaded, "load_s": round(load_s, 1), "quantize_s": round(time.perf_counter() - t, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, 2),
            "peak_anon_gib": round(anonymous.stop() / GiB, 2),
            "bpw": round(report.bpw, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-blocks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # checkpoint, offloaded (0/1)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "1", args.calib_samples)))
        return
    rows = []
    for blocks in args.llm_blocks:
        with tempfile.TemporaryDirectory() as tmp:
            size = build_checkpoint(Path(tmp), blocks)
            for offloaded in (False, True):
                out = subprocess.run([sys.executable, __file__, "--calib-samples", str(args.calib_samples),
                                      "--child", tmp, str(int(offloaded))],
                                     capture_output=True, text=True, check=True)
                row = {"llm_blocks": blocks, "checkpoint_gib": round(size / GiB, 2),
                       **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(row, flush=True)
    print("\n| OPT blocks | checkpoint GiB | loaded | peak RSS GiB | of it anonymous GiB | quantize s |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['llm_blocks']} | {r['checkpoint_gib']} | {'disk-offloaded' if r['offloaded'] else 'in memory'} "
              f"| {r['peak_rss_gib']} | {r['peak_anon_gib']} | {r['quantize_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Bytes on disk and resident memory of a packed export vs its float32 checkpoint, at a size where
memory is not dominated by the libraries.

Builds a random shapes-world BLIP-2 widened to ``--width`` (ViT, Q-Former and OPT hidden size;
MLPs 4x) with ``--layers`` blocks per component, saves it in float32 with the shapes processor,
then runs ``mmq-eval export`` on it (RTN, symmetric, group 128 by default), which measures each
checkpoint's load in a fresh process. The defaults give ~0.5B parameters (2 GB in float32).

    python benchmarks/export_size.py [--width 1024] [--layers 12] [--model-args method=rtn,bits=4,sym=true]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmq_eval.cli import main as mmq_eval
from mmq_eval.shapes.model import build_shapes_blip2
from mmq_eval.shapes.tokenizer import build_processor, build_tokenizer


def save_checkpoint(path: Path, width: int, layers: int) -> int:
    """Save the widened random BLIP-2 and its processor; return its parameter count."""
    heads = max(1, width // 64)
    block = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads)
    tokenizer = build_tokenizer()
    model = build_shapes_blip2(
        tokenizer, 0,
        vision={**block, "intermediate_size": 4 * width},
        qformer={**block, "intermediate_size": 4 * width, "encoder_hidden_size": width},
        text={**block, "ffn_dim": 4 * width, "word_embed_proj_dim": width},
    )
    model.save_pretrained(path)
    build_processor(tokenizer).save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--model-args", default="method=rtn,bits=4,sym=true,group_size=128")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmq-export-size-") as tmp:
        source, out = Path(tmp) / "fp32", Path(tmp) / "packed"
        params = save_checkpoint(source, args.width, args.layers)
        print(f"random BLIP-2, width {args.width}, {args.layers} blocks per component: {params:,} parameters")
        figures_file = Path(tmp) / "figures.json"
        rc = mmq_eval(["export", "--model", "mmq_blip2", "--model_args",
                       f"pretrained={source},quant_cache=none,{args.model_args}",
                       "--out", str(out), "--json", str(figures_file)])
        if rc == 0 and args.json:
            Path(args.json).write_text(json.dumps(json.loads(figures_file.read_text()), indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())

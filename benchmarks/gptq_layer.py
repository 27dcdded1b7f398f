"""Per-layer GPTQ: our implementation vs plain reference implementations, on the same inputs.

References (both written here from the paper / the GPTQ repository's structure):

- ``plain``: the original algorithm column by column, every column's error applied at once to all
  remaining columns (no lazy batching);
- ``lazy``: the GPTQ repository's ``fasterquant`` structure (lazy batches of 128 columns, column
  layout, per-column loss bookkeeping).

Each is timed as the median of ``--repeats`` runs on synthetic layers (768×768 and 2560×2560 by
default) with ``--tokens`` calibration tokens (correlated, unevenly scaled features). The integer
codes are compared in float64 (float32 runs can differ on exact rounding ties). Reported: time,
relative output error on the calibration tokens, the RTN error for scale, and code agreement.

    .venv/bin/python benchmarks/gptq_layer.py [--sizes 768 2560] [--tokens 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmq_eval.quant.formats import fake_quantize, group_qparams, quantize_codes
from mmq_eval.quant.gptq import gptq_quantize, relative_output_error


def _prepare(W, H, damp):
    W, H = W.clone(), H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return W, U


def plain_reference(W, H, bits, group_size, sym, damp=0.01):
    """The published algorithm without lazy batching; returns integer codes."""
    W, U = _prepare(W, H, damp)
    cols, maxq = W.shape[1], 2**bits - 1
    scale, zero = group_qparams(W, bits, cols, sym)
    Q = torch.zeros_like(W)
    for j in range(cols):
        if group_size < cols and j % group_size == 0:
            scale, zero = group_qparams(W[:, j:j + group_size], bits, group_size, sym)
        w = W[:, j]
        q = quantize_codes(w, scale[:, 0], zero[:, 0], maxq)
        Q[:, j] = q
        err = (w - scale[:, 0] * (q - zero[:, 0])) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])
    return Q


def lazy_reference(W, H, bits, group_size, sym, damp=0.01, block=128):
    """The GPTQ repository's fasterquant structure (lazy batches, column layout); returns codes."""
    W, U = _prepare(W, H, damp)
    cols = W.shape[1]
    maxq = 2**bits - 1
    scale, zero = group_qparams(W, bits, cols, sym)
    Q = torch.zeros_like(W)
    losses = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Q1, Err1, L1 = torch.zeros_like(W1), torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            if group_size < cols and (i1 + i) % group_size == 0:
                scale, zero = group_qparams(W[:, i1 + i:i1 + i + group_size], bits, group_size, sym)
            w, d = W1[:, i], U1[i, i]
            q = quantize_codes(w, scale[:, 0], zero[:, 0], maxq)
            Q1[:, i] = q
            deq = scale[:, 0] * (q - zero[:, 0])
            L1[:, i] = (w - deq) ** 2 / d**2
            err = (w - deq) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(U1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        losses[:, i1:i2] = L1 / 2
        W[:, i2:] -= Err1.matmul(U[i1:i2, i2:])
    return Q


def synthetic_layer(n: int, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g) / n**0.5
    mix = torch.randn(n, n, generator=g) / n**0.5 + torch.eye(n)
    X = (torch.randn(tokens, n, generator=g) @ mix) * torch.rand(n, generator=g).mul(3).add(0.1)
    return W, X


def _median_time(fn, args, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _agree(codes, ours) -> str:
    return f"{(codes == ours.to(codes.dtype)).float().mean().item():.6f}" if codes is not None else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 2560])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared box)")
    parser.add_argument("--skip-plain-above", type=int, default=4096,
                        help="do not run the (slow) plain reference for layers wider than this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.bits} bit, group {args.group_size}, "
          f"{args.tokens} tokens, median of {args.repeats}")
    head = f"{'layer':>11} {'impl':>6} {'time s':>8} {'vs plain':>9} {'vs lazy':>8} {'out err':>8} {'codes = ours':>13}"
    print(head)
    print("-" * len(head))
    for n in args.sizes:
        W, X = synthetic_layer(n, args.tokens)
        H = 2 * X.t() @ X / X.shape[0]
        gs = args.group_size if n % args.group_size == 0 else n
        call = (W, H, args.bits, gs, False)
        # gptq_quantize consumes H (factors it in place): each run gets a copy (~1 ms of 1.4 s at 2560)
        ours_t, ours = _median_time(lambda W, H, *rest: gptq_quantize(W, H.clone(), *rest), call, args.repeats)
        ours = ours.qweight
        lazy_t, lazy_codes = _median_time(lazy_reference, call, args.repeats)
        plain_t = plain_codes = None
        if n <= args.skip_plain_above:
            plain_t, plain_codes = _median_time(plain_reference, call, args.repeats)
        # float64: exact agreement of the integer codes, free of float32 rounding ties
        codes64 = gptq_quantize(W.double(), H.double(), args.bits, gs, False).qweight.codes.double()
        same64 = torch.equal(codes64, plain_reference(W.double(), H.double(), args.bits, gs, False))
        rtn_err = relative_output_error(W, fake_quantize(W, args.bits, gs, False), H)
        ours_err = relative_output_error(W, ours.weight, H)

        rows = [("ours", ours_t, ours_err, "1"), ("lazy", lazy_t, None, _agree(lazy_codes, ours.codes)),
                ("plain", plain_t, None, _agree(plain_codes, ours.codes))]
        for impl, t, err, codes in rows:
            if t is None:
                continue
            vs_plain = f"{t / plain_t:.2f}x" if plain_t else "-"
            print(f"{n:>5}x{n:<5} {impl:>6} {t:>8.3f} {vs_plain:>9} {t / lazy_t:>7.2f}x "
                  f"{(f'{err:.4f}' if err is not None else '-'):>8} {codes:>13}")
        print(f"{'':>11} {'rtn':>6} {'':>8} {'':>9} {'':>8} {rtn_err:>8.4f}")
        print(f"{'':>11} float64 codes identical to plain reference: {same64}")


if __name__ == "__main__":
    main()

"""``fastconv bench --suite nd``: conv1d and conv3d layers beside torch.

A 1-D audio layer (64 -> 64 channels, kernel 9, 16000 samples, batch 8, padding 4), a
3-D volume layer (16 -> 32 channels, 3x3x3, 32^3 voxels, batch 4, padding 1) and a
single-channel 48^3 volume filtered by an 11x11x11 kernel (padding 5: where the FFT has
the edge), forward
and forward + backward (all three gradients), float32, NCW / NCDHW. Results are checked
against torch (when installed) before anything is timed. The contenders alternate in
blocks of ``repeats`` calls, each best of ``rounds`` blocks (the machine may be shared:
compare ratios from one run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import fastconv

from .malloc import settle_allocator
from .runner import _torch, call_times


@dataclass(frozen=True)
class NdLayer:
    """One conv1d (kernel of one size) or conv3d layer: input (n, c, *size) -> c_out."""

    name: str
    n: int
    c: int
    size: tuple[int, ...]
    c_out: int
    k: int
    padding: int

    @property
    def rank(self) -> int:
        return len(self.size)

    def arrays(self, seed: int = 0):
        """(x, w, bias, grad_y) float32."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((self.n, self.c, *self.size), dtype=np.float32)
        scale = 1 / math.sqrt(self.c * self.k ** self.rank)
        w = rng.standard_normal((self.c_out, self.c) + (self.k,) * self.rank,
                                dtype=np.float32) * np.float32(scale)
        b = rng.standard_normal(self.c_out, dtype=np.float32)
        out = tuple(s + 2 * self.padding - self.k + 1 for s in self.size)
        gy = rng.standard_normal((self.n, self.c_out, *out), dtype=np.float32)
        return x, w, b, gy

    def flops(self) -> int:
        out = math.prod(s + 2 * self.padding - self.k + 1 for s in self.size)
        return 2 * self.n * self.c_out * out * self.c * self.k ** self.rank


ND_SUITE = (
    NdLayer("audio_1d", 8, 64, (16000,), 64, 9, 4),
    NdLayer("volume_3d", 4, 16, (32, 32, 32), 32, 3, 1),
    NdLayer("volume_k11", 1, 1, (48, 48, 48), 1, 11, 5),
)
#: Tiny versions for the tests (seconds).
ND_TINY = (
    NdLayer("tiny_1d", 2, 4, (64,), 4, 5, 2),
    NdLayer("tiny_3d", 1, 2, (6, 6, 6), 3, 3, 1),
)
#: The suites ``fastconv bench --suite`` runs with this module.
ND_SUITES = {"nd": ND_SUITE, "nd-tiny": ND_TINY}


def _fastconv_calls(layer: NdLayer, arrays, algo: str):
    x, w, b, gy = arrays
    conv = fastconv.conv1d if layer.rank == 1 else fastconv.conv3d
    back = fastconv.conv1d_backward if layer.rank == 1 else fastconv.conv3d_backward

    def forward():
        return conv(x, w, b, padding=layer.padding, algo=algo)

    def both():
        forward()
        return back(gy, x, w, padding=layer.padding, algo=algo)

    return forward, both


def _torch_calls(layer: NdLayer, arrays):
    torch = _torch()
    if torch is None:
        return None
    import numba

    torch.set_num_threads(numba.get_num_threads())
    conv = torch.nn.functional.conv1d if layer.rank == 1 else torch.nn.functional.conv3d
    x, w, b, gy = (torch.from_numpy(a) for a in arrays)
    xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))

    def forward():
        with torch.inference_mode():
            return conv(x, w, b, padding=layer.padding)

    def both():
        xg.grad = wg.grad = bg.grad = None
        conv(xg, wg, bg, padding=layer.padding).backward(gy)
        return xg.grad, wg.grad, bg.grad

    return forward, both


def _check(layer, fast, ref) -> None:
    """SystemExit when fastconv and torch disagree beyond float32 rounding."""
    got = fast[1]()
    want = [t.numpy() for t in ref[1]()]
    pairs = [(fast[0](), ref[0]().numpy())] + list(zip(got, want, strict=True))
    for u, v in pairs:
        err = np.max(np.abs(u - v)) / max(np.max(np.abs(v)), 1e-30)
        if not err <= 1e-3:
            raise SystemExit(f"{layer.name}: fastconv and torch disagree (rel err {err:.2e})")


def measure(layers=ND_SUITE, algo: str = "auto", repeats: int = 3, rounds: int = 3,
            extras: bool = True) -> list[dict]:
    """Per layer and pass: fastconv's and torch's best seconds (contenders alternating in
    blocks of ``repeats`` calls, best of ``rounds`` blocks; malloc settled first,
    ``malloc.settle_allocator``). torch only with ``extras``
    and when installed (its seconds are None otherwise)."""
    rows = []
    settle_allocator()
    for layer in layers:
        arrays = layer.arrays()
        fast = _fastconv_calls(layer, arrays, algo)
        ref = _torch_calls(layer, arrays) if extras else None
        if ref is not None:
            _check(layer, fast, ref)
        for k, name in enumerate(("forward", "forward+backward")):
            best = {"fastconv": math.inf, "torch": math.inf if ref else None}
            for r in range(rounds):
                for who, calls in (("fastconv", fast), ("torch", ref)):
                    if calls is not None:
                        t = min(call_times(calls[k], repeats, warmup=r == 0))
                        best[who] = min(best[who], t)
            rows.append({"layer": layer.name, "pass": name, "algo": algo,
                         "flops": layer.flops() * (1 if k == 0 else 3), **best})
    return rows


def format_rows(rows: list[dict]) -> str:
    """A plain table: layer, pass, fastconv ms, torch ms, torch / fastconv."""
    lines = [f"{'layer':10s} {'pass':17s} {'fastconv ms':>12s} {'torch ms':>10s} "
             f"{'torch/fastconv':>15s}"]
    for r in rows:
        torch_ms = "-" if r["torch"] is None else f"{r['torch'] * 1e3:10.2f}"
        ratio = "-" if r["torch"] is None else f"{r['torch'] / r['fastconv']:14.2f}x"
        lines.append(f"{r['layer']:10s} {r['pass']:17s} {r['fastconv'] * 1e3:12.2f} "
                     f"{torch_ms:>10s} {ratio:>15s}")
    return "\n".join(lines)

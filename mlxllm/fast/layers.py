"""The decode engine's pieces, each equal to a piece of the core it stands in for. Chapter 10.

``JoinedLinear``: several linear layers with one input as one matrix product. ``Transposed``: a
linear layer whose weight is transposed once, not per token. ``Rotation``: RoPE of q and k (and
v left still) as one elementwise kernel. ``JoinedCache``: a layer's keys and values in one buffer.
None of them changes the layers or caches it is made from.
"""

import copy
import itertools
import math

import mlx.core as mx
import mlx.nn as nn

from mlxllm.attention import KVCache
from mlxllm.embedding import RoPE


class JoinedLinear:
    """Linear layers with the same input run as one layer: ``joined(x)`` → their outputs, one each.

    The joined layer holds the layers' weights stacked by rows (output features), plain or
    quantized alike: a copy, so the layers are left as they are (the price: their memory twice).
    ``refresh`` joins them again when a layer's weights were replaced (training, a new dtype).
    """

    def __init__(self, layers: list[nn.Module]):
        self.layers, self.sources = layers, []
        self.rows = [layer["weight"].shape[0] for layer in layers]  # each layer's output features
        self.splits = list(itertools.accumulate(self.rows))[:-1]  # where the joined output is cut
        self.layer = copy.copy(layers[0])  # same kind and settings; refresh sets its arrays
        self.refresh()

    @staticmethod
    def joinable(layers: list[nn.Module]) -> bool:
        """Plain or quantized linear layers of one kind with the same settings (no LoRA)."""
        first = layers[0]
        return type(first) in (nn.Linear, nn.QuantizedLinear) and all(
            type(layer) is type(first) and vars(layer) == vars(first)
            and layer.keys() == first.keys() for layer in layers)

    def refresh(self) -> None:
        """Join the layers' current arrays, unless they are the ones joined last time."""
        sources = [layer[name] for layer in self.layers for name in self.layers[0]]
        if len(sources) == len(self.sources) and all(a is b for a, b in zip(sources, self.sources)):
            return
        self.sources = sources
        for name in self.layers[0]:  # weight, bias; a quantized layer's packed words and scales
            self.layer[name] = mx.concatenate([layer[name] for layer in self.layers])
        self.transposed = Transposed(self.layer)
        mx.eval(self.layer.parameters())

    def __call__(self, x: mx.array) -> list[mx.array]:
        y = self.transposed(x)  # (..., sum of the layers' rows)
        if y.shape[:-1] == (1,) and len(set(self.rows)) == 1:  # one token, equal parts (SwiGLU):
            # cut (parts, n) by rows, so each is a plain (1, n) row; a column slice keeps the row's
            # stride, which an elementwise kernel passes on and a matrix product then copies away
            return mx.split(y.reshape(len(self.rows), -1), len(self.rows))
        return mx.split(y, self.splits, axis=-1)


class Transposed:
    """``layer(x)`` with a plain linear layer's weight transposed once (a view, no copy): in a
    compiled stage the view is a constant, so no transpose is left in the graph."""

    def __init__(self, layer: nn.Module):
        self.layer = layer
        self.weight = layer["weight"] if type(layer) is nn.Linear else None  # the viewed array
        self.weight_t = None if self.weight is None else self.weight.T  # (in, out)
        if self.weight_t is not None:
            mx.eval(self.weight_t)

    @classmethod
    def of(cls, layer: nn.Module, kept: "Transposed | None" = None) -> "Transposed":
        """``kept`` while ``layer`` still holds the weight it was made from, else a new one."""
        if kept is not None and kept.layer is layer and (
                kept.weight is None or layer["weight"] is kept.weight):
            return kept
        return cls(layer)

    def __call__(self, x: mx.array) -> mx.array:
        if self.weight_t is None:
            return self.layer(x)
        if "bias" in self.layer:
            return mx.addmm(self.layer["bias"], x, self.weight_t)
        return x @ self.weight_t


class Rotation:
    """RoPE of one token's q, k and v heads (1, H + 2 H_kv, 1, D) as one elementwise operation.

    The first ``n_rotated`` heads (q and k) turn by ``position`` × base^(-2i/D) as ``RoPE`` (that is
    ``mx.fast.rope``) turns them; the rest (v) by angle 0. ``mx.compile`` makes it one kernel, and k
    and v leave it side by side, ready for one cache write.
    """

    def __init__(self, rope: RoPE, n_rotated: int, n_heads: int):
        self.half, self.traditional, self.n_heads = rope.head_dim // 2, rope.traditional, n_heads
        half, base = self.half, rope.base
        # base^(-2i/D) rounded to float32 as mx.fast.rope rounds it on each device (up to 16 ulps
        # apart; an angle, position × frequency, carries that error): the CPU's
        # exp(-i · ln(base) / (D/2)) in float32, the GPU kernels' exp2(-(i / (D/2)) · log2(base))
        steps = mx.arange(0, -half, -1, dtype=mx.float32, stream=mx.cpu)
        on_cpu = mx.exp(steps * mx.array(math.log(base) / half, mx.float32), stream=mx.cpu)
        exponent = -(mx.arange(half, dtype=mx.float32, stream=mx.cpu) / half) \
            * mx.array(math.log2(base), mx.float32)
        on_gpu = mx.array([2.0 ** e for e in exponent.tolist()], mx.float32)
        rotated = (mx.arange(n_heads) < n_rotated)[:, None]  # (heads, 1): the q and k heads
        self.frequencies = {}
        for device, frequency in ((mx.DeviceType.cpu, on_cpu), (mx.DeviceType.gpu, on_gpu)):
            angles = mx.where(rotated, frequency, 0.0)  # (heads, D/2); v heads stay still
            self.frequencies[device] = \
                angles[:, :, None] if self.traditional else angles[:, None, :]
        mx.eval(self.frequencies)

    def __call__(self, x: mx.array, position: mx.array) -> mx.array:
        half = self.half  # x (1, heads, 1, D)
        # each feature's partner in its pair: out = x cos θ + sign · partner sin θ
        if self.traditional:  # pairs (x0, x1), (x2, x3)…
            pairs, sign = x.reshape(self.n_heads, half, 2), mx.array([-1.0, 1.0])
            partner = pairs[..., ::-1]  # a view with a negative stride: no copy
        else:  # x[i] with x[i + D/2]
            pairs, sign = x.reshape(self.n_heads, 2, half), mx.array([[-1.0], [1.0]])
            partner = pairs[:, ::-1]
        theta = position.astype(mx.float32) * self.frequencies[mx.default_device().type]
        out = pairs * mx.cos(theta) + partner * (sign * mx.sin(theta))  # computed in float32
        return out.astype(x.dtype).reshape(x.shape)


class JoinedCache:
    """One layer's keys and values in one buffer (1, 2 H_kv, capacity, D): keys in the first H_kv
    heads, values after them. A step writes both with one copy and attention reads two views.

    Filled from the prefill's ``KVCache`` (a copy; that cache is left as it is), with room for
    ``capacity`` positions; when they are filled it grows by ``step`` positions, as ``KVCache``
    grows. On CUDA attention over it stays on the one-query kernel.
    """

    step = 256

    def __init__(self, cache: KVCache, capacity: int):
        keys, values, filled = cache.keys, cache.values, cache.offset
        self.n_kv_heads, self.offset = keys.shape[1], filled
        joined = mx.concatenate([keys[:, :, :filled], values[:, :, :filled]], axis=1)
        self.kv = mx.pad(joined, [(0, 0), (0, 0), (0, max(capacity - filled, 1)), (0, 0)])

    def update_and_fetch(self, kv: mx.array) -> tuple[mx.array, mx.array]:
        """Append one position's kv (1, 2 H_kv, 1, D); return keys and values so far,
        (1, H_kv, offset, D) each."""
        start = self.offset
        if start >= self.kv.shape[2]:  # full: grow by a chunk (every `step` tokens at most)
            self.kv = mx.pad(self.kv, [(0, 0), (0, 0), (0, self.step), (0, 0)])
        self.offset += 1
        self.kv[:, :, start : self.offset] = kv
        h = self.n_kv_heads
        return self.kv[:, :h, : self.offset], self.kv[:, h:, : self.offset]

"""Where a decode token's time goes: the operations one step queues, and the host time to queue
them, for the core's step and the engine's. Chapter 10 and ``benchmarks/bench_fast.py`` use it.
"""

import collections
import os
import tempfile
import time
from collections.abc import Callable

import mlx.core as mx

from mlxllm.fast.decode import DecodeEngine
from mlxllm.fast.layers import JoinedCache
from mlxllm.generation import make_request, make_sampler, next_token, prefill
from mlxllm.model import TransformerLM


def operations(*outputs: mx.array) -> collections.Counter:
    """The operations (MLX primitives, by name) the lazy graph of ``outputs`` still has to run.

    Arrays already evaluated are leaves and not counted; a compiled function's fused elementwise
    work is one ``Compiled…`` operation. Each operation is about one kernel launch on a GPU (a
    reshape or a slice may launch none).
    """
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "graph.dot")
        mx.export_to_dot(path, *outputs)
        with open(path) as dot:
            labels = [line.split('label ="', 1)[1].split('"', 1)[0] for line in dot
                      if 'label ="' in line]
    return collections.Counter(labels)


def decode_steps(model: TransformerLM, prompt: list[int]) -> dict[str, Callable[[], mx.array]]:
    """``{"core": step, "fast": step}``: each call builds (and does not evaluate) the graph of one
    greedy decode step after ``prompt``, the core's through its ``KVCache``, the engine's through
    its stages; the caches are filled and evaluated first, so a graph holds one token's work."""
    request = make_request(model, prompt, 2, make_sampler(temperature=0))
    key, cache = request.key, model.make_cache()
    token, _ = next_token(model, prefill(model, prompt, cache), cache, request, key)
    joined = [JoinedCache(layer_cache, model.config.context_length) for layer_cache in cache]
    mx.eval(token, [(c.keys, c.values) for c in cache], [c.kv for c in joined])
    engine_step = DecodeEngine(model).step(request)
    return {"core": lambda: next_token(model, token[None], cache, request, key)[0],
            "fast": lambda: engine_step(token, joined, key)[0]}


def host_microseconds(step: Callable[[], mx.array], repeats: int = 50) -> float:
    """Median host time of building one step's graph (µs), each built graph then evaluated."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - start)
        mx.eval(out)
    return 1e6 * sorted(times)[len(times) // 2]

"""The same model on MLX's GPU and CPU backends agrees within the tolerance policy (skipped without a GPU).

CI has no GPU; `scripts/gpu_check.sh` runs these on one (Metal on a Mac, CUDA on Linux).
"""

import mlx.core as mx
import pytest
from conftest import make_model, randomize

from mlxllm.generation import generate
from mlxllm.tolerances import FLOAT32, TF32, assert_close, bound, tf32_possible

HAS_GPU = mx.is_available(mx.gpu)
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="MLX has no GPU backend on this machine (CPU-only CI)")


def test_the_policy_names_tf32_only_for_gpus():
    assert not tf32_possible(mx.cpu)
    assert bound(mx.float32, mx.cpu) == FLOAT32 and bound(mx.bfloat16, mx.cpu) > FLOAT32
    if HAS_GPU:
        assert bound(mx.float32, mx.gpu) in (FLOAT32, TF32)


@needs_gpu
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_logits_on_the_gpu_equal_the_cpu_within_the_bound(family, dtype):
    model = randomize(make_model(family), seed=3)
    model.set_dtype(dtype)
    ids = mx.random.randint(0, 97, (2, 64), key=mx.random.key(7))
    with mx.stream(mx.cpu):
        on_cpu = model(ids)
        mx.eval(on_cpu)
    with mx.stream(mx.gpu):
        on_gpu = model(ids)
        mx.eval(on_gpu)
    assert_close(on_gpu, on_cpu, dtype=dtype, rtol=bound(dtype, mx.gpu), what=f"{family} GPU vs CPU logits")


@needs_gpu
def test_cached_decoding_on_the_gpu_equals_full_recomputation_within_the_bound():
    model = randomize(make_model("llama"), seed=4)
    ids = mx.random.randint(0, 97, (1, 40), key=mx.random.key(8))
    with mx.stream(mx.gpu):
        cache = model.make_cache()
        pieces = [model(ids[:, :30], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(30, 40)]
        cached, full = mx.concatenate(pieces, axis=1), model(ids)
        mx.eval(cached, full)
    assert_close(cached, full, rtol=bound(mx.float32, mx.gpu), what="cached vs full logits on the GPU")


@needs_gpu
def test_greedy_tokens_on_the_gpu_equal_the_cpu_where_the_margin_is_clear():
    model = randomize(make_model("gpt2"), seed=5)
    prompt = [1, 2, 3, 4, 5]
    with mx.stream(mx.cpu):
        cpu_tokens = list(generate(model, prompt, 8, temperature=0))
    with mx.stream(mx.gpu):
        gpu_tokens = list(generate(model, prompt, 8, temperature=0))
    # O(1) random weights give top-2 logit margins far above the TF32 rounding: the ids must agree exactly
    assert gpu_tokens == cpu_tokens


@needs_gpu
def test_generate_decodes_on_the_default_device_chosen_after_import():
    from mlxllm.fast import DecodeEngine
    from mlxllm.generation import generation_stream, make_sampler

    model = randomize(make_model("llama"), seed=3)
    assert generation_stream().device == mx.gpu
    old = mx.default_device()
    mx.set_default_device(mx.cpu)  # as `--device cpu` does, long after mlxllm was imported
    try:
        assert generation_stream().device == mx.cpu
        plain = list(generate(model, [1, 2, 3], 12, temperature=0))
        fast = list(DecodeEngine(model).generate([1, 2, 3], 12, sampler=make_sampler(temperature=0)))
    finally:
        mx.set_default_device(old)
    assert fast == plain and len(plain) == 12  # the CPU backend against itself: exact

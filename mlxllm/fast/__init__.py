"""The fast layer: speed that needs a second implementation, built from the core and tested equal
to it (Chapter 10). The core (``mlxllm.generate``) is what runs by default from Python; the CLI and
the benchmarks choose this layer.

    engine = DecodeEngine(model)            # reads the model's weights, never changes the model
    tokens = engine.generate(prompt_ids, 64, sampler=make_sampler(temperature=0))
"""

from mlxllm.fast.decode import DecodeEngine, unsupported

__all__ = ["DecodeEngine", "unsupported"]

"""mlxllm: a GPT/LLaMA-style language model built from scratch on MLX.

text ─tokenization─▶ ids ─embedding─▶ T×C ─N × transformer block─▶ T×C ─prediction─▶ T×V

Each module holds one stage of that pipeline; the book builds them chapter by chapter.
"""

__version__ = "0.1.0"

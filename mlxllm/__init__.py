"""mlxllm: a GPT/LLaMA-style language model built from scratch on MLX.

text ─tokenization─▶ ids ─embedding─▶ T×C ─N × transformer block─▶ T×C ─prediction─▶ T×V

Each module holds one stage of that pipeline; the book builds them chapter by chapter.
"""

__version__ = "0.1.0"

from mlxllm.attention import (KVCache, MultiHeadAttention, attention_reference, causal_mask,
                              kv_cache_bytes, scaled_dot_product_attention)
from mlxllm.block import MLP, SwiGLU, TransformerBlock, make_ffn, make_norm
from mlxllm.tokenizer import CharTokenizer
from mlxllm.embedding import LearnedPositions, RoPE, SinusoidalPositions, sinusoidal_table
from mlxllm.model import ModelConfig, TransformerLM
from mlxllm.generation import (SamplingConfig, generate, make_sampler, sample, sampling_logits,
                               stream_text)
from mlxllm.prediction import bits_per_byte, cross_entropy, probabilities
from mlxllm.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, Tokenizer
from mlxllm.config import TrainConfig
from mlxllm.training import Trainer, TrainingDiverged
from mlxllm.presets import PRESETS, Preset, prepare_run
from mlxllm.checkpoint import is_checkpoint, load_model
from mlxllm.pretrained import load_pretrained, save_pretrained

"""mlxllm: a GPT/LLaMA-style language model built from scratch on MLX.

text ─tokenization─▶ ids ─embedding─▶ T×C ─N × transformer block─▶ T×C ─prediction─▶ T×V

Each module holds one stage of that pipeline; the book builds them chapter by chapter.
"""

__version__ = "0.1.0"

from mlxllm.attention import KVCache, MultiHeadAttention, attention_reference, causal_mask, kv_cache_bytes, scaled_dot_product_attention
from mlxllm.block import MLP, SwiGLU, TransformerBlock, make_ffn, make_norm
from mlxllm.char_tokenizer import CharTokenizer
from mlxllm.embedding import LearnedPositions, RoPE, SinusoidalPositions, sinusoidal_table
from mlxllm.model import ModelConfig, TransformerLM
from mlxllm.prediction import bits_per_byte, cross_entropy, generate, probabilities, sample, sampling_logits, stream_text
from mlxllm.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, Tokenizer
from mlxllm.training import PRESETS, Preset, TrainConfig, Trainer, TrainingDiverged, load_model
from mlxllm.weights import load_pretrained, save_pretrained

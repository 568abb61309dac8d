"""Part 7 — Pretrained weights: Hugging Face checkpoints in and out of ``TransformerLM``.

A checkpoint folder holds ``config.json`` (the architecture), ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``) and the tokenizer files. Loading is three small steps, each a
function the chapter shows: config.json → ``ModelConfig``, checkpoint keys → our parameter names
(renames, GPT-2's transposes and q/k/v split), tokenizer files → ``Tokenizer``.

Supported: GPT-2 (``model_type: gpt2``) and LLaMA-shaped models (``llama``, ``mistral``, ``qwen2``).
"""

import json
import re
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlxllm.block import swiglu_hidden_dims
from mlxllm.model import ModelConfig, TransformerLM
from mlxllm.tokenizer import GPT2_SPLIT_PATTERN, Tokenizer
from mlxllm.tokenizer.files import gpt2_byte_to_unicode

LLAMA_TYPES = ("llama", "mistral", "qwen2")
MODEL_TYPES = ("gpt2",) + LLAMA_TYPES
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "vocab.json", "merges.txt"]

# Checkpoint name → our name, matched as a prefix ({i} is the layer number). One table per family; saving
# uses the same tables backwards. GPT-2's fused attn.c_attn (q, k, v side by side) is split separately.
GPT2_NAMES = {
    "wte": "token_embedding",
    "wpe": "position_embedding",
    "h.{i}.ln_1": "blocks.{i}.attention_norm",
    "h.{i}.attn.c_proj": "blocks.{i}.attention.o_proj",
    "h.{i}.ln_2": "blocks.{i}.ffn_norm",
    "h.{i}.mlp.c_fc": "blocks.{i}.ffn.up_proj",
    "h.{i}.mlp.c_proj": "blocks.{i}.ffn.down_proj",
    "ln_f": "norm",
    "lm_head": "head",
}
LLAMA_NAMES = {
    "model.embed_tokens": "token_embedding",
    "model.layers.{i}.input_layernorm": "blocks.{i}.attention_norm",
    "model.layers.{i}.self_attn": "blocks.{i}.attention",  # q_proj, k_proj, v_proj, o_proj: same names
    "model.layers.{i}.post_attention_layernorm": "blocks.{i}.ffn_norm",
    "model.layers.{i}.mlp": "blocks.{i}.ffn",  # gate_proj, up_proj, down_proj: same names
    "model.norm": "norm",
    "lm_head": "head",
}
# GPT-2 stores its linear layers as Conv1D, weight (in, out): the transpose of nn.Linear's (out, in).
GPT2_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")


def config_from_hf(hf: dict) -> ModelConfig:
    """Our ``ModelConfig`` for a Hugging Face config.json; unsupported options → ValueError naming them.

    Built in Chapter 7, Pretrained weights.
    """
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r}: load_pretrained handles {MODEL_TYPES}")
    if model_type == "gpt2":
        activation = hf.get("activation_function", "gelu_new")
        if activation not in GPT2_ACTIVATIONS:
            raise ValueError(f"unsupported GPT-2 activation_function {activation!r}; known: {tuple(GPT2_ACTIVATIONS)}")
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
            raise ValueError("unsupported GPT-2 attention scaling (scale_attn_weights=False or "
                             "scale_attn_by_inverse_layer_idx=True); only 1/sqrt(head_dim) is implemented")
        dims = hf["n_embd"]
        return ModelConfig.gpt2(
            vocab_size=hf["vocab_size"], context_length=hf.get("n_positions", hf.get("n_ctx", 1024)), dims=dims,
            n_layers=hf["n_layer"], n_heads=hf["n_head"], ffn_dims=hf.get("n_inner") or 4 * dims,
            activation=GPT2_ACTIVATIONS[activation], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    # LLaMA family; transformers 5 moved rope_theta / rope_scaling into one rope_parameters dict
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"unsupported RoPE scaling {rope_type!r} in config.json; only plain RoPE is implemented")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}: LLaMA-style models use SwiGLU with 'silu'")
    dims, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dims // n_heads):
        raise ValueError(f"unsupported head_dim={hf['head_dim']}: our attention uses hidden_size / "
                         f"num_attention_heads = {dims // n_heads}")
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise ValueError(f"unsupported attention_bias={attention_bias} with mlp_bias={mlp_bias}: "
                         "our blocks put biases on all projections or none")
    if hf.get("use_sliding_window", False):
        raise ValueError("unsupported use_sliding_window=True (sliding-window attention is not implemented)")
    context_length = hf.get("max_position_embeddings", 2048)
    if model_type == "mistral" and hf.get("sliding_window"):
        context_length = min(context_length, hf["sliding_window"])  # within the window it is plain attention
    return ModelConfig.llama(
        vocab_size=hf["vocab_size"], context_length=context_length, dims=dims, n_layers=hf["num_hidden_layers"],
        n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads, ffn_dims=hf["intermediate_size"],
        bias=attention_bias, qkv_bias=model_type == "qwen2", tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm_eps=hf.get("rms_norm_eps", 1e-6),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """The config.json fields for our config; ValueError if no supported family expresses it exactly."""
    c = config
    ffn_dims = c.ffn_dims or (swiglu_hidden_dims(c.dims) if c.activation == "swiglu" else 4 * c.dims)
    if c.position == "learned":
        activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}.get(c.activation, c.activation)
        hf = dict(model_type="gpt2", vocab_size=c.vocab_size, n_positions=c.context_length, n_ctx=c.context_length,
                  n_embd=c.dims, n_layer=c.n_layers, n_head=c.n_heads, n_inner=ffn_dims,
                  activation_function=activation, layer_norm_epsilon=c.norm_eps, tie_word_embeddings=c.tie_embeddings)
    else:
        hf = dict(model_type="qwen2" if c.qkv_bias and not c.bias else "llama", vocab_size=c.vocab_size,
                  max_position_embeddings=c.context_length, hidden_size=c.dims, num_hidden_layers=c.n_layers,
                  num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, intermediate_size=ffn_dims,
                  hidden_act="silu", attention_bias=c.bias, mlp_bias=c.bias, rms_norm_eps=c.norm_eps,
                  rope_theta=c.rope_theta, rope_scaling=None, tie_word_embeddings=c.tie_embeddings)
    # the check: reading the fields back must give the same model (dropout only matters in training)
    try:
        back = config_from_hf(hf).to_dict()
    except ValueError as error:
        raise ValueError(f"this model has no Hugging Face equivalent: {error}") from None
    ours = {**c.to_dict(), "ffn_dims": ffn_dims, "dropout": 0.0}
    if differ := [f"{key}={ours[key]!r} (a {hf['model_type']} config gives {back[key]!r})" for key in ours if ours[key] != back[key]]:
        raise ValueError(f"this model has no Hugging Face equivalent: {', '.join(differ)}")
    return {"architectures": [ARCHITECTURES[hf["model_type"]]], **hf}


def _rename(key: str, names: dict[str, str]) -> str | None:
    """Rename ``key`` by the first table entry that is a prefix of it; None when none is."""
    for source, target in names.items():
        pattern = re.escape(source).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"(?P<rest>\..+)"
        if match := re.fullmatch(pattern, key):
            layer = match.groupdict().get("i")
            return (target.replace("{i}", layer) if layer else target) + match["rest"]
    return None


def weights_from_hf(weights: dict[str, mx.array], config: ModelConfig) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Checkpoint tensors → our parameter names: (weights, our name → checkpoint key). Built in Chapter 7.

    Buffers that are not parameters (GPT-2's attn.bias mask, rotary inv_freq) and a tied head's copy of
    the embedding are dropped; keys no rule knows are kept under their own name, so they get reported.
    """
    gpt2 = config.position == "learned"
    out, source = {}, {}
    for key, value in weights.items():
        name = key.removeprefix("transformer.") if gpt2 else key  # GPT2LMHeadModel vs GPT2Model keys
        if name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the head *is* the embedding matrix
        if gpt2 and GPT2_CONV1D.fullmatch(name):
            value = value.T  # Conv1D (in, out) → Linear (out, in)
        if gpt2 and re.fullmatch(r"h\.\d+\.attn\.c_attn\.(weight|bias)", name):
            fused = (3 * config.dims, config.dims) if name.endswith("weight") else (3 * config.dims,)
            if value.shape != fused:
                raise ValueError(f"checkpoint key {key!r} has shape {tuple(value.shape)} (after the Conv1D transpose), "
                                 f"but config.json implies {fused}: q, k and v of n_embd={config.dims} each")
            prefix, leaf = name.split(".attn.c_attn.")
            for part, tensor in zip("qkv", mx.split(value, 3, axis=0)):  # rows: [q; k; v]
                ours = f"blocks.{prefix[2:]}.attention.{part}_proj.{leaf}"
                out[ours], source[ours] = tensor, key
            continue
        ours = _rename(name, GPT2_NAMES if gpt2 else LLAMA_NAMES) or key
        out[ours], source[ours] = value, key
    return out, source


def weights_to_hf(params: dict[str, mx.array], config: ModelConfig) -> dict[str, mx.array]:
    """Our flat parameters → checkpoint keys and layouts (the inverse of ``weights_from_hf``)."""
    gpt2 = config.position == "learned"
    names = {ours: theirs for theirs, ours in (GPT2_NAMES if gpt2 else LLAMA_NAMES).items()}
    out = {}
    for name, value in params.items():
        if gpt2 and (match := re.fullmatch(r"blocks\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", name)):
            if match[2] == "q":  # fuse q, k, v back into c_attn, then store it as Conv1D
                layer, leaf = match[1], match[3]
                parts = [params[f"blocks.{layer}.attention.{p}_proj.{leaf}"] for p in "qkv"]
                fused = mx.concatenate(parts, axis=0)
                out[f"h.{layer}.attn.c_attn.{leaf}"] = fused.T if leaf == "weight" else fused
            continue
        key = _rename(name, names)
        out[key] = value.T if gpt2 and GPT2_CONV1D.fullmatch(key) else value
    return out


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards of model.safetensors.index.json, or model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if missing := [name for name in shards if not (folder / name).exists()]:
            raise FileNotFoundError(f"{index} lists shard(s) {missing} that are not in {folder}; download them too")
        return [folder / name for name in shards]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    if list(folder.glob("*.bin")) or list(folder.glob("*.pth")):
        raise ValueError(f"{folder} holds PyTorch pickles (.bin/.pth); only .safetensors checkpoints are supported")
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def read_weights(files: list[Path]) -> dict[str, mx.array]:
    """Every tensor of the given safetensors files; a damaged file raises ValueError naming it."""
    weights = {}
    for path in files:
        try:
            tensors = mx.load(str(path))  # checks the header and every tensor's extent against the file size
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"cannot read {path}: {error} — the file is damaged or incomplete; download it again") from None
        if twice := sorted(set(tensors) & set(weights)):
            raise ValueError(f"tensor(s) {twice[:5]} appear in more than one shard (second: {path})")
        weights.update(tensors)
    return weights


def _check_keys(model: TransformerLM, weights: dict[str, mx.array], source: dict[str, str]) -> None:
    """ValueError unless the checkpoint has exactly our parameters, each with our shape."""
    expected = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}
    if missing := sorted(set(expected) - set(weights)):
        raise ValueError(f"the checkpoint is missing {len(missing)} parameter(s) the config needs: {missing[:10]}")
    if unexpected := sorted(source[name] for name in set(weights) - set(expected)):
        raise ValueError(f"the checkpoint has {len(unexpected)} key(s) this model does not use: {unexpected[:10]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"checkpoint key {source[name]!r} has shape {tuple(weights[name].shape)}, but our "
                             f"{name} built from config.json has shape {shape}")


def checkpoint_folder(path_or_repo_id: str | Path) -> Path:
    """A local folder as is; an 'owner/name' Hub repo id downloaded (once, cached) with huggingface_hub."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; pass the folder that holds config.json")
    repo_id = str(path_or_repo_id)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise FileNotFoundError(f"{repo_id!r} is neither a local folder nor a Hugging Face Hub repo id ('owner/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{repo_id!r} is not a local folder; to download it from the Hugging Face Hub install "
                          "huggingface_hub (pip install 'mlxllm[hub]')") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown repo, gated repo...: one clear message, original chained
        raise OSError(f"could not download {repo_id!r} from the Hugging Face Hub ({type(error).__name__}: {error}); "
                      "check the repo id and the network connection, or pass a local folder") from error


def _dtype(dtype: mx.Dtype | str | None) -> mx.Dtype | None:
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be None (keep the checkpoint's), an mx.Dtype or one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_pretrained(path_or_repo_id: str | Path, dtype: mx.Dtype | str | None = None) -> tuple[TransformerLM, Tokenizer]:
    """(TransformerLM, Tokenizer) from a Hugging Face checkpoint folder or Hub repo id. Built in Chapter 7.

    ``dtype=None`` keeps the stored dtype (bfloat16 for most recent models); ``"float32"`` upcasts.
    """
    folder = checkpoint_folder(path_or_repo_id)
    return model_from_hf(folder, dtype), tokenizer_from_hf(folder)


def model_from_hf(folder: str | Path, dtype: mx.Dtype | str | None = None) -> TransformerLM:
    """The model alone from a local checkpoint folder (``load_pretrained`` without the tokenizer)."""
    dtype, folder = _dtype(dtype), Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {folder}: not a Hugging Face checkpoint folder")
    config = config_from_hf(json.loads((folder / "config.json").read_text()))
    weights, source = weights_from_hf(read_weights(checkpoint_files(folder)), config)
    model = TransformerLM(config)  # its random init is lazy and never computed: every parameter is replaced
    _check_keys(model, weights, source)
    # row-major copies: GPT-2's transposed, split views would otherwise reach the matmuls as strided arrays
    weights = {name: mx.contiguous(value if dtype is None else value.astype(dtype)) for name, value in weights.items()}
    model.update(tree_unflatten(list(weights.items())))
    mx.eval(model.parameters())
    return model.eval()


def save_pretrained(model: TransformerLM, tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder that load_pretrained, mlx-lm and
    transformers open: config.json, model.safetensors, tokenizer files. Built in Chapter 7."""
    hf = config_to_hf(model.config)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has ids up to {tokenizer.vocab_size - 1}, but the model's vocab_size is "
                         f"{model.config.vocab_size}: is this the tokenizer the model was trained with?")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = weights_to_hf(dict(tree_flatten(model.parameters())), model.config)
    hf["torch_dtype"] = str(next(iter(weights.values())).dtype).removeprefix("mlx.core.")
    hf.update(special_token_ids(tokenizer))
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    save_tokenizer(tokenizer, folder, model.config.context_length)
    return folder


# ---------------------------------------------------------------------------- tokenizer files

# SmolLM's pre-tokenizer (Digits(individual_digits=True), then GPT-2's regex) as one split pattern:
# every digit is a chunk of its own, and a whitespace run before a digit stays whole (the digit ends it).
GPT2_DIGITS_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""


def _split_pattern(pre_tokenizer: dict | None) -> str:
    """The split regex equivalent to a byte-level tokenizer.json pre-tokenizer; ValueError for others."""
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer and pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer or {}]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_SPLIT_PATTERN
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return GPT2_DIGITS_SPLIT_PATTERN
    if (kinds == ["Split", "ByteLevel"] and "Regex" in steps[0]["pattern"] and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and not steps[1].get("use_regex", True)):
        return steps[0]["pattern"]["Regex"]
    if "Metaspace" in kinds:
        raise ValueError("this is a SentencePiece-style tokenizer (Metaspace pre-tokenizer); only byte-level BPE "
                         "tokenizers (GPT-2, SmolLM, Qwen2 style) are supported")
    raise ValueError(f"unsupported tokenizer.json pre-tokenizer {kinds}: expected ByteLevel, "
                     "[Digits, ByteLevel] or [Split(regex), ByteLevel]")


def tokenizer_from_json(path: str | Path) -> Tokenizer:
    """Our ``Tokenizer`` from a byte-level BPE tokenizer.json (GPT-2, SmolLM, Qwen2 style). Built in Chapter 7.

    The vocab and merges are written with GPT-2's byte → printable character map; added tokens become
    special tokens. Normalizers and SentencePiece-style tokenizers are refused with ValueError.
    """
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: tokenizer model {model.get('type')!r} is not supported (only byte-level BPE; "
                         "SentencePiece Unigram and WordPiece tokenizers are not)")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError(f"{path}: a SentencePiece-style BPE (byte_fallback / subword prefixes) is not supported; "
                         "only byte-level BPE tokenizers (GPT-2, SmolLM, Qwen2 style) are")
    if spec.get("normalizer"):
        raise ValueError(f"{path}: the tokenizer normalizes text first ({spec['normalizer'].get('type')}), "
                         "which our Tokenizer does not do")
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    special_tokens = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
    byte_to_char = gpt2_byte_to_unicode()
    encoder = {token: i for token, i in model["vocab"].items() if token not in special_tokens}
    try:
        byte_ids = [encoder[byte_to_char[b]] for b in range(256)]
        merges = []
        for merge in model["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            merges.append((encoder[left], encoder[right], encoder[left + right]))
    except KeyError as error:
        raise ValueError(f"{path}: token {error.args[0]!r} is missing from the vocab; not a byte-level BPE") from None
    made = set(byte_ids) | {new for _, _, new in merges}
    if orphans := [token for token, i in encoder.items() if i not in made]:
        raise ValueError(f"{path}: {len(orphans)} vocab token(s) are neither a byte nor made by a merge, e.g. {orphans[:3]}")
    return Tokenizer(merges, pattern=pattern, special_tokens=special_tokens, byte_ids=byte_ids)


def tokenizer_to_json(tokenizer: Tokenizer) -> dict:
    """The tokenizer.json of a Tokenizer (the inverse of ``tokenizer_from_json``)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if tokenizer.pattern == GPT2_SPLIT_PATTERN:
        pre_tokenizer = byte_level
    elif tokenizer.pattern == GPT2_DIGITS_SPLIT_PATTERN:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    else:
        split = {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}
    byte_to_char = gpt2_byte_to_unicode()
    specials = tokenizer.special_tokens
    as_text = {i: "".join(byte_to_char[b] for b in token) for i, token in tokenizer.vocab.items() if i not in specials.values()}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for token, i in specials.items()],
        "normalizer": None, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {text: i for i, text in sorted(as_text.items())},
                  "merges": [[as_text[a], as_text[b]] for a, b, _ in tokenizer.merge_ids]},
    }


def tokenizer_from_hf(folder: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder: tokenizer.json, else GPT-2's vocab.json + merges.txt."""
    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        return tokenizer_from_json(folder / "tokenizer.json")
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return Tokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    raise FileNotFoundError(f"no tokenizer in {folder}: expected tokenizer.json, or vocab.json + merges.txt")


def special_token_ids(tokenizer: Tokenizer) -> dict:
    """config.json's bos/eos token ids: GPT-2's convention, ``<|endoftext|>`` for both, when present."""
    end = tokenizer.special_tokens.get("<|endoftext|>")
    return {} if end is None else {"bos_token_id": end, "eos_token_id": end}


def save_tokenizer(tokenizer: Tokenizer, folder: str | Path, context_length: int) -> None:
    """tokenizer.json plus the tokenizer_config.json that lets transformers' AutoTokenizer open it."""
    folder = Path(folder)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_to_json(tokenizer), ensure_ascii=False) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
              "clean_up_tokenization_spaces": False}
    if "<|endoftext|>" in tokenizer.special_tokens:
        config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

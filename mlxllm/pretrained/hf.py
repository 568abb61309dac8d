"""Hugging Face checkpoint folders in and out of ``TransformerLM``: config.json, safetensors,
tokenizer.

Loading is three small steps, each a function the chapter shows: config.json → ``ModelConfig``
(the family's entry in ``families.py``), checkpoint tensors → our names (the family's ``sanitize``
and name table), and the checked tensors into a fresh model (``build_model``, shared with GGUF).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlxllm.config import ModelConfig
from mlxllm.files import replace_file
from mlxllm.model import QUANTIZED, TransformerLM, check_block_names
from mlxllm.pretrained.families import FAMILIES, family_for_model_type, rename

# config.json's torch_dtype names (also load_pretrained's dtype=) → MLX dtypes
TORCH_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json",
             "chat_template.jinja"]
INDEX = "model.safetensors.index.json"


def config_from_hf(hf: dict) -> ModelConfig:
    """Our ``ModelConfig`` for a Hugging Face config.json; unsupported options → ValueError naming
    them.

    Built in Chapter 7, Pretrained weights.
    """
    return family_for_model_type(hf.get("model_type")).config_from_hf(hf)


def config_to_hf(config: ModelConfig) -> dict:
    """The config.json fields for our config; ValueError if its family cannot express it exactly."""
    if config.family not in FAMILIES:
        raise ValueError(f"this model has no Hugging Face equivalent: family={config.family!r}")
    hf = FAMILIES[config.family].config_to_hf(config)
    # the check: reading the fields back must give the same model (dropout only matters in training)
    try:
        back = config_from_hf(hf).to_dict()
    except ValueError as error:
        raise ValueError(f"this model has no Hugging Face equivalent: {error}") from None
    ours = {**config.to_dict(), "dropout": 0.0}
    if differ := [f"{key}={ours[key]!r} (a {hf['model_type']} config gives {back[key]!r})"
                  for key in ours if ours[key] != back[key]]:
        raise ValueError(f"this model has no Hugging Face equivalent: {', '.join(differ)}")
    return {"architectures": [FAMILIES[config.family].model_types[hf["model_type"]]], **hf}


def weights_from_hf(weights: dict[str, mx.array],
                    config: ModelConfig) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Checkpoint tensors → our parameter names: (weights, our name → checkpoint key).

    Built in Chapter 7. The family's sanitize drops buffers and fixes layouts; a tied head's copy of
    the embedding is dropped; keys no rule knows are kept under their own name, so they get
    reported.
    """
    family = FAMILIES[config.family]
    out, source = {}, {}
    for key, value in family.sanitize(weights, config).items():
        if key.startswith("lm_head.") and config.tie_embeddings:
            continue  # the head *is* the embedding matrix
        ours = rename(key, family.names) or key
        out[ours], source[ours] = value, family.origin(key, weights)
    return out, source


def weights_to_hf(params: dict[str, mx.array], config: ModelConfig) -> dict[str, mx.array]:
    """Our flat parameters → checkpoint keys and layouts (the inverse of ``weights_from_hf``)."""
    family = FAMILIES[config.family]
    names = {ours: theirs for theirs, ours in family.names.items()}
    return family.unsanitize({rename(name, names): value for name, value in params.items()}, config)


def read_config(folder: Path) -> ModelConfig:
    """config.json → ModelConfig; not JSON, or a key the family needs missing → one ValueError
    naming the file."""
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {folder}: not a Hugging Face checkpoint folder")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); download or write it "
                         "again") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path} holds a JSON {type(hf).__name__}, not the object of a model "
                         "config")
    try:
        return config_from_hf(hf)
    except KeyError as error:
        raise ValueError(f"{path} lacks the key {error.args[0]!r} that a "
                         f"{hf.get('model_type')} config needs") from None
    except TypeError as error:
        raise ValueError(f"{path} has a value of the wrong type ({error})") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards of model.safetensors.index.json, or
    model.safetensors.

    Shard names must stay inside the folder and end in .safetensors (an index is data, not a path to
    trust).
    """
    index = folder / INDEX
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is not a safetensors index with a weight_map "
                             f"({error!r})") from None
        for name in shards:
            if (not isinstance(name, str) or not name.endswith(".safetensors")
                    or Path(name).name != name):
                raise ValueError(f"{index} lists the shard {name!r}: shards must be .safetensors "
                                 "files in the folder itself (no directories, no '..', no absolute "
                                 "paths)")
        if missing := [name for name in shards if not (folder / name).exists()]:
            raise FileNotFoundError(f"{index} lists shard(s) {missing} that are not in {folder}; "
                                    "download them too")
        return [folder / name for name in shards]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    if list(folder.glob("*.bin")) or list(folder.glob("*.pth")):
        raise ValueError(f"{folder} holds PyTorch pickles (.bin/.pth); only .safetensors "
                         "checkpoints are supported")
    raise FileNotFoundError(f"no model.safetensors or {INDEX} in {folder}")


def read_weights(files: list[Path]) -> dict[str, mx.array]:
    """Every tensor of the given safetensors files; a damaged file raises ValueError naming it."""
    weights = {}
    for path in files:
        try:
            # checks the header and every tensor's extent
            tensors = mx.load(str(path), format="safetensors")
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"cannot read {path}: {error} — the file is damaged or incomplete; "
                             "download it again") from None
        if twice := sorted(set(tensors) & set(weights)):
            raise ValueError(f"tensor(s) {twice[:5]} appear in more than one shard "
                             f"(second: {path})")
        weights.update(tensors)
    return weights


def _quantized_layouts(model: TransformerLM, weights: dict[str, mx.array],
                       source: dict[str, str]) -> dict[str, dict]:
    """{layer path: {group_size, bits}} for each layer stored quantized (uint32 weight + scales +
    biases).

    The layout is read off the shapes: (out, in·bits/32) packed weight, (out, in/group_size) scales.
    """
    expected = dict(tree_flatten(model.parameters()))
    layouts = {}
    for name in [n for n in weights if n.endswith(".scales")]:
        layer = name.removesuffix(".scales")
        weight, scales, biases = (weights.get(f"{layer}.{leaf}")
                                  for leaf in ("weight", "scales", "biases"))
        reference = expected.get(f"{layer}.weight")
        key = source.get(f"{layer}.weight", f"{layer}.weight")
        if weight is None or biases is None or reference is None or weight.dtype != mx.uint32:
            raise ValueError(f"{source.get(name, name)!r} belongs to no quantized layer this model "
                             "has: a quantized layer is a uint32 weight with float scales and "
                             "biases")
        (out, width), groups = reference.shape, scales.shape[-1]
        bits, group_size = weight.shape[-1] * 32 // width, width // max(groups, 1)
        if (bits not in (2, 3, 4, 5, 6, 8) or weight.shape != (out, width * bits // 32)
                or group_size * groups != width or group_size not in (32, 64, 128)
                or scales.shape != biases.shape or scales.shape != (out, groups)):
            raise ValueError(f"quantized tensor {key!r} of shape {tuple(weight.shape)} with scales "
                             f"{tuple(scales.shape)} fits no affine layout of our {layer} "
                             f"{tuple(reference.shape)}")
        layouts[layer] = {"group_size": group_size, "bits": bits}
    return layouts


def build_model(config: ModelConfig, weights: dict[str, mx.array], source: dict[str, str],
                dtype: mx.Dtype | None = None,
                where: str | Path = "the checkpoint") -> TransformerLM:
    """A ``TransformerLM`` holding exactly ``weights`` (our names), checked first.

    Built in Chapter 7. Quantized layers stay quantized (nn.quantize with each layer's own group
    size and bits) unless ``dtype`` is given: then they are dequantized and every tensor is cast to
    ``dtype``.
    """
    # first, cheaply: the checkpoint's blocks are the config's (a damaged config could ask for a
    # million of them); the model's random init is lazy and never computed: every parameter is
    # replaced
    check_block_names(config, weights, str(where))
    model = TransformerLM(config)
    layouts = _quantized_layouts(model, weights, source)
    for name, value in weights.items():
        stored = name.rsplit(".", 1)[0] in layouts and name.endswith(".weight")
        if not (mx.issubdtype(value.dtype, mx.floating) or stored):
            raise ValueError(f"checkpoint tensor {source.get(name, name)!r} has dtype "
                             f"{value.dtype}: weights must be floating point, or uint32 packed "
                             "with scales and biases (quantized)")
    if dtype is not None and layouts:
        for layer, layout in layouts.items():
            w, s, b = (weights.pop(f"{layer}.{leaf}") for leaf in ("weight", "scales", "biases"))
            # in float32: scale·q + bias rounded once, as llama.cpp's dequantizer does (float16
            # would round twice)
            weights[f"{layer}.weight"] = mx.dequantize(w, s.astype(mx.float32),
                                                       b.astype(mx.float32), **layout)
        layouts = {}
    if layouts:
        nn.quantize(model, class_predicate=lambda path, module:
                    dict(layouts[path]) if path in layouts else False)
    _check_keys(model, weights, source)
    # scales and biases in float32 (see above); row-major copies: no strided views reach the matmuls
    def cast(name: str, v: mx.array) -> mx.array:
        target = mx.float32 if dtype is None and name.endswith((".scales", ".biases")) else dtype
        return v if v.dtype == mx.uint32 or target is None else v.astype(target)

    model.update(tree_unflatten([(name, mx.contiguous(cast(name, value)))
                                 for name, value in weights.items()]))
    mx.eval(model.parameters())
    return model.eval()


def _check_keys(model: TransformerLM, weights: dict[str, mx.array], source: dict[str, str]) -> None:
    """ValueError unless the checkpoint has exactly our parameters, each with our shape."""
    expected = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}
    if missing := sorted(set(expected) - set(weights)):
        raise ValueError(f"the checkpoint is missing {len(missing)} parameter(s) the config needs: "
                         f"{missing[:10]}")
    if unexpected := sorted(source.get(name, name) for name in set(weights) - set(expected)):
        raise ValueError(f"the checkpoint has {len(unexpected)} key(s) this model does not use: "
                         f"{unexpected[:10]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"checkpoint key {source.get(name, name)!r} has shape "
                             f"{tuple(weights[name].shape)}, but our {name} built from the config "
                             f"has shape {shape}")


def checkpoint_folder(path_or_repo_id: str | Path) -> Path:
    """A local folder as is; an 'owner/name' Hub repo id downloaded (once, cached) with
    huggingface_hub."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    repo_id = str(path_or_repo_id)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or path.exists():
        raise ValueError(f"{repo_id!r} is neither a model folder, a .gguf file nor a Hugging Face "
                         "Hub repo id ('owner/name'); pass one of those")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{repo_id!r} is not a local folder; to download it from the Hugging "
                          "Face Hub install huggingface_hub (pip install 'mlxllm[hub]')") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as error:
        # offline, unknown repo, gated repo...: one clear message, original chained
        raise OSError(f"could not download {repo_id!r} from the Hugging Face Hub "
                      f"({type(error).__name__}: {error}); check the repo id and the network "
                      "connection, or pass a local folder") from error


def dtype_of(dtype: mx.Dtype | str | None) -> mx.Dtype | None:
    """None, an mx.Dtype, or its name ("float32", "float16", "bfloat16") → None or an mx.Dtype."""
    if dtype is None or dtype in TORCH_DTYPES.values():
        return dtype
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be None (keep the checkpoint's), one of "
                         f"{tuple(TORCH_DTYPES)} or the mx.Dtype, got {dtype!r}")
    return TORCH_DTYPES[dtype]


def model_from_hf(folder: str | Path, dtype: mx.Dtype | str | None = None) -> TransformerLM:
    """The model alone from a local checkpoint folder (``load_pretrained`` without the
    tokenizer)."""
    dtype, folder = dtype_of(dtype), Path(folder)
    config = read_config(folder)
    untied = dataclasses.replace(config, tie_embeddings=False)  # every tensor, lm_head included
    weights, source = weights_from_hf(read_weights(checkpoint_files(folder)), untied)
    config = tie_as_transformers(config, weights, source, folder)
    return build_model(config, weights, source, dtype, folder)


def tie_as_transformers(config: ModelConfig, weights: dict[str, mx.array], source: dict[str, str],
                        where: str | Path) -> ModelConfig:
    """A tied config read as transformers reads it (``PreTrainedModel.tie_weights``): an lm_head
    equal to the embedding is the tied head itself (dropped), a distinct one is kept and the model
    untied, with a warning; a lone lm_head stands in for the missing embedding. Chapter 7."""
    head = sorted(name for name in weights if name.startswith("head."))
    if not (config.tie_embeddings and head):
        return config
    pairs = {name: f"token_embedding.{name.removeprefix('head.')}" for name in head}
    if not any(embedding in weights for embedding in pairs.values()):  # only the head was stored
        for name, embedding in pairs.items():
            weights[embedding], source[embedding] = weights.pop(name), source.pop(name)
    elif all(embedding in weights and weights[name].shape == weights[embedding].shape
             and mx.array_equal(weights[name], weights[embedding]).item()
             for name, embedding in pairs.items()):
        for name in head:  # a copy of the embedding
            del weights[name], source[name]
    else:
        warnings.warn(f"{where}: config.json says tie_word_embeddings=true but the weights hold an "
                      "lm_head.weight that differs from the embedding; it is kept untied, as "
                      "transformers does", stacklevel=3)
        return dataclasses.replace(config, tie_embeddings=False)
    return config


def _quantization(model: TransformerLM) -> dict | None:
    """config.json's "quantization" entry (mlx-lm's convention) for a quantized model, else None."""
    layouts = {(m.group_size, m.bits) for _, m in model.named_modules() if isinstance(m, QUANTIZED)}
    if not layouts:
        return None
    if len(layouts) > 1 or model.config.family != "llama":
        raise ValueError("only a LLaMA-family model quantized with one group size and bits can be "
                         "saved quantized; load it with dtype='float32' (dequantized) to save it")
    (group_size, bits), = layouts
    return {"group_size": group_size, "bits": bits}


def write_hf_folder(model: TransformerLM, tokenizer, path: str | Path) -> Path:
    """Write config.json, model.safetensors and the tokenizer files into ``path``, replacing an
    older checkpoint there (its index and shards are removed, so nothing stale is read back). Built
    in Chapter 7."""
    from mlxllm.tokenizer.hf import save_hf_tokenizer, special_token_ids

    # refuses a model no family expresses before anything is written
    hf = config_to_hf(model.config)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has ids up to {tokenizer.vocab_size - 1}, but the model's "
                         f"vocab_size is {model.config.vocab_size}: is this the tokenizer the "
                         "model was trained with?")
    quantization = _quantization(model)  # may refuse: before anything is written
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = weights_to_hf(dict(tree_flatten(model.parameters())), model.config)
    stored = next(v.dtype for k, v in weights.items()  # not a packed 4-bit word, not a group scale
                  if mx.issubdtype(v.dtype, mx.floating) and not k.endswith((".scales", ".biases")))
    hf["torch_dtype"] = str(stored).removeprefix("mlx.core.")
    if quantization:  # mlx-lm quantizes exactly the layers that have .scales
        hf["quantization"] = quantization
    hf.update(special_token_ids(tokenizer))
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:  # everything is written aside first; a failure leaves the old folder as it was
        (staging / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "pt"})
        save_hf_tokenizer(tokenizer, staging, model.config.context_length)
        stale = [folder / INDEX]
        if (folder / INDEX).exists():
            try:
                stale += checkpoint_files(folder)
            except (ValueError, FileNotFoundError):
                # a damaged index: remove it; shards it names outside the folder are never touched
                pass
        # first: without it, model.safetensors is what loads
        (folder / INDEX).unlink(missing_ok=True)
        for new in staging.iterdir():
            replace_file(new, folder / new.name)
        for old in stale:
            if old.name != "model.safetensors":
                old.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder

"""The ``mlxllm`` command: ``train`` a preset on a corpus, ``generate`` from a checkpoint, ``tokenize`` a file.

    mlxllm train --corpus tinyshakespeare --tokenizer char --preset nanogpt-cpu --out runs/cpu
    mlxllm generate runs/cpu --prompt "ROMEO:" --max-new-tokens 50 --temperature 0.8 --seed 0
    mlxllm tokenize --tokenizer gpt2 notes.txt --count

Mistakes (unknown names, unwritable folders, incompatible checkpoints) print one line and exit with
status 2. Built in Chapter 6, Training.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mlxllm import data
from mlxllm.char_tokenizer import CharTokenizer
from mlxllm.distributed import RanksDisagree, is_main, world
from mlxllm.prediction import generate, stream_text
from mlxllm.training import (PRESETS, TrainConfig, Trainer, TrainingDiverged, load_model, load_tokenizer,
                             read_checkpoint_config)


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block; one line is enough
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_tokenizer(spec: str, text: str):
    """``char`` (from the text's characters), ``gpt2`` (GPT-2's files) or ``bpe:VOCAB`` (trained on the text)."""
    if spec == "char":
        return CharTokenizer.train(text)
    from mlxllm.tokenizer import Tokenizer  # only the BPE kinds need it

    if spec == "gpt2":
        return Tokenizer.from_gpt2_files(data.get_path("gpt2-vocab"), data.get_path("gpt2-merges"))
    if spec.startswith("bpe:") and spec[4:].isdigit() and int(spec[4:]) >= 256:
        return Tokenizer.train(text, int(spec[4:]))
    raise ValueError(f"unknown tokenizer {spec!r}; use char, gpt2 or bpe:VOCAB_SIZE (VOCAB_SIZE >= 256)")


def writable_folder(path: str) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".mlxllm-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write to --out {path}: {error.strerror or error}") from None
    return folder


def train(args: argparse.Namespace) -> None:
    overrides = {name: value for name, value in (("steps", args.steps), ("batch_size", args.batch_size),
                                                 ("context", args.context), ("lr", args.lr), ("seed", args.seed),
                                                 ("dtype", args.dtype)) if value is not None}
    if not args.resume and args.preset not in PRESETS:  # before anything is created on disk
        raise ValueError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    main = is_main(world())  # under mlx.launch rank 0 alone writes and prints (Appendix, Data-parallel training)
    say = print if main else lambda *_: None
    out = writable_folder(args.out) if main else Path(args.out)
    if args.resume:
        saved = read_checkpoint_config(out)
        tokenizer = load_tokenizer(out, saved["tokenizer"])
        config = dataclasses.replace(TrainConfig.from_dict(saved["train"]), **overrides)
        train_ids, val_ids = data.split_ids(data.tokenize_corpus(args.corpus, tokenizer), config.val_fraction)
        trainer = Trainer.resume(out, train_ids, val_ids, config)
        say(f"resuming {out} at step {trainer.step} of {trainer.config.steps}")
    else:
        if (out / "config.json").exists():
            raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
        preset = PRESETS[args.preset]
        text = data.corpus_path(args.corpus).read_text(encoding="utf-8")
        tokenizer = build_tokenizer(args.tokenizer or preset.tokenizer, text)
        config = dataclasses.replace(preset.train, **overrides)
        train_ids, val_ids = data.split_ids(data.tokenize_corpus(args.corpus, tokenizer), config.val_fraction)
        model_config = preset.model_config(tokenizer.vocab_size, config.context)
        trainer = Trainer.create(model_config, config, train_ids, val_ids, tokenizer)
        say(f"{args.preset}: {trainer.model.num_parameters():,} parameters, vocabulary {tokenizer.vocab_size}, "
            f"{len(train_ids):,} training / {len(val_ids):,} validation tokens")
    losses = trainer.run(out=out, progress=not args.quiet)
    say(f"step {trainer.step}: val loss {losses['val_loss']:.4f} nats/token, "
        f"{trainer.val_bits_per_byte(losses['val_loss']):.4f} bits/byte (train {losses['train_loss']:.4f}); "
        f"checkpoint in {out}")


def generate_text(args: argparse.Namespace) -> None:
    model, tokenizer = load_model(args.checkpoint)
    prompt_ids = tokenizer.encode(args.prompt)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:  # fill the context
        max_new_tokens = max(0, model.config.context_length - len(prompt_ids))
    tokens = generate(model, prompt_ids, max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed)
    print(args.prompt, end="", flush=True)
    for piece in stream_text(tokens, tokenizer):
        print(piece, end="", flush=True)
    print()


def tokenize(args: argparse.Namespace) -> None:
    path = data.corpus_path(args.file)
    text = path.read_text(encoding="utf-8")
    if Path(args.tokenizer).is_dir():  # a checkpoint folder: its own tokenizer
        tokenizer = load_tokenizer(Path(args.tokenizer), read_checkpoint_config(args.tokenizer)["tokenizer"])
    else:
        tokenizer = build_tokenizer(args.tokenizer, text)
    ids = data.encode_text(tokenizer, text)
    if args.count:
        n_bytes = len(text.encode("utf-8"))
        print(f"{len(ids):,} tokens, {len(text):,} characters, {n_bytes:,} bytes, "
              f"{n_bytes / max(1, len(ids)):.2f} bytes/token, vocabulary {tokenizer.vocab_size:,}")
    else:
        print(" ".join(map(str, ids)))


def make_parser() -> Parser:
    parser = Parser(prog="mlxllm", description="Train, sample and tokenize with mlxllm.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = commands.add_parser("train", help="train a preset on a corpus, writing checkpoints to --out")
    p.add_argument("--corpus", default="tinyshakespeare", help="a named corpus or a text file")
    p.add_argument("--tokenizer", help="char | gpt2 | bpe:VOCAB (default: the preset's)")
    p.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--context", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", help="float32 | bfloat16")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=train)

    p = commands.add_parser("generate", help="stream text from a trained checkpoint")
    p.add_argument("checkpoint", help="a folder written by `mlxllm train`")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, help="default: fill the context")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=generate_text)

    p = commands.add_parser("tokenize", help="print the token ids (or --count) of a file")
    p.add_argument("--tokenizer", default="gpt2", help="char | gpt2 | bpe:VOCAB | a checkpoint folder")
    p.add_argument("file", help="a text file or a named corpus")
    p.add_argument("--count", action="store_true", help="print counts instead of ids")
    p.set_defaults(run=tokenize)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
        args.run(args)
    except (UsageError, ValueError, FileNotFoundError, TrainingDiverged, RanksDisagree) as error:
        command = f"mlxllm {args.command}" if "args" in locals() else "mlxllm"
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # data parallel: another rank died, so its connection closed
        if not str(error).startswith("[ring]"):
            raise
        print(f"mlxllm {args.command}: error: another rank stopped ({error}); see its message", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

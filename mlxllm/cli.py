"""The ``mlxllm`` command: ``train`` a preset on a corpus, ``generate`` or ``chat`` with a model, ``tokenize`` a file.

    mlxllm train --corpus tinyshakespeare --tokenizer char --preset nanogpt-cpu --out runs/cpu
    mlxllm train --out runs/cpu --resume --steps 4000
    mlxllm generate runs/cpu --prompt "ROMEO:" --max-new-tokens 50 --temperature 0.8 --seed 0
    mlxllm chat smollm2-135m-instruct --temperature 0
    mlxllm tokenize --tokenizer gpt2 notes.txt --count

MODEL is a training checkpoint folder, a Hugging Face folder, a .gguf file or a known short name.
Mistakes (unknown names, unwritable folders, damaged or incompatible checkpoints) print one line and
exit with status 2. Built in Chapter 6, Training.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import types
import typing
from pathlib import Path

from mlxllm import data
from mlxllm.checkpoint import is_checkpoint, load_checkpoint_tokenizer, run_lock
from mlxllm.distributed import RanksDisagree, is_main, world
from mlxllm.presets import PRESETS, prepare_run, resume_run
from mlxllm.training import TrainConfig, TrainingDiverged, TrainingInterrupted


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block; one line is enough
        raise UsageError(f"{message} (see `{self.prog} --help`)")


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


def add_train_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per TrainConfig field, typed and documented from the field: a new field needs no CLI edit."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # int | None → int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, choices=f.metadata.get("choices"),
                            help=f"{f.metadata.get('help', '')} (default: the preset's)")


def train(args: argparse.Namespace) -> None:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    preset = args.preset or (None if args.resume else "tiny")
    if preset is not None and preset not in PRESETS:  # before anything is created on disk
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    main = is_main(world())  # under mlx.launch rank 0 alone writes and prints (Appendix, Data-parallel training)
    say = print if main else lambda *_: None
    out = writable_folder(args.out) if main else Path(args.out)
    with run_lock(out) if main else contextlib.nullcontext():
        if args.resume:
            trainer = resume_run(out, args.corpus, args.tokenizer, args.preset, **overrides)
            say(f"resuming {out} at step {trainer.step} of {trainer.config.steps}")
        else:
            if is_checkpoint(out):
                raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another "
                                 "--out")
            trainer = prepare_run(args.corpus or "tinyshakespeare", preset, args.tokenizer, **overrides)
            say(f"{preset}: {trainer.model.num_parameters():,} parameters, vocabulary "
                f"{trainer.model.config.vocab_size}, {len(trainer.train_ids):,} training / "
                f"{len(trainer.val_ids):,} validation tokens")
        try:
            losses = trainer.run(out=out, progress=not args.quiet)
        except TrainingInterrupted as stop:
            raise TrainingInterrupted(f"{stop}; continue with `mlxllm train --out {out} --resume`") from None
    best = trainer.metrics["best"]
    bits = trainer.val_bits_per_byte(losses["val_loss"])
    say(f"step {trainer.step}: val loss {losses['val_loss']:.4f} nats/token"
        + (f", {bits:.4f} bits/byte" if bits is not None else "") + f" (train {losses['train_loss']:.4f}); "
        f"best val loss {best['val_loss']:.4f} at step {best['step']}"
        + (" (stopped early: no improvement)" if trainer.stopped_early else "")
        + f"; checkpoint ({trainer.config.save} model) in {out}")


def load(model: str):
    """(model, tokenizer) from a checkpoint folder, a Hugging Face folder, a .gguf file or a short name."""
    from mlxllm.pretrained import load_pretrained

    return load_pretrained(model)


def sampling(args: argparse.Namespace) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)


def generate_text(args: argparse.Namespace) -> None:
    from mlxllm.generation import generate, stream_text

    model, tokenizer = load(args.model)
    prompt_ids = tokenizer.encode(args.prompt)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:  # fill the context
        max_new_tokens = max(0, model.config.context_length - len(prompt_ids))
    stop_ids = () if args.ignore_eos else tokenizer.eos_token_ids
    tokens = generate(model, prompt_ids, max_new_tokens, **sampling(args), seed=args.seed, stop_ids=stop_ids)
    print(args.prompt, end="", flush=True)
    for piece in stream_text(tokens, tokenizer):
        print(piece, end="", flush=True)
    print()


def chat(args: argparse.Namespace) -> None:
    """Read one user message per line (interactively, or from piped stdin until its end), stream each answer."""
    from mlxllm.generation import generate, stream_text

    model, tokenizer = load(args.model)
    if not tokenizer.chat_template:
        raise ValueError(f"{args.model} has no chat template, so it is not a chat model; use `mlxllm generate`")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    seed = args.seed
    while True:
        try:
            line = input(">>> ") if interactive else sys.stdin.readline()
        except EOFError:
            line = ""
        if not line:  # end of input
            if interactive:
                print()
            return
        line = line.rstrip("\n")
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True),
                                      allowed_special="all")
        room = model.config.context_length - len(prompt_ids)
        if room <= 0:
            raise ValueError(f"the conversation is {len(prompt_ids)} tokens, longer than the model's context of "
                             f"{model.config.context_length}; start a new chat")
        tokens = generate(model, prompt_ids, min(args.max_new_tokens, room), **sampling(args), seed=seed,
                          stop_ids=tokenizer.eos_token_ids)
        answer = []
        for piece in stream_text(tokens, tokenizer):
            answer.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        messages.append({"role": "assistant", "content": "".join(answer)})
        seed = None if seed is None else seed + 1  # a new draw per turn, reproducible as a whole


def tokenize(args: argparse.Namespace) -> None:
    path = data.corpus_path(args.file)
    text = path.read_text(encoding="utf-8")
    if Path(args.tokenizer).is_dir():  # a checkpoint folder: its own tokenizer
        tokenizer = load_checkpoint_tokenizer(args.tokenizer)
    else:
        tokenizer = data.build_tokenizer(args.tokenizer, text)
    ids = data.encode_text(tokenizer, text)
    if args.count:
        n_bytes = len(text.encode("utf-8"))
        print(f"{len(ids):,} tokens, {len(text):,} characters, {n_bytes:,} bytes, "
              f"{n_bytes / max(1, len(ids)):.2f} bytes/token, vocabulary {tokenizer.vocab_size:,}")
    else:
        print(" ".join(map(str, ids)))


def add_sampling_options(p: argparse.ArgumentParser, max_new_tokens: int | None) -> None:
    p.add_argument("model", help="a training checkpoint folder, a Hugging Face folder, a .gguf file or "
                                 "smollm2-135m-instruct")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help="tokens per answer" if max_new_tokens else "default: fill the context")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--seed", type=int, default=0)


def make_parser() -> Parser:
    parser = Parser(prog="mlxllm", description="Train, sample, chat and tokenize with mlxllm.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = commands.add_parser("train", help="train a preset on a corpus, writing checkpoints to --out")
    p.add_argument("--corpus", help="a named corpus or a text file (default: tinyshakespeare; on --resume, the "
                                    "checkpoint's)")
    p.add_argument("--tokenizer", help=f"{data.TOKENIZER_SPECS} (default: the preset's)")
    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default: tiny)")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_train_config_options(p.add_argument_group("training settings (TrainConfig)"))
    p.set_defaults(run=train)

    p = commands.add_parser("generate", help="stream text from a model")
    add_sampling_options(p, None)
    p.add_argument("--prompt", default="\n")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    p.set_defaults(run=generate_text)

    p = commands.add_parser("chat", help="talk with a chat model; one message per line, end of input ends")
    add_sampling_options(p, 512)
    p.add_argument("--system", help="a system message that starts the conversation")
    p.set_defaults(run=chat)

    p = commands.add_parser("tokenize", help="print the token ids (or --count) of a file")
    p.add_argument("--tokenizer", default="gpt2", help=f"{data.TOKENIZER_SPECS} | a checkpoint folder")
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
    except TrainingInterrupted as stop:
        print(f"mlxllm train: stopped by {stop}", file=sys.stderr)
        return 130
    except RuntimeError as error:  # data parallel: another rank died, so its connection closed
        if not str(error).startswith("[ring]"):
            raise
        print(f"mlxllm {args.command}: error: another rank stopped ({error}); see its message", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlxllm generate ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""The ``mlxllm`` command: ``train`` a preset on a corpus, ``generate`` or ``chat`` with a model,
``tokenize`` a file.

    mlxllm train --corpus tinyshakespeare --tokenizer char --preset nanogpt-cpu --out runs/cpu
    mlxllm train --out runs/cpu --resume --steps 4000
    mlxllm generate runs/cpu --prompt "ROMEO:" --max-new-tokens 50 --temperature 0.8 --seed 0
    mlxllm chat smollm2-135m-instruct --temperature 0
    mlxllm finetune smollm2-135m-instruct --data train.jsonl --eval test.jsonl --out runs/dates \
        --steps 200
    mlxllm chat smollm2-135m-instruct --adapter runs/dates --temperature 0
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
from mlxllm.config import MAX_SEED, check_seed
from mlxllm.distributed import RanksDisagree, is_main, world
from mlxllm.presets import PRESETS, prepare_run, resume_run
from mlxllm.tokenizer.files import write_atomic
from mlxllm.training import TrainConfig, TrainingDiverged, TrainingInterrupted


# options that hold text for the model (not paths): checked to be UTF-8
TEXT_OPTIONS = ("prompt", "system", "question")


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""

    def __init__(self, message: str, prog: str = "mlxllm"):
        super().__init__(message)
        self.prog = prog  # "mlxllm generate": the command the line was for


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block; one line is enough
        raise UsageError(f"{message} (see `{self.prog} --help`)", self.prog)


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


def add_train_config_options(parser: argparse.ArgumentParser,
                             defaults: str = "the preset's") -> None:
    """One ``--option`` per TrainConfig field, typed and documented from the field: a new field
    needs no CLI edit."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # int | None → int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind,
                            choices=f.metadata.get("choices"),
                            help=f"{f.metadata.get('help', '')} (default: {defaults})")


def train_config_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line (options left out keep the preset's)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name) is not None}


def train(args: argparse.Namespace) -> None:
    overrides = train_config_overrides(args)
    preset = args.preset or (None if args.resume else "tiny")
    if preset is not None and preset not in PRESETS:  # before anything is created on disk
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    # under mlx.launch rank 0 alone writes and prints (Appendix, Data-parallel training)
    main = is_main(world())
    say = print if main else lambda *_: None
    out = writable_folder(args.out) if main else Path(args.out)
    with run_lock(out) if main else contextlib.nullcontext():
        if args.resume:
            trainer = resume_run(out, args.corpus, args.tokenizer, args.preset, **overrides)
            say(f"resuming {out} at step {trainer.step} of {trainer.config.steps}")
        else:
            if is_checkpoint(out):
                raise ValueError(f"{out} already holds a checkpoint; pass --resume to continue it "
                                 "or choose another --out")
            trainer = prepare_run(args.corpus or "tinyshakespeare", preset, args.tokenizer,
                                  **overrides)
            say(f"{preset}: {trainer.model.num_parameters():,} parameters, vocabulary "
                f"{trainer.model.config.vocab_size}, {len(trainer.train_ids):,} training / "
                f"{len(trainer.val_ids):,} validation tokens")
        try:
            losses = trainer.run(out=out, progress=not args.quiet)
        except TrainingInterrupted as stop:
            raise TrainingInterrupted(f"{stop}; continue with `mlxllm train --out {out} "
                                      "--resume`") from None
    best = trainer.metrics["best"]
    bits = trainer.val_bits_per_byte(losses["val_loss"])
    say(f"step {trainer.step}: val loss {losses['val_loss']:.4f} nats/token"
        + (f", {bits:.4f} bits/byte" if bits is not None else "")
        + f" (train {losses['train_loss']:.4f}); "
        f"best val loss {best['val_loss']:.4f} at step {best['step']}"
        + (" (stopped early: no improvement)" if trainer.stopped_early else "")
        + f"; checkpoint ({trainer.config.save} model) in {out}")


def load(model: str, adapter: str | None = None):
    """(model, tokenizer) from a checkpoint folder, a Hugging Face folder, a .gguf file or a short
    name, with the LoRA adapters of ``adapter`` (an ``mlxllm finetune --out`` folder) on top."""
    from mlxllm.pretrained import load_pretrained

    model, tokenizer = load_pretrained(model)
    if adapter is not None:
        from mlxllm.lora import load_adapters

        load_adapters(model, adapter)
        model.eval()
    return model, tokenizer


def device_name() -> str:
    """The accelerator's (or CPU's) name as MLX reports it, e.g. 'NVIDIA H200'."""
    import mlx.core as mx

    try:
        return str(mx.device_info().get("device_name", "unknown device"))
    except (AttributeError, RuntimeError):
        return "unknown device"


def finetune(args: argparse.Namespace) -> None:
    """LoRA fine-tuning on chat JSONL (Chapter 9); with --eval, exact match before and after, as
    JSON."""
    import datetime
    import json
    import platform
    import shlex
    import time

    import mlx.core as mx

    from mlxllm import sft
    from mlxllm.lora import apply_lora, save_adapters

    started = time.perf_counter()
    overrides = train_config_overrides(args)
    config = sft.finetune_config(**overrides)
    if config.dtype != "float32" or config.checkpoint_every or config.save != "last":
        raise ValueError("finetune trains float32 adapters over the model as loaded and saves them "
                         "at the end; --dtype, --checkpoint-every and --save do not apply to it")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be a positive integer, got {args.max_tokens}")
    targets = "all" if args.lora_targets == "all" else tuple(args.lora_targets.split(","))
    train = sft.load_jsonl(args.data)
    if args.valid:
        valid = sft.load_jsonl(args.valid)
    else:  # the last tenth of --data
        if len(train) < 2:
            raise ValueError(f"{args.data} has {len(train)} conversation(s); give at least 2, or "
                             "--valid FILE")
        cut = len(train) - max(1, len(train) // 10)
        train, valid = train[:cut], train[cut:]
    test = sft.load_jsonl(args.eval) if args.eval else None
    out = writable_folder(args.out)
    model, tokenizer = load(args.model)  # the base model
    if not tokenizer.chat_template:
        raise ValueError(f"{args.model} has no chat template, so it cannot be fine-tuned on "
                         "conversations")
    report = {"date": datetime.date.today().isoformat(),
              "machine": f"{mx.default_device()}: {device_name()} ({platform.platform()})",
              "mlx": mx.__version__, "command": "mlxllm " + shlex.join(args.argv),
              "model": args.model,
              "split_sizes": {"train": len(train), "valid": len(valid),
                              "test": len(test) if test else 0}}
    mx.random.seed(config.seed)
    base_parameters = model.num_parameters()
    trainable = apply_lora(model, args.lora_rank, args.lora_alpha, targets, args.lora_layers)
    # the conversations' lengths and one step's memory are checked here, before anything slow
    trainer = sft.make_trainer(model, tokenizer, train, valid, config,
                               mask_prompt=not args.no_mask_prompt, max_tokens=args.max_tokens)
    if test:  # the adapters start with B = 0: the model computes exactly the base model's logits
        tick = time.perf_counter()
        report["base_accuracy"], base = sft.exact_match(model, tokenizer, test, args.max_new_tokens)
        report["general_answer_base"] = sft.chat_answer(model, tokenizer, args.question,
                                                        args.question_tokens)
        report["base_eval_seconds"] = round(time.perf_counter() - tick, 1)
        print(f"base model: exact match {report['base_accuracy']:.1%} on {len(test)} test "
              "conversations")
    print(f"LoRA rank {args.lora_rank}, alpha {args.lora_alpha} on {args.lora_targets}: "
          f"{trainable:,} trainable parameters beside the {base_parameters:,} of the frozen model")
    tick = time.perf_counter()
    try:
        losses = trainer.run(progress=not args.quiet)
    except TrainingInterrupted as stop:  # the steps done so far are kept
        save_adapters(model, out, base_model=args.model, steps=trainer.step)
        raise TrainingInterrupted(f"{stop}; the adapters of step {trainer.step} are in {out} "
                                  "(fine-tuning does not resume: `mlxllm finetune` again trains "
                                  "from the start)") from None
    train_seconds = time.perf_counter() - tick
    save_adapters(model, out, base_model=args.model, steps=trainer.step)
    print(f"step {trainer.step}: val loss {losses['val_loss']:.4f} "
          f"(train {losses['train_loss']:.4f}) in {train_seconds:.1f} s; adapters in {out}")
    report.update(steps=trainer.step, batch_size=config.batch_size, lr=config.lr,
                  tokens_per_row=trainer.context,
                  lora={"rank": args.lora_rank, "alpha": args.lora_alpha,
                        "targets": args.lora_targets,
                        "layers": args.lora_layers or len(model.blocks)},
                  trainable_parameters=trainable, model_parameters=base_parameters,
                  losses={k: round(v, 4) for k, v in losses.items()},
                  train_seconds=round(train_seconds, 1))
    if test:
        tick = time.perf_counter()
        report["finetuned_accuracy"], tuned = sft.exact_match(model, tokenizer, test,
                                                              args.max_new_tokens)
        report["general_question"] = args.question
        report["general_answer"] = sft.chat_answer(model, tokenizer, args.question,
                                                   args.question_tokens)
        report["finetuned_eval_seconds"] = round(time.perf_counter() - tick, 1)
        report["examples"] = [{"prompt": b["prompt"], "expected": b["expected"], "base": b["got"],
                               "finetuned": t["got"]} for b, t in zip(base[:5], tuned[:5])]
        print(f"fine-tuned: exact match {report['finetuned_accuracy']:.1%} "
              f"(base {report['base_accuracy']:.1%}); "
              f"{args.question!r} → {report['general_answer']!r}")
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = Path(args.results) if args.results else out / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=1) + "\n")
    print(f"results in {path}")


def decoder(model, args: argparse.Namespace):
    """``decode(prompt_ids, n, seed, stop_ids)`` → token ids: the fast engine (Chapter 10), or the
    core's ``generate`` with ``--core``; the sampler is built once from the options."""
    from mlxllm.fast import DecodeEngine
    from mlxllm.generation import generate, make_sampler

    sampler = make_sampler(args.temperature, args.top_k, args.top_p, args.min_p)
    if args.core:
        return lambda ids, n, seed, stop_ids: generate(model, ids, n, sampler=sampler, seed=seed,
                                                       stop_ids=stop_ids)
    engine = DecodeEngine(model)
    return lambda ids, n, seed, stop_ids: engine.generate(ids, n, sampler=sampler, seed=seed,
                                                          stop_ids=stop_ids)


def generate_text(args: argparse.Namespace) -> None:
    from mlxllm.generation import stream_text

    model, tokenizer = load(args.model, args.adapter)
    decode = decoder(model, args)
    # a raw prompt gets what the model's files add (LLaMA 3's BOS), as transformers and llama.cpp
    prompt_ids = tokenizer.encode(args.prompt, add_special_tokens=True)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:  # fill the context
        max_new_tokens = max(0, model.config.context_length - len(prompt_ids))
    stop_ids = () if args.ignore_eos else tokenizer.eos_token_ids
    tokens = decode(prompt_ids, max_new_tokens, args.seed, stop_ids)
    print(args.prompt, end="", flush=True)
    for piece in stream_text(tokens, tokenizer):
        print(piece, end="", flush=True)
    print()


def chat(args: argparse.Namespace) -> None:
    """Read one user message per line (interactively, or from piped stdin until its end), stream
    each answer."""
    from mlxllm.generation import stream_text

    model, tokenizer = load(args.model, args.adapter)
    decode = decoder(model, args)
    if not tokenizer.chat_template:
        raise ValueError(f"{args.model} has no chat template, so it is not a chat model; use "
                         "`mlxllm generate`")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    stdin = getattr(sys.stdin, "buffer", None)  # bytes: a line that is not UTF-8 gets named
    seed, number = args.seed, 0
    while True:
        number += 1
        try:
            line = input(">>> ") if interactive or stdin is None else stdin.readline()
        except EOFError:
            line = ""
        except UnicodeDecodeError as error:
            line = error.object  # the bytes of the line
        if not line:  # end of input
            if interactive:
                print()
            return
        line = utf8_text(line, f"chat input line {number}").rstrip("\r\n")
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        # the template writes any BOS itself: nothing added (as transformers' apply_chat_template)
        prompt_ids = tokenizer.encode(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True),
            allowed_special="all")
        room = model.config.context_length - len(prompt_ids)
        if room <= 0:
            raise ValueError(f"the conversation is {len(prompt_ids)} tokens, longer than the "
                             f"model's context of {model.config.context_length}; start a new chat")
        tokens = decode(prompt_ids, min(args.max_new_tokens, room), seed, tokenizer.eos_token_ids)
        answer = []
        for piece in stream_text(tokens, tokenizer):
            answer.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        messages.append({"role": "assistant", "content": "".join(answer)})
        # a new draw per turn, reproducible as a whole
        seed = None if seed is None else (seed + 1) % (MAX_SEED + 1)


def utf8_text(text: str | bytes, what: str) -> str:
    """``text`` as a str, checked: bytes that are not UTF-8 (or, in a str, the stand-ins Python
    decodes them to) → one ValueError naming ``what`` and the byte."""
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as error:
            bad, at = text[error.start], error.start
    else:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError as error:  # a lone surrogate: an undecodable byte of argv/stdin
            code, at = ord(text[error.start]), error.start
            bad = code - 0xDC00 if 0xDC80 <= code <= 0xDCFF else None
    byte = f"the byte 0x{bad:02x}" if bad is not None else "a character that UTF-8 cannot hold"
    raise ValueError(f"{what} is not UTF-8 text ({byte} at position {at}); pass UTF-8 (check the "
                     "terminal's or the file's encoding, e.g. convert it with `iconv -t utf-8`)")


def tokenize(args: argparse.Namespace) -> None:
    path = data.corpus_path(args.file)
    text = data.read_text(path)
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


def seed_option(text: str) -> int:
    """``--seed``: an integer from 0 to 2**63 - 1 (argparse reports anything else in one line)."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got "
                                         f"{text!r}") from None


def add_sampling_options(p: argparse.ArgumentParser, max_new_tokens: int | None) -> None:
    p.add_argument("model", help="a training checkpoint folder, a Hugging Face folder, a .gguf "
                                 "file or smollm2-135m-instruct")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help="tokens per answer" if max_new_tokens else "default: fill the context")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--seed", type=seed_option, default=0, help="0 to 2**63 - 1")
    p.add_argument("--adapter", help="a folder of LoRA adapters (`mlxllm finetune --out`) to apply")
    p.add_argument("--core", action="store_true", help="decode through the core's plain KV-cache "
                   "loop (mlxllm.generate) instead of the compiled engine; the same tokens")


def make_parser() -> Parser:
    parser = Parser(prog="mlxllm", description="Train, sample, chat and tokenize with mlxllm.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = commands.add_parser("train",
                            help="train a preset on a corpus, writing checkpoints to --out")
    p.add_argument("--corpus", help="a named corpus or a text file (default: tinyshakespeare; on "
                                    "--resume, the checkpoint's)")
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
    p.add_argument("--ignore-eos", action="store_true",
                   help="do not stop at the end-of-sequence token")
    p.set_defaults(run=generate_text)

    p = commands.add_parser("chat",
                            help="talk with a chat model; one message per line, end of input ends")
    add_sampling_options(p, 512)
    p.add_argument("--system", help="a system message that starts the conversation")
    p.set_defaults(run=chat)

    p = commands.add_parser("finetune",
                            help="teach a chat model a skill with LoRA on chat JSONL (Chapter 9)")
    p.add_argument("model", help="a chat model: a Hugging Face folder, a .gguf file or "
                                 "smollm2-135m-instruct")
    p.add_argument("--data", required=True,
                   help='training conversations, JSONL of {"messages": [...]}')
    p.add_argument("--valid", help="validation conversations (default: the last tenth of --data)")
    p.add_argument("--eval",
                   help="test conversations: exact match of the greedy answer, before and after")
    p.add_argument("--out", required=True, help="folder for the adapters (and results.json)")
    p.add_argument("--results", help="where the results JSON goes (default: OUT/results.json)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default="q_proj,v_proj",
                   help="comma-separated projections, or all")
    p.add_argument("--lora-layers", type=int, help="adapt the last this many blocks (default: all)")
    p.add_argument("--no-mask-prompt", action="store_true", help="learn the prompt tokens too")
    p.add_argument("--max-tokens", type=int,
                   help="refuse, by file and line, a conversation longer than this many tokens "
                        "(less one: the last is only a target; default: the model's context)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit in --eval")
    p.add_argument("--question", default="What is the capital of France?",
                   help="a general question answered before and after (with --eval)")
    p.add_argument("--question-tokens", type=int, default=48,
                   help="answer length limit for --question")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_train_config_options(p.add_argument_group("training settings (TrainConfig)"),
                             "sft.finetune_config's")
    p.set_defaults(run=finetune)

    p = commands.add_parser("tokenize", help="print the token ids (or --count) of a file")
    p.add_argument("--tokenizer", default="gpt2",
                   help=f"{data.TOKENIZER_SPECS} | a checkpoint folder")
    p.add_argument("file", help="a text file or a named corpus")
    p.add_argument("--count", action="store_true", help="print counts instead of ids")
    p.set_defaults(run=tokenize)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `finetune`
        for name in TEXT_OPTIONS:  # an undecodable byte in argv reaches Python as a stand-in
            if isinstance(getattr(args, name, None), str):
                utf8_text(getattr(args, name), f"--{name}")
        args.run(args)
    except (UsageError, ValueError, FileNotFoundError, TrainingDiverged, RanksDisagree) as error:
        command = (f"mlxllm {args.command}" if "args" in locals() else
                   error.prog if isinstance(error, UsageError) else "mlxllm")
        print(f"{command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"mlxllm {args.command}: stopped by {stop}", file=sys.stderr)
        return 130
    except RuntimeError as error:  # data parallel: another rank died, so its connection closed
        if not str(error).startswith("[ring]"):
            raise
        print(f"mlxllm {args.command}: error: another rank stopped ({error}); see its message",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlxllm generate ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A skill to teach, with exact answers: dates written in words or numbers
→ ISO 8601 (YYYY-MM-DD).

Generated offline from a seed, in mlx-lm's chat JSONL; train / valid / test never share a question.

    python -m mlxllm.tasks dates --out data/dates --train 2000 --valid 100 --test 150 --seed 0

Built in Chapter 9, Fine-tuning.
"""

from __future__ import annotations

import argparse
import datetime
import random
from pathlib import Path

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
INSTRUCTION = "Write this date in ISO 8601 format (YYYY-MM-DD): "


def ordinal(n: int) -> str:
    """1 → 1st, 2 → 2nd, 11 → 11th, 23 → 23rd."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def spell(date: datetime.date, style: int) -> str:
    """One of eight ways people write ``date``; the numeric ones say which number comes first."""
    d, m, y, month = date.day, date.month, date.year, MONTHS[date.month - 1]
    return [f"the {ordinal(d)} of {month}, {y}",
            f"{month} {d}, {y}",
            f"{month} {d} {y}",
            f"{d} {month} {y}",
            f"{month[:3]} {ordinal(d)}, {y}",
            f"{d}/{m}/{y} (day first)",
            f"{m}/{d}/{y} (month first)",
            f"{d}.{m:02d}.{y} (day first)"][style]


STYLES = 8


def date_conversation(date: datetime.date, style: int) -> list[dict]:
    """The question (the instruction and the date spelled in ``style``) and its exact ISO answer."""
    return [{"role": "user", "content": INSTRUCTION + spell(date, style)},
            {"role": "assistant", "content": date.isoformat()}]


def date_splits(sizes: dict[str, int], seed: int = 0) -> dict[str, list[list[dict]]]:
    """{split: conversations} for dates in 1900–2099, every question distinct across splits.
    Chapter 9."""
    rng, seen, splits = random.Random(seed), set(), {}
    start, days = datetime.date(1900, 1, 1).toordinal(), 200 * 365
    for name, size in sizes.items():
        conversations = []
        while len(conversations) < size:
            date, style = (datetime.date.fromordinal(start + rng.randrange(days)),
                           rng.randrange(STYLES))
            if (date, style) not in seen:
                seen.add((date, style))
                conversations.append(date_conversation(date, style))
        splits[name] = conversations
    return splits


def main(argv: list[str] | None = None) -> None:
    from mlxllm.sft import write_jsonl

    summary = __doc__.split("\n\n")[0].replace("\n", " ")  # the docstring's first paragraph
    parser = argparse.ArgumentParser(prog="python -m mlxllm.tasks", description=summary)
    parser.add_argument("task", choices=["dates"])
    parser.add_argument("--out", required=True,
                        help="folder for train.jsonl, valid.jsonl, test.jsonl")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--valid", type=int, default=100)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, conversations in date_splits({"train": args.train, "valid": args.valid,
                                            "test": args.test}, args.seed).items():
        write_jsonl(conversations, out / f"{name}.jsonl")
        print(f"{out / (name + '.jsonl')}: {len(conversations)} conversations")


if __name__ == "__main__":
    main()

"""`pecrs chat RUN_DIR`: talk to a trained model in the terminal. You are the seeker; the model is
the recommender. Each line you type is one seeker turn; the reply names the recommended item(s).

    /top [N]   the N best items for the conversation so far (default 5), with scores
    /reset     start a new conversation
    /help      these commands
    /quit      leave (also /exit or /q; end of input does too)

Input is read line by line, so a conversation can be piped in: `printf 'hi\\n/top 3\\n' | pecrs chat RUN`.
"""
from __future__ import annotations

import sys
import textwrap

from .data import ITEM, SEEKER, DataError, Item, Turn
from .dialogue_input import clip_text

COMMANDS = "/top [N], /reset, /help, /quit"


def describe(item: Item) -> str:
    """Title (year), genres: how an item is shown to people."""
    genres = f", {', '.join(item.genres)}" if item.genres else ""
    return f"{item.display()}{genres}"


def chat(recommender, lines=None, out=None, decoding=None, k_items: int = 1, seed: int | None = None,
         link_titles: bool = True, exclude_mentioned: bool = True) -> int:
    """Run the conversation loop over `lines` (default stdin), writing to `out` (default stdout).
    link_titles: catalog titles typed in a line become [ITEM] mentions, as in training
    (`Recommender.link_titles`), and are shown as "(read as: ...)". exclude_mentioned: never
    recommend an item the conversation named (a person asking for "something like X" has seen X;
    the paper's protocol, whose references often repeat an earlier movie, does not exclude)."""
    lines = sys.stdin if lines is None else lines
    out = sys.stdout if out is None else out
    interactive = hasattr(lines, "isatty") and lines.isatty()

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"PECRS chat: {len(recommender)} items. You are the seeker. Commands: {COMMANDS}.")
    history: list[Turn] = []
    turn = 0
    while True:
        if interactive:
            print("you> ", end="", file=out, flush=True)
        line = lines.readline()
        if not line:          # end of input
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command in ("/quit", "/exit", "/q"):
                break
            if command == "/reset":
                history.clear()
                say("(new conversation)")
            elif command == "/top":
                _show_top(recommender, history, arg.strip(), say, exclude_mentioned)
            elif command == "/help":
                say(textwrap.dedent(__doc__.split("\n\n")[1]).rstrip())
            else:
                say(f"unknown command {command}; commands: {COMMANDS}")
            continue
        if ITEM in line:   # the model's placeholder: a person names an item by its title
            say(f"(not sent: {ITEM} is reserved for the model; type the title instead)")
            continue
        # Cut as the model will read it (dialogue_input), then link: "(read as: ...)" shows only
        # mentions the model gets.
        line, _ = clip_text(line, [], recommender.max_text_chars)
        text, items = recommender.link_titles(line) if link_titles else (line, [])
        history.append(Turn(SEEKER, text, tuple(items)))
        try:
            turn += 1
            response = recommender.respond(history, decoding=decoding, k_items=k_items,
                                           seed=None if seed is None else seed + turn,
                                           exclude_mentioned=exclude_mentioned)
        except DataError as e:
            history.pop()
            say(f"(not sent: {e})")
            continue
        history.append(response.turn)
        if items:
            say(f"  (read as: {'; '.join(recommender.item(i).display() for i in items)})")
        say(f"recommender> {response.text}")
        for item in dict.fromkeys(response.items):
            say(f"  * {describe(item)}")
        if not response.items:  # the reply names no item: still show what the model picked
            say(f"  (top pick, not named in the reply: {describe(response.recommended[0])})")
    say("bye")
    return 0


def _show_top(recommender, history, arg: str, say, exclude_mentioned: bool) -> None:
    try:
        n = int(arg) if arg else 5
        if n < 1:
            raise ValueError
    except ValueError:
        say(f"/top takes a positive number, got {arg!r}")
        return
    if not history:
        say("(say something first: recommendations follow the conversation)")
        return
    try:
        ranked = recommender.recommend(history, k=n, exclude_mentioned=exclude_mentioned)
    except DataError as e:   # every item excluded (a tiny catalog)
        say(f"({e})")
        return
    for rec in ranked:
        say(f"{rec.rank:>3}. {describe(rec.item)}  (score {rec.score:.3f})")

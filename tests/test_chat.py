"""The terminal chat (pecrs.chat, `pecrs chat`) driven by piped input."""
import io
import re

import pytest

from pecrs.chat import _show_top, chat, describe
from pecrs.cli import main
from pecrs.recommender import Recommender
from pecrs.testing import make_tiny_run, toy_items


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def rec(run):
    run_dir, items = run
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)


def _chat(rec, text, **kwargs) -> list[str]:
    out = io.StringIO()
    assert chat(rec, io.StringIO(text), out, **kwargs) == 0
    return out.getvalue().splitlines()


def test_conversation_top_reset_quit(rec):
    lines = _chat(rec, "I want a horror movie\n/top 3\n\n/reset\n/top\nthanks\n/quit\nnot read\n",
                  decoding="greedy")
    assert lines[0].startswith("PECRS chat: 12 items")
    assert lines[-1] == "bye"
    replies = [i for i, line in enumerate(lines) if line.startswith("recommender> ")]
    assert len(replies) == 2                      # "not read" after /quit is never answered
    # Each reply shows the item(s) it names, or the top pick it did not name.
    assert lines[replies[0] + 1].startswith(("  * ", "  (top pick"))
    # /top 3 ranks the conversation so far, exactly as the library does (excluding what the
    # conversation mentions, chat's default).
    expected = rec.recommend([{"role": "seeker", "text": "I want a horror movie"},
                              rec.respond([{"role": "seeker", "text": "I want a horror movie"}],
                                          decoding="greedy").turn], k=3, exclude_mentioned=True)
    top = [line for line in lines if line[:4].strip().rstrip(".").isdigit()]
    assert top == [f"{r.rank:>3}. {describe(r.item)}  (score {r.score:.3f})" for r in expected]
    assert "(new conversation)" in lines
    assert "(say something first: recommendations follow the conversation)" in lines


def test_end_of_input_and_bad_lines(rec):
    lines = _chat(rec, "/top 0\n/top x\n/dance\nI like [ITEM]\n/help\nhello", seed=0)
    assert "/top takes a positive number, got '0'" in lines
    assert "/top takes a positive number, got 'x'" in lines
    assert any(line.startswith("unknown command /dance") for line in lines)
    assert any(line.startswith("(not sent:") and "[ITEM]" in line for line in lines)
    assert any(line.startswith("/reset") for line in lines)                 # /help lists the commands
    assert sum(line.startswith("recommender> ") for line in lines) == 1   # "hello" without a newline
    assert lines[-1] == "bye"


def test_a_refused_line_leaves_the_conversation_as_it_was(rec):
    """A line the model refuses (a lone surrogate, not UTF-8) is not kept: the next line is
    answered as if it had not been typed, and /top with no number lists 5."""
    lines = _chat(rec, "bad \udcff text\nI want a horror movie\n/top\n", seed=0)
    assert sum(line.startswith("(not sent:") for line in lines) == 1
    assert sum(line.startswith("recommender> ") for line in lines) == 1
    assert [line[:4].strip() for line in lines if line[:4].strip().rstrip(".").isdigit()] == ["1.", "2.", "3.", "4.", "5."]


def test_upper_bounds_of_ports_and_seeds_are_allowed():
    import argparse

    from pecrs.cli.common import port_int, seed_int

    assert port_int("65535") == 65535 and seed_int(str(2**32 - 1)) == 2**32 - 1
    for parse, value in ((port_int, "65536"), (seed_int, str(2**32))):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(value)


def test_describe():
    from pecrs.data import Item

    assert describe(Item("1", "Alien", 1979, genres=("Horror", "Sci-Fi"))) == "Alien (1979), Horror, Sci-Fi"
    assert describe(Item("2", "Untitled")) == "Untitled"


def test_cli_chat_reads_stdin(run, monkeypatch, capsys, tmp_path):
    run_dir, _ = run
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("hi there\n/top 2\n"))
    assert main(["chat", str(run_dir), "--decoding", "greedy", "--k-items", "2"]) == 0
    out, err = capsys.readouterr()
    assert "catalog" in err and "12 items" in err           # the run's dataset catalog
    assert out.count("recommender> ") == 1 and "  1. Movie " in out and out.rstrip().endswith("bye")
    assert list((tmp_path / "catalogs").glob("*.pt"))       # vectors cached for the next start
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["chat", str(run_dir)]) == 0
    assert "loaded from cache" in capsys.readouterr().err


def test_cli_chat_no_repeat_ngram_flag(run, monkeypatch, tmp_path):
    from pecrs.recommender import Recommender

    run_dir, _ = run
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path))
    loaded = []
    real = Recommender.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        loaded.append(real(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(Recommender, "from_pretrained", classmethod(spy))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["chat", str(run_dir), "--no-repeat-ngram", "3"]) == 0
    assert main(["chat", str(run_dir)]) == 0
    assert [rec.no_repeat_ngram for rec in loaded] == [3, 0]     # flag, then the run's setting (0)


@pytest.mark.parametrize("device, message", [
    ("bogus", "device: expected one such as cpu, cuda or cuda:1, got 'bogus'"),
    ("cuda", "device 'cuda': this machine has no CUDA GPU torch can use"),
])
def test_a_bad_device_is_refused_by_the_library_before_loading(device, message, monkeypatch):
    """Recommender.from_pretrained(device=...) checks as `--device` does (it once raised torch's
    AssertionError "Torch not compiled with CUDA enabled", or listed ~20 device kinds)."""
    import torch

    import pecrs.pretrained
    from pecrs.recommender import Recommender

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(pecrs.pretrained, "load_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match=re.escape(message)):
        Recommender.from_pretrained("inspired", device=device)


@pytest.mark.parametrize("command, flag, value, message", [
    ("chat", "--device", "gpu", "argument --device: expected one such as cpu, cuda or cuda:1, got 'gpu'"),
    ("evaluate", "--device", "cuda:99", "cuda:99"),
    ("chat", "--threads", "-1", "expected a positive integer"),
    ("chat", "--k-items", "0", "expected a positive integer"),
    ("chat", "--seed", str(2**64), "expected a seed from 0 to 2**32 - 1"),
    ("chat", "--seed", "-1", "expected a seed from 0 to 2**32 - 1"),
    ("serve", "--port", "99999", "expected a port from 0 to 65535"),
    ("compare", "--seed", "-1", "argument --seed: expected a seed from 0 to 2**32 - 1"),
    ("chat", "--decoding", "telepathy", "argument --decoding: unknown decoding strategy 'telepathy'; valid names:"),
    ("evaluate", "--decoding", "telepathy", "argument --decoding: unknown decoding strategy 'telepathy'"),
])
def test_bad_flags_fail_before_a_model_loads(command, flag, value, message, capsys, monkeypatch):
    """Checked by argparse, so the chat never starts (and loses nothing) on a flag that fails later."""
    import pecrs.recommender
    from pecrs.cli import main

    monkeypatch.setattr(pecrs.recommender.Recommender, "from_pretrained",
                        classmethod(lambda *a, **kw: pytest.fail("the model was loaded")))
    run = {"evaluate": ["inspired"], "compare": ["a.jsonl", "b.jsonl"]}.get(command, [])
    with pytest.raises(SystemExit) as e:
        main([command, *run, flag, value])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_ctrl_c_ends_a_command_without_a_traceback(monkeypatch, capsys):
    import pecrs.cli.serving

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(pecrs.cli.serving, "_load_recommender", interrupted)
    assert main(["chat"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_typed_titles_become_item_mentions(rec):
    """A catalog title typed in a line is read as an [ITEM] mention (pecrs.title_linking), shown as
    "(read as: ...)", and ranks as that mention does; --no-link-titles reads it as words."""
    lines = _chat(rec, "I loved Movie 3 and Movie 10\n/top 3\n", decoding="greedy", exclude_mentioned=False)
    assert "  (read as: Movie 3 (2003); Movie 10 (2010))" in lines
    mentioned = [{"role": "seeker", "text": "I loved [ITEM] and [ITEM]", "items": ["3", "10"]}]
    first = rec.respond(mentioned, decoding="greedy")
    assert f"recommender> {first.text}" in lines
    expected = rec.recommend(mentioned + [first.turn], k=3)
    top = [line for line in lines if line[:4].strip().rstrip(".").isdigit()]
    assert top == [f"{r.rank:>3}. {describe(r.item)}  (score {r.score:.3f})" for r in expected]
    plain = _chat(rec, "I loved Movie 3 and Movie 10\n", decoding="greedy", link_titles=False)
    assert not any(line.startswith("  (read as") for line in plain)
    typed = [{"role": "seeker", "text": "I loved Movie 3 and Movie 10"}]
    assert f"recommender> {rec.respond(typed, decoding='greedy').text}" in plain
    # A typed [ITEM] has no id: refused, and the conversation goes on.
    lines = _chat(rec, "I like [ITEM]\nhello\n", seed=0)
    assert any(line.startswith("(not sent:") for line in lines)
    assert sum(line.startswith("recommender> ") for line in lines) == 1


def test_recommender_link_titles(rec):
    assert rec.link_titles("Seen Movie 3?") == ("Seen [ITEM]?", ["3"])
    assert rec.link_titles("[ITEM] or Movie 4", ["1"]) == ("[ITEM] or [ITEM]", ["1", "4"])
    turns = rec.turns([{"role": "seeker", "text": "I loved Movie 3"}], link_titles=True)
    assert turns[0].text == "I loved [ITEM]" and turns[0].items == ("3",)
    assert rec.turns([{"role": "seeker", "text": "I loved Movie 3"}])[0].items == ()
    # Only seeker turns: the recommender's are the model's own, their items already marked.
    said = rec.turns([{"role": "recommender", "text": "Try Movie 3"}], link_titles=True)
    assert said[0].text == "Try Movie 3" and said[0].items == ()


def test_top_says_when_everything_is_excluded(run):
    """A two-item catalog whose two items the conversation named: /top says so, the chat goes on."""
    run_dir, items = run
    tiny = Recommender.from_pretrained(run_dir, catalog=[it for it in toy_items() if it.id in ("1", "2")],
                                       device="cpu", cache_dir=False)
    lines = _chat(tiny, "I saw Movie 1 and Movie 2\n/quit\n", decoding="greedy")   # refused, not a crash
    assert any(line.startswith("(not sent:") and "every item of the catalog is excluded" in line for line in lines)
    said = []
    history = tiny.turns([{"role": "seeker", "text": "I saw Movie 1 and Movie 2"}], link_titles=True)
    _show_top(tiny, list(history), "", said.append, exclude_mentioned=True)
    assert len(said) == 1 and "every item of the catalog is excluded" in said[0]


def test_chat_excludes_what_the_conversation_mentions_by_default(rec):
    """Neither a reply nor /top offers the movie the seeker named (the one the model would rank
    first after that mention), and /top leaves out what the reply named too."""
    mentioned = [{"role": "seeker", "text": "Something like [ITEM]?", "items": ["3"]}]
    favourite = rec.recommend(mentioned, k=1)[0].item
    lines = _chat(rec, f"Something like {favourite.title}?\n/top 12\n", decoding="greedy")
    top = [line for line in lines if line[:4].strip().rstrip(".").isdigit()]
    named = {line for line in lines if line.startswith("  * ")}
    assert not any(describe(favourite) in line for line in top + sorted(named))
    assert len(top) == 12 - 1 - len(named)
    assert not any(line.startswith("recommender> ") and favourite.display() in line for line in lines)


def test_a_title_the_cut_drops_is_not_read_as_a_mention(rec):
    """Over-long lines are cut to what the model reads before titles are linked, so "(read as)"
    never shows a mention the model (and the exclusion) would not get."""
    tail = "and more " * rec.max_text_chars
    lines = _chat(rec, f"I loved Movie 3 {tail}\nI loved Movie 4\n", decoding="greedy")
    assert sum(line.startswith("  (read as:") for line in lines) == 1
    assert "  (read as: Movie 4 (2004))" in lines
    assert "(not sent: [ITEM] is reserved for the model; type the title instead)" in _chat(rec, "I like [ITEM]\n")

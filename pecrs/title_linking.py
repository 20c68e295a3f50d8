"""Typed titles -> [ITEM] mentions, so that chat input reads like training input.

In training every movie mention is the placeholder [ITEM] with the item's id in `Turn.items`. A
person chatting types titles ("I love The Conjuring"), which the model never saw as such.
`TitleLinker` finds catalog titles in free text and replaces each with [ITEM]:

    linker = TitleLinker(items)                     # once per catalog
    linker.link("I love The Conjuring")             # ("I love [ITEM]", ["1520"])
    linker.matches("I love The Conjuring")          # [(7, 20, "1520")]: what was recognised

Words. Text and titles are compared as sequences of words, so punctuation and case never decide a
match: "avengers endgame" has the key of "Avengers: Endgame" (guard (d) below still wants a
two-word title capitalised, quoted or dated before it links). A word's key drops apostrophes
(' and ’: "Charlies Angels" finds "Charlie's Angels"), folds accents (NFKD, combining marks
removed: "Amelie" finds "Amélie") and is casefolded. The index, built once, maps each title's
key tuple to its items; 10^5-10^6 titles rule out one big regex, so building is one pass over
the catalog and a lookup costs a few dict probes. The text is scanned left to right, at each word
trying the longest title first (up to the longest catalog title starting with that word), so
"Deadpool 2" wins over "Deadpool" and "John Wick: Chapter 2" over "John Wick". Matches do not
overlap; a rejected candidate (below) lets a shorter one at the same word be tried. What a title
has before its first word or after its last ("(" of "(500) Days of Summer", the brackets of the
film "[REC]") joins the [ITEM] when typed there too, so no stray half of it is left in the text.

Guards. Many titles are ordinary words or names ("Us", "It", "Adam", "Glass", "Get Out", "Check
It Out", "1917"), and a wrong [ITEM] is worse than a missed one: it hides what was said and, in a
chat that excludes mentioned items, bans that movie. (On INSPIRED's test dialogues, whose movies
are already [ITEM]s, these rules link 93 times in 2,089 turns, 42 in the 1,030 seeker turns; most
are titles the annotators left unmarked, "Star Wars", "Looper", "Casino", "Frozen 2" (Frozen II);
still false are names, "Morgan", "Arnold", "Nick Fury", and "The Rock" (the actor). Before the
common-word, longer-name and other-year rules below they linked 115 times; of the 22 links those
rules removed, 19 were false ("Sir" 3 times, "It" 3, "Furious" of "Fast and the Furious (2001)"
twice, "Cool", "Good" of "Good fellas", "Me" of "Me before you", "Spider" of "Spider-Verse", "The
Rise" of "The Rise of Skywalker") and 3 were films ("Us" twice, "Signs"); on the dev split 17
removed, about 4 films ("Us" twice, "Her"). A first version, 3+ word titles in any case and no
name, all-caps or sequel rules, linked 241 times in those 2,089 turns: "check it out" 18 times, "Adam" of Adam Sandler 7, "YOU" 6;
before the cast rule of (d), "Joaquin Phoenix" starting a sentence and "Kevin hart" linked 4
times.) Sequel numbers compare alike however they are written ("Frozen 2", "Frozen II", "Frozen
two"), so a catalog's sequel is matched first; a title then followed by a number, or by "chapter
3" / "part three", is a sequel the catalog lacks and never links ("Frozen 3" is not Frozen).
Otherwise a candidate is accepted when any of these holds:
  (a) it is quoted: "..." / “...” / ‘...’ / '...' directly around it (punctuation such as
      '"It!"' may sit before the closing quote); quotes are how people mark a title;
  (b) its year follows: "It (2017)" or "It 2017". The year also picks among items of that title
      (one a year off when none has it: sources disagree, Insidious 2010 or 2011) and is consumed
      into the [ITEM]; a year no item of that title has, even a year off, names another film, and
      the title is not linked ("Fast and the Furious (2001)" is not "Furious", 1984), unless an
      item of that title has no year; a year typed without parentheses that no item has, or a
      number outside 1870-2100, is ignored ("I watched Frozen 2000 times");
  (c) the title has 4+ words and a letter: such a word sequence is rarely an accident;
  (d) otherwise (1-3 words): every title word that starts with a capital is typed with a capital
      ("Get Out", not "get out"), a leading "The" / "A" / "An" excepted ("the Lion King"); a word
      typed in capitals throughout ("IT", "YOU") only counts for a title word that is so too;
      the title must not lie inside the name of an actor or director of the catalog, however
      typed ("Joaquin Phoenix" at a sentence start, "Kevin hart"); a 1-2 word title must not
      touch another capitalised word ("Adam Sandler", "Meg Ryan": a name), and a one-word title
      must not start a sentence (text start, a new line, after . ! ? and a space, or right after
      an [ITEM]), where a capital says nothing, nor be a genre of the catalog ("I like Action
      movies"), nor be a common English word (below). A title with no capitalised word to check
      ("90 minutter", "1917") needs (a) or (b).
Whatever its length, a title joined by a hyphen to another word is part of that word ("Spider" in
"Spider-Verse"), and one of 1-2 words joined by "of" or "of the" to a capitalised word is part of
a longer name ("The Rise" in "The Rise of Skywalker", "Rings" in "Lord of the Rings", also at a
sentence start, but not "Frozen" in "Some of Frozen"); neither links unless quoted or dated.

Common words. People capitalise ordinary words mid-sentence ("thanks Sir", "that's Cool", "Me
before you"), and a catalog of 1,662 films already has one-word titles "Sir", "Cool", "Me",
"Good", "Earth", "Hello", "Friends", "Today". A one-word title whose word is common in English,
a Zipf frequency of at least `common_zipf` (default 4.5, about once in 30,000 words) in the
`wordfreq` package's English list, links only quoted or dated. The price is films named by such a
word ("Up", "Her", "Cars", "Heat", "Glass", "Split", "It", "Us"): typed bare they are not read as
films, and `pecrs chat` shows what it read so a user can quote them. (On INSPIRED's train
dialogues the rule and the longer-name rules remove 173 of 941 links of 1-3 words; read by eye,
about a quarter of those were films: "Us" 19 times, about half of the 32 "It"s, "Split" 4 times.)
Rarer one-word titles ("Looper" 2.5, "Deadpool" 3.2, "Frozen" 4.3, "Batman" 4.2) link as before. Names that are titles
("Morgan", "Arnold", "Veronica") are not caught: a first-name rule would also drop "Rocky",
"Logan", "Carrie" and "Annabelle".

Remakes. Several items may share a title key ("It" 1990 and 2017): the year of (b) picks one, else
the most recent (no year counts as oldest); ties keep catalog order.

The same film under several ids (one title key, years at most one apart) is `pecrs.twins`'s.

Placeholders already in the text are left alone and never matched into (titles are found only
between them). `link(text, items)` takes the ids of those placeholders and returns the ids of all
placeholders in text order; a count that does not match raises ValueError.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

from .data import ITEM, Item

# A word: letters/digits, combining marks after them, apostrophes only inside ("Charlie's").
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = re.compile(rf"[^\W_](?:[^\W_]|[{_MARKS}]|['’](?=[^\W_]))*")
_YEAR = re.compile(r"[ \t]*\([ \t]*(\d{4})[ \t]*\)|[ \t]+(\d{4})(?!\w)")
# "Frozen 3", "Rocky VII", "John Wick chapter 4": a sequel the catalog lacks (one it has matched first).
_SEQUEL = re.compile(r"[ \t]+(?:(?i:chapter|part|episode|vol\.?|volume)[ \t]+)?"
                     r"(?:\d{1,3}|II|III|IV|V|VI|VII|VIII|IX|X|(?i:two|three|four|five|six))(?![\w'’])")
# Sequel numbers compare alike however they are written: "Frozen 2" finds "Frozen II".
_NUMERALS = {**{r: str(n) for n, r in enumerate(["ii", "iii", "iv"], 2)},
             **{r: str(n) for n, r in enumerate(["vi", "vii", "viii", "ix"], 6)},
             **{w: str(n) for n, w in enumerate(["two", "three", "four", "five", "six", "seven", "eight", "nine"], 2)}}
_ARTICLES = {"the", "a", "an"}   # a title's leading article may be typed in lowercase
_HYPHENS = "-\u2010\u2011"       # hyphen-minus, hyphen, non-breaking hyphen
# "Some of Frozen", "One of the Avengers": before "of (the)", a part of what follows, not a name.
_PARTITIVES = set("some most all both any none many few each several half part rest more much one two three lots "
                  "plenty couple because out instead kind sort fan fans speaking think either neither top end".split())
# A year (rule b) is one of 1870 to 2100: "Frozen 1000 times" is no date.
_YEARS = range(1870, 2101)
_QUOTES = {'"': '"', "“": "”", "‘": "’", "'": "'"}
_TRAILING = ".,!?;:"           # may stand between a quoted title and its closing quote
_OPENERS = " \t\r\"'“‘(["      # skipped when looking back for a sentence start


def word_key(word: str) -> str:
    """The comparison key of one word: apostrophes dropped, accents folded, casefolded, and a
    roman numeral from II to IX (not I, V, X: words and letters) or a number word from two to nine
    written as digits."""
    if word.isascii():                     # the common case, and what the general one gives
        key = word.replace("'", "").lower()
    else:
        word = unicodedata.normalize("NFKD", word.replace("'", "").replace("’", ""))
        key = "".join(c for c in word if not unicodedata.combining(c)).casefold()
    return _NUMERALS.get(key, key)


def title_words(title: str) -> tuple[list[str], tuple[str, ...]]:
    """A title's words as written and its comparison key, one `word_key` per word: how the linker
    indexes titles and how `same_film` groups them."""
    words = _WORD.findall(title)
    return words, tuple(map(word_key, words))


def _words(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int, str, str]]:
    """(start, end, key, word as typed) of each word of text[start:end], offsets into text."""
    return [(m.start(), m.end(), word_key(m.group()), m.group())
            for m in _WORD.finditer(text, start, len(text) if end is None else end)]


class _Title:
    """The items sharing one title key, most recent first, and what the guards need to know."""

    __slots__ = ("items", "letters", "n_words")

    def __init__(self, key: tuple[str, ...]):
        self.items: list[tuple[Item, tuple[str, ...]]] = []  # (item, its title's words)
        self.letters = any(c.isalpha() for word in key for c in word)
        self.n_words = len(key)

    def pick(self, year: int | None = None, typed: Sequence[str] = ()) -> Item | None:
        """The first item (most recent first) with this year, or whose capitals `typed` has."""
        for item, words in self.items:
            if year is not None and item.year != year:
                continue
            if typed and not _capitals_typed(words, typed):
                continue
            return item
        return None


def _capitals_typed(title: Sequence[str], typed: Sequence[str]) -> bool:
    """Rule (d)'s casing: each capitalised title word is typed capitalised (a leading article may
    be lowercase; a word typed all in capitals counts only for a title word that is too), and
    at least one capitalised word was checked."""
    checked = 0
    for k, (word, as_typed) in enumerate(zip(title, typed)):
        if (not word[0].isupper() or (k == 0 and len(title) > 1 and word.lower() in _ARTICLES)
                or word_key(word).isdigit()):     # "II" may be typed "2" or "two"
            continue
        shouting = len(as_typed) > 1 and as_typed.isupper() and not word.isupper()
        if not as_typed[0].isupper() or shouting:
            return False
        checked += 1
    return checked > 0


class TitleLinker:
    """Finds catalog titles in free text; see the module docstring for the rules."""

    def __init__(self, items: Sequence[Item], common_zipf: float = 4.5):
        self._titles: dict[tuple[str, ...], _Title] = {}
        self._longest: dict[str, int] = {}     # first word key -> most words of a title starting so
        # "I like Action movies": a one-word title that is also a genre name needs quotes or a year.
        self._genres = {word_key(g) for item in items for g in item.genres if " " not in g.strip()}
        # "Joaquin Phoenix is great": a title inside a cast or crew member's name is part of the name.
        self._people = {key for item in items for person in (*item.actors, *item.directors)
                        if len(key := title_words(person)[1]) > 1}
        self._longest_person = max(map(len, self._people), default=0)
        self._edges: dict[str, tuple[str, str]] = {}   # id -> what its title has before its first word, after its last
        for item in items:
            words, key = title_words(item.title)
            if not key:
                continue
            spans = [m.span() for m in _WORD.finditer(item.title)]
            self._edges[item.id] = (item.title[:spans[0][0]].strip(), item.title[spans[-1][1]:].strip())
            title = self._titles.get(key)
            if title is None:
                title = self._titles[key] = _Title(key)
            title.items.append((item, tuple(words)))
            self._longest[key[0]] = max(self._longest.get(key[0], 0), len(key))
        for title in self._titles.values():      # stable: equal years keep catalog order
            if len(title.items) > 1:
                title.items.sort(key=lambda pair: -pair[0].year if pair[0].year is not None else math.inf)
        # "that's Cool", "thanks Sir": one-word titles that are common English words (module docstring).
        self._common = _common_words({key[0] for key in self._titles if len(key) == 1}, common_zipf)

    def matches(self, text: str) -> list[tuple[int, int, str]]:
        """(char start, char end, item id) of each recognised title, in text order. The end
        includes a consumed year; existing [ITEM] placeholders are never matched into."""
        found: list[tuple[int, int, str]] = []
        start = 0
        for placeholder in [*re.finditer(re.escape(ITEM), text), None]:
            end = placeholder.start() if placeholder else len(text)
            found += self._scan(text, _words(text, start, end))
            start = placeholder.end() if placeholder else end
        for k, (start, end, id_) in enumerate(found):   # typed edges join the [ITEM]: not "([ITEM]"
            before, after = self._edges[id_]
            start -= len(before) if start >= len(before) and text.startswith(before, start - len(before)) else 0
            found[k] = (start, end + (len(after) if text.startswith(after, end) else 0), id_)
        return found

    def link(self, text: str, items: Sequence[str] = ()) -> tuple[str, list[str]]:
        """text with each recognised title replaced by [ITEM], and the ids of all [ITEM]
        placeholders in text order; `items` are the ids of the placeholders already there."""
        existing = [m.start() for m in re.finditer(re.escape(ITEM), text)]
        if len(existing) != len(items):
            raise ValueError(f"text has {len(existing)} {ITEM} placeholders but {len(items)} item ids "
                             "were given")
        found = self.matches(text)
        if not found:
            return text, list(items)
        marks = sorted([(pos, pos + len(ITEM), id_) for pos, id_ in zip(existing, items)] + found)
        parts, ids, at = [], [], 0
        for start, end, id_ in marks:
            parts += [text[at:start], ITEM]
            ids.append(id_)
            at = end
        return "".join(parts) + text[at:], ids

    # ---- matching ---------------------------------------------------------------------------

    def _scan(self, text: str, words: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str]]:
        """Greedy left-to-right, longest title first, over the words of one placeholder-free span."""
        found, i = [], 0
        while i < len(words):
            hit = None
            for n in range(min(self._longest.get(words[i][2], 0), len(words) - i), 0, -1):
                title = self._titles.get(tuple(w[2] for w in words[i:i + n]))
                if title is not None and (hit := self._accept(text, words, i, n, title)):
                    break
            if hit is None:
                i += 1
                continue
            found.append(hit)
            while i < len(words) and words[i][0] < hit[1]:   # past the title and a consumed year
                i += 1
        return found

    def _accept(self, text: str, words: list[tuple[int, int, str, str]], i: int, n: int,
                title: _Title) -> tuple[int, int, str] | None:
        """(start, end, id) if the guards accept words[i:i+n] as `title`, else None."""
        span = words[i:i + n]
        start, end = span[0][0], span[-1][1]
        year = _YEAR.match(text, end)
        typed_year = int(year.group(1) or year.group(2)) if year else None
        if typed_year in _YEARS:                                                       # (b)
            item = title.pick(year=typed_year) or title.pick(year=typed_year - 1) or title.pick(year=typed_year + 1)
            if item:
                return start, year.end(), item.id
            # "(2001)" dates another film, unless an undated item may be that film; a bare number
            # may be anything ("I watched Frozen 2000 times") and is ignored
            if year.group(1) and all(it.year is not None for it, _ in title.items):
                return None
        if _SEQUEL.match(text, end):
            return None
        if _quoted(text, start, end):                                                  # (a)
            return start, end, title.items[0][0].id
        if _hyphenated(text, start, end) or (n <= 2 and _joined_by_of(text, words, i, n)):
            return None
        if title.letters and title.n_words >= 4:                                       # (c)
            return start, end, title.items[0][0].id
        if n == 1 and (_sentence_start(text, start) or span[0][2] in self._genres or span[0][2] in self._common):
            return None
        if (n <= 2 and _touches_a_name(text, words, i, n)) or self._inside_a_person(words, i, n):
            return None
        item = title.pick(typed=[w[3] for w in span])          # (d); no capitals: no item
        return (start, end, item.id) if item else None

    def _inside_a_person(self, words: list[tuple[int, int, str, str]], i: int, n: int) -> bool:
        """Whether words[i:i+n] lie inside a longer run of words that is the name of an actor or
        director of the catalog, however typed ("joaquin Phoenix", "Joaquin Phoenix" starting a
        sentence, where the capital rule of _touches_a_name says nothing)."""
        keys = [w[2] for w in words]
        return any(tuple(keys[j:j + m]) in self._people
                   for j in range(max(0, i + n - self._longest_person), i + 1)
                   for m in range(max(i + n - j, 2), min(self._longest_person, len(keys) - j) + 1)
                   if m > n)


def _common_words(keys: Iterable[str], min_zipf: float) -> frozenset[str]:
    """Those of `keys` (word keys) whose Zipf frequency (log10 of uses per 10^9 words) in wordfreq's
    English "small" list (every word down to Zipf 3; loads in ~20 ms) is at least `min_zipf`.
    Imported here: only a linker needs it, and `pecrs` imports this module for `title_words`."""
    from wordfreq import get_frequency_dict

    frequency = get_frequency_dict("en", wordlist="small")          # word -> f; Zipf = log10(f) + 9
    return frozenset(k for k in keys if frequency.get(k, 0.0) >= 10.0 ** (min_zipf - 9))


def _hyphenated(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is joined by a hyphen (ASCII, or the Unicode hyphens that autocorrect
    types) to a word before or after ("Spider-Verse")."""
    return ((start >= 2 and text[start - 1] in _HYPHENS and text[start - 2].isalnum())
            or (end + 1 < len(text) and text[end] in _HYPHENS and text[end + 1].isalnum()))


def _joined_by_of(text: str, words: list[tuple[int, int, str, str]], i: int, n: int) -> bool:
    """Whether words[i:i+n] are joined by "of" or "of the" to a capitalised word, as part of a
    longer name: "The Rise of Skywalker", "Lord of the Rings". The word before may start a
    sentence ("Lord of the Rings is great"), unless it is a word such as "Some" or "One" that
    reads a part of what follows ("Some of Frozen")."""
    key = lambda j: words[j][2] if 0 <= j < len(words) else None     # noqa: E731; None outside the text

    def name_word(j: int, a: int, b: int, at_sentence_start: bool) -> bool:
        """words[j] capitalised (at a sentence start only if allowed), only spaces in words a..b."""
        return (0 <= j < len(words) and words[j][3][0].isupper()
                and (at_sentence_start or not _sentence_start(text, words[j][0]))
                and all(text[words[k][1]:words[k + 1][0]].strip(" \t") == "" for k in range(a, b)))

    after = i + n                                    # "of" right after the title, then maybe "the"
    if key(after) == "of":
        name = after + 1 + (key(after + 1) == "the")
        if name_word(name, i + n - 1, name, at_sentence_start=False):
            return True
    before = i - 1 - (key(i - 1) == "the")           # "of" right before the title, or before "the"
    if before >= 1 and key(before) == "of":
        return key(before - 1) not in _PARTITIVES and name_word(before - 1, before - 1, i, at_sentence_start=True)
    return False


def _quoted(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is directly enclosed in matching quotes."""
    close = _QUOTES.get(text[start - 1]) if start > 0 else None
    if close is None:
        return False
    while end < len(text) and text[end] in _TRAILING:
        end += 1
    return end < len(text) and text[end] == close


def _sentence_start(text: str, start: int) -> bool:
    """Whether a word at `start` begins the text, a line or a sentence (after . ! ? and a space),
    or follows an [ITEM] ("[ITEM] It is great": "It" starts a clause)."""
    at = start
    while at > 0 and text[at - 1] in _OPENERS:
        at -= 1
    return (at == 0 or text[at - 1] == "\n" or (text[at - 1] in ".!?" and at < start)
            or text.endswith(ITEM, 0, at))


def _touches_a_name(text: str, words: list[tuple[int, int, str, str]], i: int, n: int) -> bool:
    """Whether words[i:i+n] sit next to a capitalised word with only spaces between, as a first or
    last name does ("Adam Sandler", "Meg Ryan"); "I" and a sentence's first word say nothing."""
    def capitalised(j: int) -> bool:
        word = words[j][3]
        return word[0].isupper() and word != "I" and not word.startswith(("I'", "I’"))

    before, after = i - 1, i + n
    return ((before >= 0 and text[words[before][1]:words[i][0]].strip(" \t") == ""
             and capitalised(before) and not _sentence_start(text, words[before][0]))
            or (after < len(words) and text[words[after - 1][1]:words[after][0]].strip(" \t") == ""
                and capitalised(after)))

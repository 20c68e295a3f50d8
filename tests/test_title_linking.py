"""TitleLinker: typed catalog titles become [ITEM] mentions, with guards against ordinary words
that happen to be titles ("It", "Us", "Glass", "1917")."""
import math
import random
from pathlib import Path

import pytest

from pecrs.data import ITEM, Item
from pecrs.title_linking import TitleLinker

DATA = Path(__file__).parents[2] / "shared" / "datasets"

CATALOG = [
    Item("endgame", "Avengers: Endgame", 2019),
    Item("angels00", "Charlie's Angels", 2000),
    Item("angels19", "Charlie's Angels", 2019),
    Item("amelie", "Amélie", 2001),
    Item("deadpool", "Deadpool", 2016),
    Item("deadpool2", "Deadpool 2", 2018),
    Item("wick", "John Wick", 2014),
    Item("wick2", "John Wick: Chapter 2", 2017),
    Item("it90", "It", 1990),
    Item("it17", "It", 2017),
    Item("glass", "Glass", 2019),
    Item("getout", "Get Out", 2017),
    Item("1917", "1917", 2019),
    Item("lion94", "The Lion King", 1994),
    Item("lion-none", "The Lion King", None),
    Item("lion19", "The Lion King", 2019),
    Item("lion19b", "The Lion King", 2019),
    Item("us", "Us", 2019),
    Item("minutter", "90 minutter", 2012),
    Item("item", "Item", 2000),
    Item("checkitout", "Check It Out", 2010),
    Item("adam", "Adam", 2009),
    Item("ryan", "Ryan", 2004),
    Item("you", "You", 2018),
    Item("frozen", "Frozen", 2013),
]


@pytest.fixture(scope="module")
def linker():
    """The common-word rule off (it is tested on its own below), so that ordinary words such as
    "It", "Glass" and "You" can exercise the other guards."""
    return TitleLinker(CATALOG, common_zipf=math.inf)


# ---- words ----------------------------------------------------------------------------------

def test_long_titles_link_in_lowercase_shorter_ones_need_their_capitals(linker):
    assert linker.link("have you seen john wick chapter 2?") == (f"have you seen {ITEM}?", ["wick2"])
    # 3 words: capitals as in the title, but a leading article may be lowercase
    assert linker.link("i loved the lion king as a kid") == ("i loved the lion king as a kid", [])
    assert linker.link("i loved the Lion King as a kid") == (f"i loved {ITEM} as a kid", ["lion19"])
    assert linker.link("I'll check it out") == ("I'll check it out", [])
    assert linker.link("I'll Check It Out") == (f"I'll {ITEM}", ["checkitout"])
    # two words share the key of "Avengers: Endgame" but lowercase needs quotes or a year (rule d)
    assert linker.link("have you seen avengers endgame?") == ("have you seen avengers endgame?", [])
    assert linker.link('have you seen "avengers endgame"?') == (f'have you seen "{ITEM}"?', ["endgame"])
    assert linker.link("have you seen avengers endgame 2019?") == (f"have you seen {ITEM}?", ["endgame"])


@pytest.mark.parametrize("typed, expected", [
    ("Avengers: Endgame", "endgame"), ("Avengers Endgame", "endgame"),
    ("Charlies Angels", "angels19"), ("Charlie’s Angels", "angels19"), ("Charlie's Angels", "angels19"),
    ("Amelie", "amelie"), ("Amélie", "amelie"), ("Ame\u0301lie", "amelie"),
])
def test_punctuation_apostrophes_and_accents_are_folded(linker, typed, expected):
    assert linker.link(f"I watched {typed} twice") == (f"I watched {ITEM} twice", [expected])


def test_longest_title_wins(linker):
    assert linker.link("I like Deadpool 2 more than Deadpool") == (f"I like {ITEM} more than {ITEM}",
                                                                     ["deadpool2", "deadpool"])
    assert linker.link("I prefer John Wick: Chapter 2") == (f"I prefer {ITEM}", ["wick2"])
    assert linker.link("I prefer John Wick to it") == (f"I prefer {ITEM} to it", ["wick"])


# ---- guards ---------------------------------------------------------------------------------

def test_one_word_title_links_only_capitalised_mid_sentence(linker):
    assert linker.link("I liked Glass a lot") == (f"I liked {ITEM} a lot", ["glass"])
    assert linker.link("Glass is great") == ("Glass is great", [])            # text start
    assert linker.link("Sure. Glass is great") == ("Sure. Glass is great", [])  # sentence start
    assert linker.link("Sure!\nGlass is great") == ("Sure!\nGlass is great", [])
    assert linker.link("a glass of water") == ("a glass of water", [])       # lowercase


def test_two_word_title_needs_capitals_but_may_start_a_sentence(linker):
    assert linker.link("get out of here") == ("get out of here", [])
    assert linker.link("Get out of here") == ("Get out of here", [])
    assert linker.link("Get Out was great") == (f"{ITEM} was great", ["getout"])


def test_it_is_linked_only_when_marked(linker):
    assert linker.link("I love it") == ("I love it", [])
    assert linker.link("It was fun") == ("It was fun", [])
    for quoted in ('"It"', "“It”", "'It'", "‘It’", '"It!"'):
        assert linker.link(f"I love {quoted}")[1] == ["it17"], quoted
    assert linker.link('"It was fun," she said') == ('"It was fun," she said', [])  # not enclosed


def test_year_selects_the_item_and_is_consumed(linker):
    assert linker.link("It (2017) was scary") == (f"{ITEM} was scary", ["it17"])
    assert linker.link("It (1990) was scary") == (f"{ITEM} was scary", ["it90"])
    assert linker.link("i saw it 1990 on tv") == (f"i saw {ITEM} on tv", ["it90"])
    # a year no "It" has, even a year off, names another film: not linked, however typed
    assert linker.link("I saw It (2005)") == ("I saw It (2005)", [])
    assert linker.link("i saw it (2005)") == ("i saw it (2005)", [])
    assert linker.link("I saw It (2018)") == (f"I saw {ITEM}", ["it17"])   # a year off: sources disagree
    furious = TitleLinker([Item("f84", "Furious", 1984), Item("lion", "The Lion King", 1994),
                           Item("ham", "Hamilton", None), Item("frozen", "Frozen", 2013)])
    assert furious.link("I loved Fast and the Furious (2001)") == ("I loved Fast and the Furious (2001)", [])
    assert furious.link("I loved Furious") == (f"I loved {ITEM}", ["f84"])
    assert furious.link("the Lion King (1995) and Furious (1984)")[1] == ["lion", "f84"]
    # an undated item may be the film of any year; a bare number is no date, nor is 1000
    assert furious.link("I saw Hamilton (2020)") == (f"I saw {ITEM} (2020)", ["ham"])
    assert furious.link("I watched Frozen 2000 times")[1] == ["frozen"]
    assert furious.link("I watched Frozen (1000) times")[1] == ["frozen"]


def test_names_shouting_and_sequels_do_not_link(linker):
    """The false links a looser linker made most on INSPIRED's test dialogues."""
    assert linker.link("I like movies with Adam Sandler") == ("I like movies with Adam Sandler", [])
    assert linker.link("anything with Meg Ryan?") == ("anything with Meg Ryan?", [])
    assert linker.link("I LOVE IT, THANK YOU") == ("I LOVE IT, THANK YOU", [])
    assert linker.link("my kids loved Frozen 2") == ("my kids loved Frozen 2", [])
    assert linker.link(f"Have you seen {ITEM} It is great", ["x"]) == (f"Have you seen {ITEM} It is great", ["x"])
    # the same titles, typed as titles, still link
    assert linker.link("I loved Adam, and You too")[1] == ["adam", "you"]
    assert linker.link("Watched Frozen yesterday") == (f"Watched {ITEM} yesterday", ["frozen"])
    assert linker.link("I think Frozen I liked")[1] == ["frozen"]        # "I" is not a name


def test_common_words_link_only_quoted_or_dated():
    """"Sir", "Cool", "It" capitalised mid-sentence are more often words than films (INSPIRED's dev
    and test dialogues: pecrs/title_linking.py); rarer one-word titles still link bare."""
    linker = TitleLinker(CATALOG + [Item("sir", "Sir", 2018), Item("cool", "Cool!", 2004),
                                    Item("looper", "Looper", 2012)])
    for text in ("Hmm just 4 hours Sir!", "I want to watch the trailer Cool thanks", "Got It.",
                 "I liked Glass a lot", "Thank You"):
        assert linker.link(text) == (text, []), text
    assert linker.link("I liked Looper a lot") == (f"I liked {ITEM} a lot", ["looper"])
    assert linker.link("my kids loved Frozen") == (f"my kids loved {ITEM}", ["frozen"])
    assert linker.link('I liked "Glass" a lot')[1] == ["glass"]              # (a) quotes
    assert linker.link("I liked Glass (2019) a lot")[1] == ["glass"]         # (b) a year
    assert linker.link("I liked Get Out a lot")[1] == ["getout"]             # two words: not this rule
    # the threshold is the caller's: at Zipf 7 only "it" and "you" would be common, and neither is
    # "glass" (4.85) nor "sir" (5.06); at 4.5 (the default) both are
    lenient = TitleLinker(CATALOG + [Item("sir", "Sir", 2018)], common_zipf=7.0)
    assert lenient.link("I liked Glass, Sir")[1] == ["glass", "sir"]


def test_a_title_inside_a_longer_name_is_not_linked():
    """Joined by a hyphen ("Spider-Verse") or by "of" / "of the" to a capitalised word ("The Rise of
    Skywalker", "Lord of the Rings"): part of a longer name, unless quoted or dated."""
    linker = TitleLinker([Item("spider", "Spider", 2002), Item("rise", "The Rise", 2012),
                          Item("rings", "Rings", 2017), Item("joker", "Joker", 2019)], common_zipf=math.inf)
    for text in ("I watched Into the Spider-Verse", "a Spider-like hero", "would you like to see The Rise of Skywalker?",
                 "I love Lord of the Rings", "Beyond: Return Of The Joker?", "Maleficent Mistress of Joker",
                 "Lord of the Rings is great", 'Yes! "Lord of the Rings" rocks', "(Return of the Joker)",
                 "I saw Spider\u2010Man"):    # the name may start a sentence; a Unicode hyphen is one
        assert linker.link(text) == (text, []), text
    assert linker.link("Some of Rings was fun")[1] == ["rings"]               # "Some of": a part, not a name
    assert linker.link("I saw Spider last week")[1] == ["spider"]
    assert linker.link("I saw The Rise of the film")[1] == ["rise"]          # "of" then a lowercase word
    assert linker.link("I saw Rings. Of the two, Rings is better")[1] == ["rings", "rings"]  # "Of" starts a sentence
    assert linker.link('I love Lord of the "Rings"')[1] == ["rings"]         # quotes win
    assert linker.link("I love Lord of the Rings (2017)")[1] == ["rings"]    # so does a year


def test_sequel_numbers_compare_alike_however_written():
    linker = TitleLinker([Item("f", "Frozen", 2013), Item("f2", "Frozen II", 2019), Item("w", "John Wick", 2014),
                          Item("it2", "It Chapter Two", 2019), Item("it", "It", 2017)])
    for typed in ("Frozen 2", "Frozen II", "Frozen two"):
        assert linker.link(f"We loved {typed} a lot")[1] == ["f2"], typed
    assert linker.link("Frozen 2 was great")[1] == ["f2"]         # digits need no capital
    assert linker.link("I saw It Chapter 2")[1] == ["it2"]
    # a sequel the catalog lacks is never read as the first film
    assert linker.link("I saw Frozen 3") == ("I saw Frozen 3", [])
    assert linker.link("John Wick chapter 3 is next") == ("John Wick chapter 3 is next", [])
    assert linker.link("John Wick Part Three next") == ("John Wick Part Three next", [])


def test_a_genre_name_is_not_a_title_unless_marked():
    linker = TitleLinker([Item("a", "Action", 1999, genres=("Action",)), Item("r", "Romance", 1999,
                                                                              genres=("Romance", "Drama"))])
    assert linker.link("I like Action movies and Romance") == ("I like Action movies and Romance", [])
    assert linker.link('I like "Action" (1999)')[1] == ["a"]


def test_a_title_inside_a_cast_members_name_is_not_linked():
    """Where the capital rule cannot tell (the name starts a sentence, or its last part is typed
    in lowercase), the catalog's own actors and directors can: "Phoenix" in "Joaquin Phoenix"."""
    linker = TitleLinker([Item("joker", "Joker", 2019, actors=("Joaquin Phoenix", "Robert De Niro")),
                          Item("phoenix", "Phoenix", 2014), Item("kevin", "Kevin", 2020),
                          Item("hart", "Central Intelligence", 2016, actors=("Kevin Hart",)),
                          Item("erin", "Erin Brockovich", 2000, directors=("Erin Brockovich",))])
    for text in ("Joaquin Phoenix is great in that.", "Do you know Kevin hart?", "joaquin Phoenix, yes"):
        assert linker.link(text) == (text, [])
    assert linker.link("I saw Phoenix last week") == (f"I saw {ITEM} last week", ["phoenix"])
    assert linker.link('Joaquin "Phoenix" no') == (f'Joaquin "{ITEM}" no', ["phoenix"])       # quotes win
    assert linker.link("I loved Erin Brockovich") == (f"I loved {ITEM}", ["erin"])   # the whole name is the title


def test_same_film_finds_duplicates_not_remakes():
    from pecrs.twins import same_film, with_twins

    items = [Item("w1", "John Wick: Chapter 2", 2017), Item("w2", "John Wick Chapter 2", 2017),
             Item("i1", "Insidious", 2010), Item("i2", "Insidious", 2011), Item("l1", "The Lion King", 1994),
             Item("l2", "The Lion King", 2019), Item("n1", "Nameless", None), Item("n2", "Nameless", None),
             Item("solo", "Solo", 2018)]
    twins = same_film(items)
    assert twins == {"w1": ("w2",), "w2": ("w1",), "i1": ("i2",), "i2": ("i1",), "n1": ("n2",), "n2": ("n1",)}
    assert with_twins(["solo", "w2", "w1"], twins) == ["solo", "w2", "w1"]
    assert with_twins(["l1", "i2"], twins) == ["l1", "i2", "i1"]


def test_same_title_defaults_to_most_recent(linker):
    assert linker.link("I liked Charlie's Angels")[1] == ["angels19"]
    # no year counts as oldest; equal years keep catalog order
    assert TitleLinker(CATALOG[::-1]).link("the Lion King")[1] == ["lion19b"]
    assert linker.link("the Lion King")[1] == ["lion19"]
    assert TitleLinker([Item("a", "Heat", None), Item("b", "Heat", 1995)]).link('I saw "Heat"')[1] == ["b"]
    assert TitleLinker([Item("a", "Heat", None), Item("b", "Heat", None)]).link('I saw "Heat"')[1] == ["a"]


def test_titles_without_letters_or_capitals_need_quotes_or_year(linker):
    assert linker.link("I watched 1917 twice") == ("I watched 1917 twice", [])
    assert linker.link('I watched "1917" twice') == (f'I watched "{ITEM}" twice', ["1917"])
    assert linker.link("I watched 1917 (2019) twice") == (f"I watched {ITEM} twice", ["1917"])
    assert linker.link("I watched 1917 (2017) twice") == ("I watched 1917 (2017) twice", [])
    assert linker.link("I watched 1917 (2018) twice")[1] == ["1917"]       # a year off: sources disagree
    assert linker.link("I watched 90 minutter") == ("I watched 90 minutter", [])
    assert linker.link("I watched '90 minutter'")[1] == ["minutter"]


# ---- placeholders and the API ---------------------------------------------------------------

def test_existing_placeholders_are_kept_and_ids_merged_in_order(linker):
    text = f"I liked {ITEM} and Glass, then {ITEM}"   # "ITEM" is also a title: never matched inside
    assert linker.link(text, ["a", "b"]) == (f"I liked {ITEM} and {ITEM}, then {ITEM}", ["a", "glass", "b"])
    # titles are not matched across a placeholder
    assert linker.link(f"I saw Deadpool {ITEM} 2", ("x",)) == (f"I saw {ITEM} {ITEM} 2", ["deadpool", "x"])
    assert linker.link(f"only {ITEM}", ["a"]) == (f"only {ITEM}", ["a"])


def test_placeholder_count_must_match_items(linker):
    with pytest.raises(ValueError):
        linker.link(f"{ITEM} and {ITEM}", ["a"])
    with pytest.raises(ValueError):
        linker.link("no placeholder", ["a"])


def test_empty_and_unmatched_text_come_back_unchanged(linker):
    assert linker.link("") == ("", [])
    assert linker.link("nothing to see here") == ("nothing to see here", [])
    assert TitleLinker([]).link("I saw Glass") == ("I saw Glass", [])


def test_matches_gives_char_spans(linker):
    text = 'I saw It (2017) and "Us", then Avengers Endgame.'
    spans = linker.matches(text)
    assert spans == [(6, 15, "it17"), (21, 23, "us"), (31, 47, "endgame")]
    assert [text[s:e] for s, e, _ in spans] == ["It (2017)", "Us", "Avengers Endgame"]
    assert linker.matches(f"{ITEM} Item") == []               # right after an [ITEM]: a clause start
    assert linker.matches(f"{ITEM} and Item") == [(11, 15, "item")]


def test_synthetic_large_catalog_links_its_titles():
    """Many titles sharing first words: the longest-first scan still finds the right ones (the
    speed is benchmarks/title_linking.py's)."""
    rng = random.Random(0)
    vocab = ["night", "game", "dark", "movie"] + [f"w{k}" for k in range(50)]
    items = [Item(str(n), " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 6))).title(), 2000 + n)
             for n in range(20_000)] + [Item("target", "The Dark Night Of The Game", 1999)]
    text, ids = TitleLinker(items).link("what would you say of The Dark Night Of The Game and more")
    assert text == f"what would you say of {ITEM} and more" and ids == ["target"]


# ---- the real catalog -----------------------------------------------------------------------

@pytest.mark.skipif(not (DATA / "inspired" / "items.jsonl").is_file(), reason="shared datasets not present")
def test_inspired_catalog():
    from pecrs.loaders import load_items

    items = load_items(DATA / "inspired" / "items.jsonl")
    linker = TitleLinker(list(items.values()))
    text, ids = linker.link("Hi! I love scary movies like The Conjuring. What should I watch?")
    assert text == f"Hi! I love scary movies like {ITEM}. What should I watch?"
    assert [items[i].title for i in ids] == ["The Conjuring"]
    # "Yesterday" starts the sentence, "us" and "it" are lowercase, and "It" capitalised
    # mid-sentence is a common word: only its quotes make it the film, the most recent "It"
    text = "Yesterday I watched It with my sister, and us two loved it"
    assert linker.link(text) == (text, [])
    text, ids = linker.link('Yesterday I watched "It" with my sister, and us two loved it')
    assert text == f'Yesterday I watched "{ITEM}" with my sister, and us two loved it'
    assert [(items[i].title, items[i].year) for i in ids] == [("It", 2017)]
    # INSPIRED's catalog has "Sir" and "Cool!"; "Looper" is rare enough to link bare
    assert linker.link("Thanks Sir, that sounds Cool")[1] == []
    assert [items[i].title for i in linker.link("I liked Looper a lot")[1]] == ["Looper"]


def test_a_titles_own_edge_characters_join_its_item():
    """What a title has before its first word or after its last ("(500) Days of Summer", the film
    "[REC]", "Emma.") is part of the mention when typed there: no "([ITEM]" or "[[ITEM]]" left."""
    linker = TitleLinker([Item("500", "(500) Days of Summer", 2009), Item("rec", "[REC]", 2007),
                          Item("emma", "Emma.", 2020), Item("heat", "Heat", 1995)], common_zipf=math.inf)
    assert linker.link("I loved (500) Days of Summer") == ("I loved [ITEM]", ["500"])
    assert linker.link('I loved "(500) Days of Summer"!') == ('I loved "[ITEM]"!', ["500"])
    assert linker.link("Have you seen [REC]?") == ("Have you seen [ITEM]?", ["rec"])
    assert linker.link("I loved 500 Days of Summer") == ("I loved [ITEM]", ["500"])   # edges typed or not
    assert linker.link("Seen Emma. Loved it") == ("Seen [ITEM] Loved it", ["emma"])
    assert linker.link("I saw (Heat) twice") == ("I saw ([ITEM]) twice", ["heat"])      # not the title's own

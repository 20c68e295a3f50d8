"""Bad dataset files the loaders once let through as tracebacks or unclear messages: each one is
now a DataError naming the file, the line and the field, in plain words."""
import json

import pytest

from pecrs.cli import main
from pecrs.data import DataError
from pecrs.loaders import load_dataset, load_items
from pecrs.testing import tsv_folder, write_jsonl

ITEMS = [{"id": "10", "title": "Heat", "year": 1995}, {"id": "20", "title": "Up", "year": 2009}]
GOOD = {"id": "d0", "turns": [{"role": "seeker", "text": "Hi"},
                              {"role": "recommender", "text": "Try [ITEM]", "items": ["10"]}]}


def error(folder, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_dataset(folder, **kwargs)
    return info.value


def jsonl_folder(tmp_path, train_rows):
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    return tmp_path


def redial_folder(tmp_path, conv):
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    write_jsonl(tmp_path / "official" / "test_data.jsonl", [conv])
    return tmp_path


def conv(**changes):
    c = {"conversationId": "7", "initiatorWorkerId": 1, "respondentWorkerId": 2,
         "movieMentions": {"10": "Heat (1995)"}, "respondentQuestions": {"10": {}},
         "messages": [{"senderWorkerId": 1, "text": "hi"}, {"senderWorkerId": 2, "text": "@10!"}]}
    c.update(changes)
    return c


def test_deeply_nested_json(tmp_path):
    path = tmp_path / "train.jsonl"
    jsonl_folder(tmp_path, [GOOD])
    path.write_text(json.dumps(GOOD) + "\n" + '{"id": ' + "[" * 100_000 + "\n")
    e = error(tmp_path)
    assert e.path == str(path) and e.line == 2 and "nested too deeply" in str(e)


def test_huge_integer_in_json(tmp_path):
    jsonl_folder(tmp_path, ['{"id": ' + "9" * 5000 + ', "turns": []}'])
    e = error(tmp_path)
    assert e.path.endswith("train.jsonl") and e.line == 1 and "malformed JSON" in str(e)


def test_json_error_wording(tmp_path):
    jsonl_folder(tmp_path, [GOOD, '{"id": "d1", "turns": "unterminated'])
    message = str(error(tmp_path))
    assert "train.jsonl:2" in message and "at at" not in message
    assert "Unterminated string starting at column 23" in message
    jsonl_folder(tmp_path, ['{"id": "d1", "turns": }'])
    assert "train.jsonl:1: malformed JSON: Expecting value at column 23" in str(error(tmp_path))


@pytest.mark.parametrize("data, line, column", [
    (b'{"id": "10", "title": "Caf\xe9"}\n', 1, 27),                 # Latin-1, not UTF-8
    (b'{"id": "10", "title": "Heat"}\n{"id": "20", "title": "\xff"}\n', 2, 24),
])
def test_non_utf8_bytes_name_file_line_and_column(tmp_path, data, line, column):
    path = tmp_path / "items.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        load_items(path)
    e = info.value
    assert (e.path, e.line) == (str(path), line) and f"column {column}" in str(e) and "UTF-8" in str(e)


def test_non_utf8_in_tsv_and_csv(tmp_path):
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "dev.tsv").write_bytes("\t".join(TSV_HEADER).encode() + b"\na\tSEEKER\th\xe9\th\t{}\n")
    e = error(tmp_path, fmt="inspired-tsv")
    assert e.path.endswith("dev.tsv") and e.line == 2 and "UTF-8" in str(e)
    red = tmp_path / "red"
    write_jsonl(red / "test_data.jsonl", [conv()])
    (red / "movies_with_mentions.csv").write_bytes(b"movieId,movieName\n10,Heat\n20,\xc3(\n")
    e = error(red)
    assert e.path.endswith("movies_with_mentions.csv") and e.line == 3


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ITEMS[0]).encode() + b"\n")
    assert list(load_items(path)) == ["10"]


@pytest.mark.parametrize("changes, field, words", [
    ({"initiatorWorkerId": [1]}, "initiatorWorkerId", "non-empty string id"),
    ({"respondentWorkerId": {"a": 1}}, "respondentWorkerId", "non-empty string id"),
    ({"respondentWorkerId": 1}, "respondentWorkerId", "the respondent is the initiator"),
    ({"conversationId": None}, "conversationId", "non-empty string id"),
    ({"messages": "oops"}, "messages", "expected a list of messages, got str"),
    ({"messages": {"a": 1}}, "messages", "expected a list of messages, got dict"),
    ({"messages": []}, "messages", "empty dialogue"),
    ({"messages": [{"senderWorkerId": [1], "text": "hi"}]}, "messages[0].senderWorkerId", "string id"),
    ({"movieMentions": ["10"]}, "movieMentions", "expected an object"),
    ({"movieMentions": {"10": 5}}, "movieMentions.10", "movie name"),
    ({"respondentQuestions": "10"}, "respondentQuestions", "expected an object"),
])
def test_redial_wrong_types(tmp_path, changes, field, words):
    e = error(redial_folder(tmp_path, conv(**changes)))
    assert e.path.endswith("test_data.jsonl") and e.line == 1 and e.field == field
    assert words in str(e)


def test_redial_worker_ids_as_text_or_numbers(tmp_path):
    c = conv(initiatorWorkerId="1", messages=[{"senderWorkerId": 1, "text": "hi"},
                                              {"senderWorkerId": "2", "text": "@10!"}])
    (d,) = load_dataset(redial_folder(tmp_path, c)).splits["test"]
    assert [t.role for t in d.turns] == ["seeker", "recommender"] and d.turns[1].items == ("10",)


@pytest.mark.parametrize("fmt", ["jsonl", "redial", "inspired-tsv"])
def test_empty_split_is_an_error(tmp_path, fmt):
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    if fmt == "jsonl":
        write_jsonl(tmp_path / "test.jsonl", [GOOD])
        empty = tmp_path / "train.jsonl"
        empty.write_text("\n\n")
    elif fmt == "redial":
        empty = write_jsonl(tmp_path / "train_data.jsonl", [])
        write_jsonl(tmp_path / "test_data.jsonl", [conv()])
    else:
        empty = tmp_path / "train.tsv"
        empty.write_text("\t".join(TSV_HEADER) + "\n")
    e = error(tmp_path, fmt=fmt)
    assert e.path == str(empty) and "no dialogues" in str(e)


def test_a_catalog_named_Items_jsonl_is_named_not_read_as_a_split(tmp_path):
    write_jsonl(tmp_path / "Items.jsonl", ITEMS)     # was split "Items", then "items.jsonl: file not found"
    write_jsonl(tmp_path / "train.jsonl", [GOOD])
    e = error(tmp_path)
    assert e.path == str(tmp_path / "Items.jsonl") and "must be named items.jsonl" in str(e)
    (tmp_path / "Items.jsonl").rename(tmp_path / "items.jsonl")
    write_jsonl(tmp_path / "ITEMS_sources.jsonl", [{"id": "10"}])   # provenance in any case: not a split
    assert set(load_dataset(tmp_path).splits) == {"train"}


def test_cli_empty_train_split_exits_2(tmp_path, capsys):
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "train.jsonl").write_text("")
    assert main(["data", "stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl" in err and "no dialogues" in err and "Traceback" not in err


TSV_HEADER = ["dialog_id", "speaker", "text", "text_with_placeholder", "movie_dict"]


def tsv(tmp_path, rows):
    return tsv_folder(tmp_path, rows, header=TSV_HEADER)


def test_short_tsv_row(tmp_path):
    e = error(tsv(tmp_path, [["a", "SEEKER", "hi", "hi", "{}"], ["a", "RECOMMENDER"]]), fmt="inspired-tsv")
    assert e.path.endswith("dev.tsv") and e.line == 3 and e.field == "text"
    assert "row has 2 field(s)" in str(e) and "None" not in str(e)


def test_tsv_movie_dict_with_a_huge_number(tmp_path):
    rows = [["a", "SEEKER", "Heat", "[MOVIE_TITLE_0]", "{'Heat (1995)': 1e999}"]]
    e = error(tsv(tmp_path, rows), fmt="inspired-tsv")
    assert e.path.endswith("dev.tsv") and e.line == 2 and e.field == "movie_dict"


def test_tsv_field_over_the_csv_limit(tmp_path):
    rows = [["a", "SEEKER", "x", '"' + "y" * 200_000, "{}"]]
    (tsv(tmp_path, []) / "dev.tsv").write_text("\t".join(TSV_HEADER) + "\n" + "\t".join(rows[0]) + "\n")
    e = error(tmp_path, fmt="inspired-tsv")
    assert e.path.endswith("dev.tsv") and "malformed row" in str(e)


def test_movies_csv_rows(tmp_path):
    write_jsonl(tmp_path / "test_data.jsonl", [conv()])
    (tmp_path / "movies_with_mentions.csv").write_text("movieId,movieName\n10,Heat (1995)\n20\n")
    e = error(tmp_path)
    assert e.path.endswith("movies_with_mentions.csv") and e.line == 3 and e.field == "movieName"
    (tmp_path / "movies_with_mentions.csv").write_text("movieId,movieName\n,Heat (1995)\n")
    e = error(tmp_path)
    assert e.line == 2 and e.field == "movieId"
    # A movieId written twice: the second row would replace Heat unseen.
    (tmp_path / "movies_with_mentions.csv").write_text("movieId,movieName\n10,Heat (1995)\n11,Up (2009)\n10,Other\n")
    e = error(tmp_path)
    assert e.line == 4 and e.field == "movieId" and "duplicate movieId '10' (first on line 2)" in str(e)


def test_line_helpers_for_other_readers(tmp_path):
    """parse_json_line / read_lines: what a reader of JSON Lines outside the loaders (e.g. the
    lenient catalog reader of pecrs serve --catalog) needs to give the same errors."""
    from pecrs.loaders import parse_json_line, read_lines

    where = {"path": "f.jsonl", "line": 4}
    assert parse_json_line('{"a": 1}', where) == {"a": 1}
    for line, words in [("[1]", "expected a JSON object, got list"), ("[" * 50_000, "nested too deeply"),
                        ('{"a": "x', "Unterminated string starting at column 7"),
                        ('{"a": ' + "1" * 5000 + "}", "malformed JSON")]:
        with pytest.raises(DataError) as e:
            parse_json_line(line, where)
        assert str(e.value).startswith("f.jsonl:4: ") and words in str(e.value), str(e.value)
    # A JSON array or a pretty-printed object where JSON Lines belongs: said, on its first line only.
    for opening in ("[", "{", '[{"id": "1", "title": "Heat"}]'):
        with pytest.raises(DataError, match="one object per line, not an array"):
            parse_json_line(opening, {"path": "items.jsonl", "line": 1})
        with pytest.raises(DataError) as e:
            parse_json_line(opening, where)
        assert "one object per line" not in str(e.value)
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"a\r\nb\xe2\x80\xa8c\n")
    assert read_lines(path) == ["a\r", "b\u2028c", ""]
    path.write_bytes(b"ok\n\x80\n")
    with pytest.raises(DataError, match=r"x\.jsonl:2: not UTF-8 text: byte 0x80 at column 1"):
        read_lines(path)


def test_a_file_given_for_a_dataset_folder_is_named(tmp_path):
    items = write_jsonl(tmp_path / "items.jsonl", [])
    with pytest.raises(DataError, match="a dataset is a folder, not a file: give the folder that holds items.jsonl"):
        load_dataset(items)


def test_redial_readers_agree_on_duplicates_and_null_mentions(tmp_path):
    """pecrs.loaders.redial (`pecrs data`, train, evaluate) and pecrs.standardized (`pecrs baseline`)
    read the same official file: a duplicate conversationId is an error in both, null movieMentions
    means no mentions in both."""
    from pecrs.standardized import load_collection

    folder = redial_folder(tmp_path / "dup", conv())
    path = folder / "official" / "test_data.jsonl"
    write_jsonl(path, [conv(), conv()])
    with pytest.raises(DataError, match=r"duplicate conversationId '7' \(first on line 1\)") as e:
        load_dataset(folder)
    assert e.value.line == 2
    with pytest.raises(DataError, match="duplicate conversationId '7'"):
        load_collection(path)
    plain = conv(movieMentions=None, messages=[{"senderWorkerId": 1, "text": "hi"},
                                               {"senderWorkerId": 2, "text": "hello"}])
    folder = redial_folder(tmp_path / "null", plain)
    assert len(load_dataset(folder).splits["test"]) == 1
    assert load_collection(folder / "official" / "test_data.jsonl")


@pytest.mark.parametrize("turn, field, words", [
    ({"role": "seeker", "text": "a", "itmes": ["10"]}, "turns[0].itmes", "unknown key 'itmes'"),
    ({"role": "seeker", "text": "a", "items": 0}, "turns[0].items", "expected a list of item ids"),
    ({"role": "seeker", "text": "a", "items": {}}, "turns[0].items", "expected a list of item ids"),
])
def test_a_turn_never_loses_its_items_to_a_typo_or_a_wrong_type(tmp_path, turn, field, words):
    """Read as "no items" before: the misspelled key, or 0 / {} for a list."""
    e = error(jsonl_folder(tmp_path, [{"id": "d", "turns": [turn, *GOOD["turns"]]}]))
    assert e.field == field and words in str(e) and "train.jsonl:1" in str(e)


def test_a_lone_surrogate_escape_is_named_where_it_is_read(tmp_path):
    """json reads "\\ud800" as a str no tokenizer can take: once a tokenizer TypeError at training."""
    folder = jsonl_folder(tmp_path, [GOOD])
    with open(folder / "train.jsonl", "a") as f:
        f.write('{"id": "d1", "turns": [{"role": "seeker", "text": "bad \\ud800 here"}, '
                '{"role": "recommender", "text": "ok"}]}\n')
    e = error(folder)
    assert "train.jsonl:2" in str(e) and "lone surrogate (U+D800)" in str(e)
    write_jsonl(tmp_path / "items.jsonl", [*ITEMS, {"id": "30", "title": "A", "plot": 0}])
    with pytest.raises(DataError, match="items.jsonl:3 field 'plot': expected a string"):
        load_items(tmp_path / "items.jsonl")


def test_a_row_longer_than_its_header_is_an_error_not_a_shifted_row(tmp_path):
    """An unquoted tab inside a TSV text (or a comma inside a CSV title) moves every later column
    one place right: the row would load with its mention and half its text gone."""
    folder = tsv(tmp_path / "tsv", [])
    rows = [["a", "SEEKER", "hi", "hi", "{}"],    # written by hand: a csv writer would quote the tab
            ["a", "RECOMMENDER", "you should see\tHeat (1995) today", "you should see [MOVIE_TITLE_0] today",
             "{'Heat (1995)': 0}"]]
    (folder / "dev.tsv").write_text("\n".join("\t".join(r) for r in [TSV_HEADER, *rows]) + "\n")
    e = error(folder, fmt="inspired-tsv")
    assert e.path.endswith("dev.tsv") and e.line == 3 and f"the header {len(TSV_HEADER)}" in str(e)
    write_jsonl(tmp_path / "csv" / "test_data.jsonl", [conv()])
    (tmp_path / "csv" / "movies_with_mentions.csv").write_text(
        "movieId,movieName,nbMentions\n10,Heat (1995),3\n111,Crazy, Stupid, Love (2011),5\n")
    e = error(tmp_path / "csv")
    assert e.path.endswith("movies_with_mentions.csv") and e.line == 3 and "5 fields, the header 3" in str(e)


def test_a_key_written_twice_is_an_error_not_a_lost_value(tmp_path):
    """Plain JSON keeps the last of two equal keys: a dialogue's first "turns", with its item
    mentions, would vanish without a word (the YAML configs refuse duplicates for the same reason)."""
    turns = json.dumps(GOOD["turns"])
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    (tmp_path / "train.jsonl").write_text(json.dumps(GOOD) + "\n"
                                          + f'{{"id": "d1", "turns": {turns}, "turns": [{{"role": "seeker", '
                                            f'"text": "hi"}}]}}\n')
    e = error(tmp_path)
    assert e.path.endswith("train.jsonl") and e.line == 2 and "key 'turns' written twice" in str(e)
    (tmp_path / "items.jsonl").write_text('{"id": "1", "title": "Heat", "year": 1995, "title": "Alien"}\n')
    with pytest.raises(DataError, match=r"items\.jsonl:1: key 'title' written twice"):
        load_items(tmp_path / "items.jsonl")


def test_a_split_that_is_a_folder_is_named_so(tmp_path):
    folder = jsonl_folder(tmp_path, [GOOD])
    (folder / "train.jsonl").unlink()
    (folder / "train.jsonl").mkdir()
    e = error(folder)
    assert e.path.endswith("train.jsonl") and "a folder, not a file" in str(e)

"""Reading dialogue datasets into `DatasetBundle`s (formats documented in docs/data-format.md).

Three on-disk formats are understood, chosen by what a folder holds (or forced with `fmt=`):

  "jsonl"         the project's own layout: items.jsonl + one <split>.jsonl per split
  "redial"        the official ReDial release: items.jsonl (or movies_with_mentions.csv) +
                  [official/]{train_data,train_subset_data,valid_data,test_data}.jsonl
  "inspired-tsv"  the original INSPIRED release: items.jsonl + [official/]<split>.tsv

All three end as the same `Dialogue`/`Turn` objects: roles "seeker"/"recommender", one [ITEM]
placeholder in the text per linked mention, the mentioned ids in `Turn.items` in placeholder order.

Bad input raises `DataError` naming file, line and field. The only things not raised are
documented, counted skips (a mention that cannot be linked to the catalog is written out as plain
text instead of becoming an [ITEM]), recorded in `bundle.skipped` / `bundle.repaired`.

One concern a module, from the bottom up:

  reading.py       files as text: lines, JSON Lines objects, CSV/TSV rows (errors name file, line)
  items.py         the catalog: items.jsonl entries, ids, "Title (Year)" names
  dialogues.py     turns that keep the [ITEM]/items invariant, non-empty splits, split order
  jsonl.py         the project's own format
  redial.py        the official ReDial release (and the rules that rebuild PECRS's dialogues)
  inspired_tsv.py  the original INSPIRED release
  formats.py       `detect_format`, `dataset_files`, `load_dataset`
"""
from .dialogues import SPLIT_ORDER
from .formats import FORMATS, dataset_files, detect_format, load_dataset
from .inspired_tsv import TSV_COLUMNS, TSV_SPEAKERS, load_inspired_tsv
from .items import load_items, parse_item, split_title_year
from .jsonl import load_dialogues, load_jsonl_folder
from .reading import check_record, check_text, parse_json_line, read_jsonl, read_lines, read_lines_each
from .redial import REDIAL_MENTIONS, REDIAL_SPLIT_FILES, items_from_movies_csv, load_redial

__all__ = ["SPLIT_ORDER", "FORMATS", "dataset_files", "detect_format", "load_dataset", "TSV_COLUMNS",
           "TSV_SPEAKERS", "load_inspired_tsv", "load_items", "parse_item", "split_title_year",
           "load_dialogues", "load_jsonl_folder", "check_record", "check_text", "parse_json_line", "read_jsonl", "read_lines", "read_lines_each",
           "REDIAL_MENTIONS", "REDIAL_SPLIT_FILES", "items_from_movies_csv", "load_redial"]

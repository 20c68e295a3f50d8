"""Argument types, the parser class and help text that more than one command group uses."""
from __future__ import annotations

import argparse

DTYPE_HELP = ("precision of the LM: auto (bfloat16 on a GPU that supports it or a CPU with AMX / AVX512-BF16, "
              "else float32), float32, bfloat16 (default: the model's inference.dtype, auto unless set; "
              "pecrs.precision; docs/performance.md)")


EXCLUDE_HELP = ("never recommend an item that the conversation already mentions (beyond the paper; default: the "
                "model's inference.exclude_mentioned, off unless set)")


NO_REPEAT_HELP = ("no n-gram of N tokens twice in one reply, against a briefly trained model's loops "
                  "(0: off, the paper's decoding; default: the model's inference.no_repeat_ngram)")


def _int_at_least(minimum: int, described: str, maximum: int | None = None):
    """An argparse type: an integer >= `minimum` (and <= `maximum`), else an error that says `described`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {described}, got '{text}'")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")
seed_int = _int_at_least(0, "a seed from 0 to 2**32 - 1", 2**32 - 1)   # the HTTP API's range too
port_int = _int_at_least(0, "a port from 0 to 65535", 65535)


def device_name(text: str) -> str:
    """An argparse type: a torch device this machine has (`pecrs.backbone.check_device`)."""
    from ..backbone import check_device

    try:
        check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("device: ")) from None
    return text


def decoding_name(text: str) -> str:
    """An argparse type: a decoding preset (pecrs.decoding.PRESETS or an alias), checked before a
    model loads (the presets import no torch)."""
    from ..decoding.presets import resolve

    try:
        resolve(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def item_fields(text: str) -> str:
    """A comma-separated list of item fields, checked as the config checks model.item_fields."""
    from ..config import ConfigError, check_value

    try:
        check_value("model.item_fields", text.split(","), list[str])
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


class IntermixedParser(argparse.ArgumentParser):
    """Lets `section.key=value` overrides follow the options (`pecrs train C --output-dir D x.y=1`,
    `pecrs experiment NAME --config C x.y=1`). Every subcommand that takes overrides uses it."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixing", False):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

"""pecrs chat, pecrs serve and pecrs export: a trained model in the terminal, over HTTP, or
written as a model to ship."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import (DTYPE_HELP, EXCLUDE_HELP, NO_REPEAT_HELP, decoding_name, device_name, non_negative_int,
                     port_int, positive_int, seed_int)


# ---- pecrs chat / serve ------------------------------------------------------------------------

def _load_recommender(args):
    import torch

    from ..recommender import Recommender

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"pecrs: loading {args.run_dir}", file=sys.stderr, flush=True)
    rec = Recommender.from_pretrained(args.run_dir, catalog=args.catalog, device=args.device,
                                      m_inference=args.m_inference, decoding=args.decoding,
                                      no_repeat_ngram=args.no_repeat_ngram, exclude_mentioned=args.exclude_mentioned,
                                      # lenient only for a catalog of the user's (--catalog): a model's own
                                      # items.jsonl with a bad line is a damaged model, refused by line
                                      strict_catalog=args.catalog is None, dtype=args.dtype, progress=True)
    print(rec.report.summary(), file=sys.stderr)
    print(f"precision: {rec.precision.name} ({rec.precision.reason})", file=sys.stderr)
    for message in rec.report.errors:
        print(f"  skipped: {message}", file=sys.stderr)
    if rec.report.n_errors > len(rec.report.errors):
        print(f"  ... and {rec.report.n_errors - len(rec.report.errors)} more", file=sys.stderr)
    return rec


def _add_recommender_args(p) -> None:
    p.add_argument("run_dir", nargs="?", default="inspired",
                   help="run folder (uses its best/ checkpoint), checkpoint folder, or the name of a model "
                        "shipped with pecrs (default: inspired)")
    p.add_argument("--catalog", help="items.jsonl to recommend from (default: the run's catalog); "
                                     "bad lines are skipped and reported (a file with more bad lines "
                                     "than items is refused)")
    p.add_argument("--decoding", type=decoding_name, help="decoding strategy (pecrs.decoding.PRESETS; default: the model's "
                                      "inference.decoding, top_k unless set)")
    p.add_argument("--no-repeat-ngram", type=non_negative_int, metavar="N", help=NO_REPEAT_HELP)
    p.add_argument("--m-inference", type=positive_int,
                   help="candidates retrieved then re-ranked (default: the model's inference.m_inference)")
    p.add_argument("--device", type=device_name, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), help=DTYPE_HELP)


def _chat(args) -> int:
    from ..chat import chat

    # A conversation with a person excludes what it mentions unless told not to (pecrs.chat).
    _check_catalog_given(args.catalog)
    return chat(_load_recommender(args), k_items=args.k_items, seed=args.seed, link_titles=args.link_titles,
                exclude_mentioned=args.exclude_mentioned is not False)


def add_chat_parser(subparsers) -> None:
    p = subparsers.add_parser("chat", help="talk to a trained model in the terminal",
                              description="You are the seeker, the model the recommender. Commands: "
                                          "/top N, /reset, /help, /quit. Reads stdin line by line.")
    _add_recommender_args(p)
    p.add_argument("--k-items", type=positive_int, default=1, help="items injected per reply (default 1, as in the paper)")
    p.add_argument("--seed", type=seed_int, help="make sampled replies reproducible")
    p.add_argument("--exclude-mentioned", action=argparse.BooleanOptionalAction,
                   help="never recommend an item the conversation named (default: on in chat; "
                        "--no-exclude-mentioned allows it, as the paper's protocol does)")
    p.add_argument("--no-link-titles", dest="link_titles", action="store_false",
                   help="read typed titles as plain words (default: a catalog title you type becomes an item "
                        "mention, as in training; pecrs.title_linking)")
    p.set_defaults(func=_chat)


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on before the model loads (a large catalog takes
    minutes to encode; uvicorn would only find out after). Bound as uvicorn binds it."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); "
                             "another --port, or stop what uses it") from None


def _check_catalog_given(catalog: str | None) -> None:
    """Refuse a --catalog path that is not there before the model loads (seconds); what the file
    holds is read, leniently, once the model is loaded."""
    if catalog is None:
        return
    path = Path(catalog)
    if not (path.is_file() or (path / "items.jsonl").is_file()):
        why = "a folder without items.jsonl" if path.is_dir() else "no such file"
        raise ValueError(f"--catalog {catalog}: {why}")


def cors_origin(text: str) -> str:
    """An argparse type: an origin whose pages may call the API (pecrs.cors.check_cors_origin),
    checked before the model loads: a typo such as a trailing slash would otherwise match no page,
    and show only in the browser."""
    from ..cors import check_cors_origin

    try:
        return check_cors_origin(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cors_line(origins: list[str]) -> str:
    if "*" in origins:
        return "CORS: any origin (*): any page on the web can call this API"
    return f"CORS: pages from {', '.join(dict.fromkeys(origins))} can call this API"


def _serve(args) -> int:
    from ..serve import serve

    _check_port_free(args.host, args.port)
    _check_catalog_given(args.catalog)
    rec = _load_recommender(args)
    where = f"http://{args.host}:{args.port}/" if args.port else f"http://{args.host} on a port the system picks (uvicorn's line below)"
    print(f"serving on {where} (API: /recommend, /respond, /items/ID, /health)", file=sys.stderr)
    if args.cors_origin:
        print(_cors_line(args.cors_origin), file=sys.stderr)
    serve(rec, host=args.host, port=args.port, log_level=args.log_level, cors_origins=args.cors_origin)
    return 0


def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP API and chat page for a trained model",
                              description="FastAPI server: POST /recommend, POST /respond, GET /items/ID, "
                                          "GET /health, and a chat page at /.")
    _add_recommender_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_int, default=8000)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--cors-origin", action="append", type=cors_origin, metavar="ORIGIN",
                   help="let pages from ORIGIN (scheme://host[:port], e.g. https://app.example.com) call the "
                        "API from a browser (CORS); repeat for more. * allows any origin: any page on the web "
                        "can then use the model. Credentials (cookies, HTTP auth) are never allowed. "
                        "Default: none, no CORS headers")
    p.add_argument("--exclude-mentioned", action=argparse.BooleanOptionalAction,
                   help=EXCLUDE_HELP + "; a request's \"exclude_mentioned\" overrides it, and the chat page "
                                       "always excludes")
    p.set_defaults(func=_serve)


# ---- pecrs export -----------------------------------------------------------------------------

def _export(args) -> int:
    from ..export import export

    notes = read_notes(args.notes) if args.notes else None
    dest = export(args.run_dir, args.destination, catalog=args.catalog, device=args.device, notes=notes,
                  no_repeat_ngram=args.no_repeat_ngram, decoding=args.decoding)
    sizes = {p.relative_to(dest).as_posix(): p.stat().st_size for p in dest.rglob("*") if p.is_file()}
    print(json.dumps({"exported": str(dest), "bytes": sum(sizes.values()), "files": sizes}))
    return 0


def read_notes(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--notes {path}: {e}") from None


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a trained run as a model to ship",
                              description="float16 adapter and heads, the catalog and its item vectors, and a "
                                          "MODEL_CARD.md (pecrs.export). Copied to pecrs/models/NAME it loads "
                                          "as Recommender.from_pretrained('NAME').")
    p.add_argument("run_dir", help="run folder (uses its best/ checkpoint) or a checkpoint folder")
    p.add_argument("destination", help="folder to write: a new or empty one, or an earlier export (replaced); "
                                        "never the run itself or a folder holding it")
    p.add_argument("--catalog", help="items.jsonl to ship (default: the run's catalog)")
    p.add_argument("--device", type=device_name, help="where to encode the catalog (default: cuda when available)")
    p.add_argument("--notes", help="a markdown file quoted in MODEL_CARD.md under 'About this model' "
                                   "(how and why it was trained, what it is not)")
    p.add_argument("--no-repeat-ngram", type=non_negative_int, metavar="N",
                   help="the shipped model's inference.no_repeat_ngram: no n-gram of N tokens twice in one "
                        "reply (default: the run's, 0 unless set)")
    p.add_argument("--decoding", type=decoding_name, help="the shipped model's inference.decoding, a pecrs.decoding preset "
                                      "(default: the run's, top_k unless set)")
    p.set_defaults(func=_export)

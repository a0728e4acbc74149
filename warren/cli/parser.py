"""The ``warren`` command line, generated from the KoboldCpp option table plus warren's own flags.

Every option's argparse default is ``SUPPRESS``, so the parsed namespace holds exactly what the user
typed: that is how a typed flag wins over a ``.kcpps`` value (KoboldCpp's rule) and how validation
knows which values were explicit. Argument errors print ``error: …`` + a hint and exit 2, like every
other start-up error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from warren.options import OPTIONS, Kind, Option, Support

WARREN_FLAGS = ("check",)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        print("hint: run `warren --help` for the flags warren takes", file=sys.stderr)
        raise SystemExit(2)


def _add(parser: argparse.ArgumentParser, option: Option) -> None:
    kw: dict[str, Any] = {"dest": option.key, "default": argparse.SUPPRESS}
    if option.support is Support.REFUSED:
        kw["help"] = argparse.SUPPRESS
    elif option.support is Support.ACCEPTED:
        kw["help"] = f"Accepted for KoboldCpp compatibility; no effect: {option.reason}."
    else:
        kw["help"] = option.help
    if kw["help"] is not argparse.SUPPRESS:
        kw["help"] = kw["help"].replace("%", "%%")  # argparse %-formats help: "75% of RAM" must not crash --help
    kind = option.kind
    if kind is Kind.FLAG:
        kw["action"] = "store_true"
    elif kind is Kind.INT:
        kw["type"] = int
    elif kind is Kind.FLOAT:
        kw["type"] = float
    elif kind is Kind.STR:
        kw["type"] = str
    elif kind is Kind.OPT_INT:
        kw.update(type=int, nargs="?", const=option.const)
    elif kind is Kind.FLOATS:
        kw.update(type=float, nargs="+")
    else:
        kw.update(type=str, nargs="*")
    if option.support is Support.REFUSED and kind is not Kind.FLAG:
        kw.update(type=str, nargs="*")  # take any value: the flag is refused by name afterwards
        kw.pop("const", None)
    parser.add_argument(*option.flags, **kw)


def build_parser() -> Parser:
    parser = Parser(prog="warren", description="A local LLM server for GGUF models. KoboldCpp flags and "
                    ".kcpps files work; each model runs in its own worker process.",
                    epilog="KoboldCpp flags warren does not implement are refused by name.")
    # Positionals with nargs="?" always land in the namespace; None means "not given" (see cli.main).
    parser.add_argument("model_param", nargs="?", default=None, metavar="MODEL",
                        help="GGUF model file (or a .kcpps config file).")
    parser.add_argument("port_param", nargs="?", type=int, default=None, metavar="PORT",
                        help="Port to listen on.")
    for option in OPTIONS:
        _add(parser, option)
    parser.add_argument("--check", action="store_true", default=argparse.SUPPRESS,
                        help="Validate everything, print the memory plan, and exit without serving.")
    parser.add_argument("--version", action="store_true", default=argparse.SUPPRESS, help="Print the version.")
    return parser

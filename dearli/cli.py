"""Command-line conventions shared by every tool: config overrides and the thread count.

Config overrides follow Detectron2's ``default_argument_parser``: trailing ``KEY VALUE`` pairs
after the options, e.g. ``tools/demo.py --config-file CFG --input a.jpg --output out MODEL.WEIGHTS
m.pth``. ``--opts KEY VALUE ...`` is accepted as an alias (older commands, Detectron2's demo).

The pairs start at the first token that is a config key (``SEED``, ``MODEL.WEIGHTS``: upper-case
names whose first part is a top-level key of dearli's config) or at ``--opts``. Splitting there
before argparse runs keeps options that take several values (``--input a.jpg b.jpg``) from
swallowing the pairs. Malformed pairs are reported with what is wrong, not yacs' "Override list
has odd length".
"""
import argparse
import functools
import re
import sys
from typing import List, Optional, Sequence, Tuple

from dearli.config import load_config

OPTS_ALIAS = "--opts"
_KEY_PATTERN = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*")
_OPTION_PATTERN = re.compile(r"--?[A-Za-z]")  # "-1e-3" is a value, "--resume" and "-h" are options
OVERRIDES_HELP = "config overrides: KEY VALUE pairs after the options, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu"


@functools.lru_cache(maxsize=1)
def config_root_keys() -> frozenset:
    """Top-level keys of the default config (Detectron2's and dearli's)."""
    return frozenset(load_config().keys())


def is_config_key(token: str) -> bool:
    return bool(_KEY_PATTERN.fullmatch(token)) and token.split(".")[0] in config_root_keys()


def is_option(token: str) -> bool:
    return bool(_OPTION_PATTERN.match(token))


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the tool's own arguments, the override tokens): split at ``--opts`` or the first key."""
    argv = list(argv)
    for index, token in enumerate(argv):
        if token == OPTS_ALIAS:
            return argv[:index], argv[index + 1:]
        if is_config_key(token):
            return argv[:index], argv[index:]
    return argv, []


def check_overrides(overrides: Sequence[str]) -> None:
    """ValueError saying what is wrong with a list that should be ``KEY VALUE`` pairs."""
    for position in range(0, len(overrides), 2):
        key = overrides[position]
        if is_option(key):
            raise ValueError(f"option {key} comes after the config overrides; put options before the first "
                             f"KEY VALUE pair (got overrides: {' '.join(overrides)})")
        if not is_config_key(key) and position + 1 < len(overrides) and is_config_key(overrides[position + 1]):
            raise ValueError(f"wrong order: value {key!r} comes before config key {overrides[position + 1]}; "
                             f"write KEY VALUE, e.g. {overrides[position + 1]} {key}")
        if not is_config_key(key):
            previous = f" after {overrides[position - 2]} {overrides[position - 1]}" if position else ""
            raise ValueError(f"expected a config KEY{previous} but got {key!r}; config overrides are KEY VALUE "
                             f"pairs with upper-case keys such as MODEL.WEIGHTS (got overrides: {' '.join(overrides)})")
        value = overrides[position + 1] if position + 1 < len(overrides) else None
        if value is None or (len(overrides) % 2 and is_config_key(value)):
            raise ValueError(f"config key {key} has no value; config overrides are KEY VALUE pairs "
                             f"(got overrides: {' '.join(overrides)})")
        if is_option(value) and not _looks_numeric(value):
            raise ValueError(f"config key {key} is followed by option {value}; put options before the first "
                             "KEY VALUE pair")


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def add_tool_arguments(parser: argparse.ArgumentParser, overrides: bool = True) -> None:
    """``--threads`` and (unless ``overrides`` is False) the trailing KEY VALUE pairs with their
    ``--opts`` alias. A parser from Detectron2's default_argument_parser keeps its ``opts``."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads per process (default: $OMP_NUM_THREADS if set, else the cores "
                             "not busy with other work divided among this machine's processes)")
    if not overrides:
        return
    if "opts" not in {action.dest for action in parser._actions}:
        # "*", not REMAINDER: after other positionals (input output) REMAINDER would take the options
        # too. parse_tool_args splits the pairs off before argparse runs; this entry is for --help.
        parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help=OVERRIDES_HELP)
    parser.add_argument(OPTS_ALIAS, dest="opts_alias", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="the same overrides, introduced by --opts (alias)")


def parse_tool_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``): the options with ``parser``, the overrides with the
    rules above into ``args.opts``. Bad overrides or ``--threads`` exit through ``parser.error``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    has_overrides = any(action.dest == "opts_alias" for action in parser._actions)
    if not has_overrides:
        args = parser.parse_args(argv)
    else:
        options, overrides = split_overrides(argv)
        args, leftover = parser.parse_known_args(options)
        unknown_options = [token for token in leftover if is_option(token)]
        if unknown_options:
            parser.error(f"unrecognized arguments: {' '.join(unknown_options)}")
        # Other tokens argparse left (e.g. "model.weights x") are malformed overrides, reported below.
        args.opts = list(args.opts or []) + leftover + list(args.opts_alias or []) + overrides
        del args.opts_alias
        try:
            check_overrides(args.opts)
        except ValueError as e:
            parser.error(str(e))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args

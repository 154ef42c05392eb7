"""Config files as plain data: YAML with ``_BASE_`` inheritance, never a Python object.

Detectron2's ``CfgNode.merge_from_file`` falls back to ``yaml.unsafe_load`` when a file holds a
Python tag (``!!python/object/apply:os.system [...]`` runs a command), and a ``_BASE_`` chain that
comes back to one of its files recurses until ``RecursionError``. :func:`load_yaml_with_base`
reads every file of the chain with ``yaml.SafeLoader`` only; a tag outside plain YAML is refused
with the file, line and tag, a cycle with the chain of files. ``dearli.config`` routes every
config load of the process (``merge_from_file`` of Detectron2's and fvcore's ``CfgNode``) here.
"""
import os
import re
from typing import Any, Dict, List, Optional

import yaml

BASE_KEY = "_BASE_"
_STANDARD_TAG_PREFIX = "tag:yaml.org,2002:"


class ConfigFileError(ValueError):
    """A config file that cannot be used: unsafe tag, ``_BASE_`` cycle, bad structure."""


def _tag_of(error: yaml.constructor.ConstructorError) -> str:
    """The refused tag in PyYAML's message, written as in the file (``!!python/...``)."""
    match = re.search(r"tag '([^']+)'", str(error.problem))
    tag = match.group(1) if match else "?"
    return "!!" + tag[len(_STANDARD_TAG_PREFIX):] if tag.startswith(_STANDARD_TAG_PREFIX) else tag


def read_yaml_file(path: str) -> Dict[str, Any]:
    """One YAML file as a dict, through ``yaml.SafeLoader``; an empty file is ``{}``."""
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=yaml.SafeLoader)
        except yaml.constructor.ConstructorError as e:
            line = e.problem_mark.line + 1 if e.problem_mark is not None else "?"
            raise ConfigFileError(
                f"config file {path}, line {line}: tag {_tag_of(e)} is refused; config files are plain "
                "YAML (mappings, lists, strings, numbers), Python objects are never constructed"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigFileError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} holds a {type(data).__name__}, expected a mapping of keys")
    return data


def _merge_into(source: Dict[str, Any], target: Dict[str, Any], path: str) -> None:
    """Values of ``source`` override ``target``; nested mappings merge key by key."""
    for key, value in source.items():
        if isinstance(value, dict) and key in target:
            if not isinstance(target[key], dict):
                raise ConfigFileError(f"config file {path}: key {key!r} is a mapping but its _BASE_ has a value there")
            _merge_into(value, target[key], path)
        else:
            target[key] = value


def _base_paths(data: Dict[str, Any], path: str) -> List[str]:
    """The ``_BASE_`` files of ``data`` (one name or a list), relative to ``path``'s folder."""
    bases = data.pop(BASE_KEY)
    names = bases if isinstance(bases, list) else [bases]
    if not all(isinstance(name, str) and name for name in names):
        raise ConfigFileError(f"config file {path}: {BASE_KEY} must be a file name or a list of them, got {bases!r}")
    folder = os.path.dirname(path)
    return [os.path.join(folder, os.path.expanduser(name)) for name in names]


def load_yaml_with_base(path: str, _chain: Optional[List[str]] = None) -> Dict[str, Any]:
    """``path`` merged over its ``_BASE_`` files (recursively), all read with the safe loader."""
    path = os.fspath(path)
    chain = list(_chain or [])
    real = os.path.realpath(path)
    if real in chain:
        cycle = " -> ".join(chain[chain.index(real):] + [real])
        raise ConfigFileError(f"config file {path}: {BASE_KEY} chain is a cycle: {cycle}")
    if not os.path.isfile(path):
        where = f" (a {BASE_KEY} of {chain[-1]})" if chain else ""
        raise ConfigFileError(f"config file {path}{where} does not exist")
    data = read_yaml_file(path)
    if BASE_KEY not in data:
        return data
    merged: Dict[str, Any] = {}
    for base in _base_paths(data, path):
        _merge_into(load_yaml_with_base(base, chain + [real]), merged, path)
    _merge_into(data, merged, path)
    return merged

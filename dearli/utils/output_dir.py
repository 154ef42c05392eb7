"""The output folder of a long, resumable tool: its own (resumed), an empty one, or, on request, any.

A tool claims its folder with :func:`claim_output_dir`, which writes a manifest naming the tool
and the settings that decide its results. A later run of the same tool with the same settings
resumes there; anything else is refused unless the user passes ``--overwrite``. Nothing is ever
deleted: ``--overwrite`` only allows writing into the folder (files of the same names are
replaced, every other file is left alone).
"""
import json
import os

from .atomic_io import atomic_write_json

MANIFEST = "dearli_run.json"


class OutputDirError(ValueError):
    """The output folder is not this tool's to write into (the message says why and what to do)."""


def read_manifest(path):
    """The manifest dict of output folder ``path``, or None when it has none."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        return None
    with open(manifest) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise OutputDirError(f"{manifest} is not valid JSON ({error}); it was not written by a dearli tool "
                                 "(or was cut short): move it away or pass --overwrite") from error


def _first_difference(old: dict, new: dict):
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return key, old.get(key), new.get(key)
    return None


def claim_output_dir(path, tool: str, settings: dict, overwrite: bool = False) -> bool:
    """Make ``path`` the output folder of ``tool`` run with ``settings``; True when it resumes a run.

    - missing or empty: created, and the manifest written;
    - holding ``tool``'s manifest with equal ``settings``: resumed (True);
    - holding other files, another tool's manifest, or other settings: :class:`OutputDirError`,
      unless ``overwrite``, which rewrites the manifest and deletes nothing.
    """
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back from the file
    os.makedirs(path, exist_ok=True)
    manifest = None if overwrite else read_manifest(path)
    alternatives = "choose another --output-dir, or pass --overwrite to write into it anyway (nothing is deleted)"
    if manifest is not None:
        if manifest.get("tool") != tool:
            raise OutputDirError(f"{path} holds the output of {manifest.get('tool')!r}, not of {tool}: {alternatives}")
        difference = _first_difference(manifest.get("settings", {}), settings)
        if difference is None:
            return True
        key, old, new = difference
        raise OutputDirError(f"{path} holds a {tool} run with other settings ({key}: {old!r} there, {new!r} now); "
                             f"results of different settings would mix: {alternatives}")
    if os.listdir(path) and not overwrite:
        raise OutputDirError(f"{path} is not empty and was not written by {tool} (it has no {MANIFEST}): {alternatives}")
    atomic_write_json(os.path.join(path, MANIFEST), {"tool": tool, "settings": settings}, indent=1)
    return False

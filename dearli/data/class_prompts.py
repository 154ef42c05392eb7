"""The class-name files of ``dearli/data/prompts``: synonyms per class (``id:syn1,syn2,...``) and the
prompt templates. Read here, next to the files, so modeling reaches them through an import.
"""
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
PLACEHOLDER_NAME = "invalid_class_id"
# Line ids of a prompt file are dataset category ids, except in the ADE20K file, whose ids are the raw
# SceneParsing label values (dataset id + 1; line 0 is a placeholder), as in the reference loader.
PROMPT_FILE_ID_OFFSET = {"ade20k_150": 1}
SINGLE_TEMPLATE = "a photo of a {}."


def prompt_file_path(name, directory=PROMPTS_DIR, what="prompt file"):
    """Path of a shipped text file given its name in ``directory`` (``ade20k_150``) or a path."""
    path = Path(name)
    if path.suffix != ".txt":
        path = Path(directory) / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in Path(directory).glob("*.txt"))
        raise FileNotFoundError(f"{what} {str(path)!r} not found; shipped files: {available}")
    return path


def read_prompt_file(name):
    """Parse a synonym file into {dataset category id: [synonyms]} (placeholder lines skipped)."""
    path = prompt_file_path(name)
    offset = PROMPT_FILE_ID_OFFSET.get(path.stem, 0)
    synonyms_by_id = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split(":")
        if len(parts) != 2 or not parts[0].strip().isdigit() or not parts[1]:
            raise ValueError(f"{path}:{line_number}: expected 'id:syn1,syn2,...', got {line!r}")
        line_id, names = int(parts[0]), parts[1]
        if names == PLACEHOLDER_NAME:
            continue
        synonyms = names.split(",")
        if any(not s for s in synonyms):
            raise ValueError(f"{path}:{line_number}: empty synonym in {line!r}")
        if line_id - offset in synonyms_by_id:
            raise ValueError(f"{path}:{line_number}: id {line_id} appears twice")
        synonyms_by_id[line_id - offset] = synonyms
    return synonyms_by_id


def load_templates(name):
    """Prompt templates by MODEL.CLIP_HEAD.PROMPT_TEMPLATES: "vild" (14 templates) or "single"."""
    if name == "vild":
        templates = (PROMPTS_DIR / "vild_templates.txt").read_text(encoding="utf-8").splitlines()
    elif name == "single":
        templates = [SINGLE_TEMPLATE]
    else:
        raise ValueError(f"MODEL.CLIP_HEAD.PROMPT_TEMPLATES={name!r}; expected 'vild' or 'single'")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}'")
    return templates

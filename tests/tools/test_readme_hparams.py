"""README's table "Hyper-parameters that differ from the paper's (CPU runs)" against the configs.

Each row with a config key names it in backticks (``(warm-up)`` after it: the warm-up stage); the
first backticked value of a cell is what the config resolves to: the paper column against the
paper configs, each CPU column against the stage config ``tools/ssl_benchmark.py`` builds for that
run (config file, recipe, row overrides, budget). Every key on which a CPU run differs from the
paper must have a row, or be listed in the paragraph after the table (keys that only name files or
keep the run). Config loading only: no model is built.
"""
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Optional

import pytest
import yaml
from helpers.tools import load_tool

from dearli.config import load_config

bench = load_tool("ssl_benchmark")
REPO = Path(__file__).resolve().parents[2]
HEADING = "### Hyper-parameters that differ from the paper's (CPU runs)"
PAPER = "paper (reference implementation)"
COLUMNS = ("hyper-parameter", "config key", PAPER, "shapes: benchmark", "shapes: ablation, demo", "CamVid 1/8",
           "reason")
CPU_COLUMNS = COLUMNS[3:6]
NOT_RUN = "-"  # a key cell: not a config key; a CPU cell: the run has no such stage
WARM_UP_MARK = " (warm-up)"
SSL, WARM_UP = "semi-supervised stage", "warm-up"
OTHER_KEYS_LEAD = "Other keys that differ"
KEY_CELL = re.compile(r"`([A-Z][A-Z0-9_.]*)`(" + re.escape(WARM_UP_MARK) + r")?")
PAPER_CONFIGS = {SSL: REPO / "configs" / "ade20k" / "dearli_convnext_base_1_128.yaml",
                 WARM_UP: REPO / "configs" / "warmup" / "warmup_sam_ade20k.yaml"}


@dataclass(frozen=True)
class Run:
    """The CPU run behind a column: its preset, dataset, stages and budget (the runs the README reports)."""

    preset: str
    dataset: str
    stage: str  # the semi-supervised branch
    warm_up_stage: Optional[str]
    burn_in_iters: int
    branch_iters: int
    warmup_iters: int = 0


ABLATION = bench.PRESETS["ablation"]
RUNS = {
    # README "Semi-supervised vs supervised-only": the commands with these budgets (checked below).
    "shapes: benchmark": Run("benchmark", "shapes", "semi_supervised", None, 1500, 3000),
    "shapes: ablation, demo": Run("ablation", "shapes", "dearli", "sam_warmup", ABLATION["burn_in_iters"],
                            ABLATION["branch_iters"], ABLATION["warmup_iters"]),
    "CamVid 1/8": Run("benchmark", "camvid", "semi_supervised", None, 600, 1200),
}
REPORTED_COMMANDS = ("--datasets shapes --seeds 1 2 3 --burn-in-iters 1500 --branch-iters 3000",
                     "--datasets camvid --seeds 1 2 3 --burn-in-iters 600 --branch-iters 1200")


@dataclass(frozen=True)
class Row:
    name: str
    key: Optional[str]  # None: a prose row
    stage: str
    cells: Dict[str, str]  # column -> cell


def split_cells(line: str):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def section(text: str) -> str:
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    body = text.split(HEADING, 1)[1]
    return body.split("\n#", 1)[0]


def parse_rows(text: str):
    """The table's rows; a malformed header or key cell raises naming the row."""
    lines = [line for line in section(text).splitlines() if line.startswith("|")]
    assert tuple(split_cells(lines[0])) == COLUMNS, f"table header {split_cells(lines[0])} is not {COLUMNS}"
    rows = []
    for line in lines[2:]:
        cells = dict(zip(COLUMNS, split_cells(line)))
        assert len(split_cells(line)) == len(COLUMNS), f"row {line[:60]!r}: {len(split_cells(line))} cells"
        match = KEY_CELL.fullmatch(cells["config key"])
        if match is None and cells["config key"] != NOT_RUN:
            raise AssertionError(f"row {cells['hyper-parameter']!r}: config key cell {cells['config key']!r} "
                                 f"is neither {NOT_RUN!r} nor `KEY` or `KEY`{WARM_UP_MARK}")
        stage = WARM_UP if match and match.group(2) else SSL
        rows.append(Row(cells["hyper-parameter"], match.group(1) if match else None, stage, cells))
    return rows


def other_keys(text: str):
    """Backticked keys of the paragraph after the table that lists the keys without a row."""
    paragraphs = [p for p in section(text).split("\n\n") if p.startswith(OTHER_KEYS_LEAD)]
    assert len(paragraphs) == 1, f"expected one paragraph starting {OTHER_KEYS_LEAD!r}"
    return set(re.findall(r"`([A-Z][A-Z0-9_.]*)`", paragraphs[0]))


def cell_value(cell: str):
    match = re.search(r"`([^`]*)`", cell)
    if match is None:
        raise ValueError(f"no value in backticks in {cell!r}")
    return yaml.safe_load(match.group(1))


def plain(value):
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def same(written, resolved) -> bool:
    written, resolved = plain(written), plain(resolved)
    if isinstance(written, bool) or isinstance(resolved, bool):
        return type(written) is type(resolved) and written == resolved
    if isinstance(written, (int, float)) and isinstance(resolved, (int, float)):
        return math.isclose(written, resolved, rel_tol=1e-9)
    if isinstance(written, list) and isinstance(resolved, list):
        return len(written) == len(resolved) and all(same(w, r) for w, r in zip(written, resolved))
    return written == resolved


def value_at(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def flat(cfg, prefix=""):
    out = {}
    for name, value in cfg.items():
        out.update(flat(value, f"{prefix}{name}.") if hasattr(value, "items") else {prefix + name: value})
    return out


def stage_configs(output_dir) -> dict:
    """(column, stage) -> resolved config (None: the run has no such stage), for the paper and each CPU run."""
    configs = {(PAPER, stage): load_config(str(path)) for stage, path in PAPER_CONFIGS.items()}
    for column, run in RUNS.items():
        preset = bench.PRESETS[run.preset]
        # Only the budget and the folder matter here; checkpoint period and workers as in the README's commands.
        args = SimpleNamespace(preset=run.preset, burn_in_iters=run.burn_in_iters, branch_iters=run.branch_iters,
                               evals_per_stage=preset["evals_per_stage"], checkpoint_period=500,
                               warmup_iters=run.warmup_iters, workers=1, opts=[], output_dir=str(output_dir))
        config_of = bench.stage_config_factory(args)
        configs[(column, SSL)] = config_of(run.dataset, 1, run.stage)
        configs[(column, WARM_UP)] = config_of(run.dataset, 1, run.warm_up_stage) if run.warm_up_stage else None
    return configs


def value_mismatches(rows, configs):
    """Every keyed cell whose first backticked value is not what its config resolves to."""
    problems = []
    for row in (r for r in rows if r.key):
        for column in (PAPER,) + CPU_COLUMNS:
            cfg, cell = configs[(column, row.stage)], row.cells[column]
            if cfg is None or cell == NOT_RUN:
                if (cfg is None) != (cell == NOT_RUN):
                    problems.append(f"{row.key} ({row.stage}), {column}: cell {cell!r}, but the run "
                                    f"{'has no' if cfg is None else 'has a'} {row.stage}")
                continue
            resolved = value_at(cfg, row.key)
            try:
                written = cell_value(cell)
            except ValueError as error:
                problems.append(f"{row.key} ({row.stage}), {column}: {error}")
                continue
            if not same(written, resolved):
                problems.append(f"{row.key} ({row.stage}), {column}: README {written!r}, config {plain(resolved)!r}")
        if all(configs[(c, row.stage)] is None or same(value_at(configs[(c, row.stage)], row.key),
                                                        value_at(configs[(PAPER, row.stage)], row.key))
               for c in CPU_COLUMNS):
            problems.append(f"{row.key} ({row.stage}): equal to the paper's in every CPU run; drop the row")
    return problems


def uncovered_differences(rows, listed, configs):
    """Keys on which a CPU run differs from the paper with neither a row nor a place in the list.

    A warm-up key without a warm-up row may be covered by its semi-supervised row when that row's
    paper and CPU values are also the warm-up's (e.g. the LR of every stage)."""
    by_key = {(r.key, r.stage): r for r in rows if r.key}
    problems = []
    for column in CPU_COLUMNS:
        for stage in (SSL, WARM_UP):
            cfg = configs[(column, stage)]
            if cfg is None:
                continue
            paper, cpu = flat(configs[(PAPER, stage)]), flat(cfg)
            for key in sorted(k for k in cpu if not same(cpu[k], paper.get(k))):
                if key in listed or (key, stage) in by_key:
                    continue
                row = by_key.get((key, SSL))
                if stage == WARM_UP and row is not None and same(cell_value(row.cells[PAPER]), paper[key]) \
                        and same(cell_value(row.cells[column]), cpu[key]):
                    continue
                problems.append(f"{key} ({stage}), {column}: paper {plain(paper.get(key))!r}, CPU "
                                f"{plain(cpu[key])!r}, and no row in the README table says so")
    return problems


def check(text: str, configs):
    rows = parse_rows(text)
    return value_mismatches(rows, configs) + uncovered_differences(rows, other_keys(text), configs)


@pytest.fixture(scope="module")
def readme():
    return (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return stage_configs(tmp_path_factory.mktemp("hparam_stages"))


def test_every_row_is_complete_and_explained(readme):
    rows = parse_rows(readme)
    assert len([r for r in rows if r.key]) >= 30
    for row in rows:
        assert all(row.cells[c] for c in COLUMNS), f"row {row.name!r} has an empty cell"
        assert len(row.cells["reason"]) > 10, f"row {row.name!r} gives no reason"
    assert len({(r.key, r.stage) for r in rows if r.key}) == len([r for r in rows if r.key]), "a key has two rows"


def test_table_values_are_those_the_configs_resolve_to(readme, configs):
    assert check(readme, configs) == []


def test_the_columns_are_the_reported_runs(readme):
    """The budgets the CPU columns are built with are those of the runs whose numbers the README reports."""
    for command in REPORTED_COMMANDS:
        assert command in readme
    assert (f"{ABLATION['warmup_iters']} warm-up iterations (rows with one), {ABLATION['burn_in_iters']} burn-in "
            f"iterations, then {ABLATION['branch_iters']} per branch") in readme


@pytest.mark.parametrize("old, new, expected", [
    # a CPU value changed in the README
    ("| `MODEL.TEACHER.EMA_DECAY` | `0.999` | `0.99` |", "| `MODEL.TEACHER.EMA_DECAY` | `0.999` | `0.9` |",
     "MODEL.TEACHER.EMA_DECAY (semi-supervised stage), shapes: benchmark: README 0.9, config 0.99"),
    # a paper value changed in the README
    ("| `SAM.PRED_IOU_THRESH` (warm-up) | `0.88` |", "| `SAM.PRED_IOU_THRESH` (warm-up) | `0.8` |",
     "SAM.PRED_IOU_THRESH (warm-up), paper (reference implementation): README 0.8, config 0.88"),
    # a row removed (new None: the line goes): its key is now an unexplained difference
    ("| `MODEL.MASK_FORMER.NHEADS` |", None,
     "MODEL.MASK_FORMER.NHEADS (semi-supervised stage), shapes: benchmark: paper 8, CPU 4, and no row"),
    # a stage the run does not have
    ("| `SAM.POINTS_PER_SIDE` (warm-up) | `32` | - |", "| `SAM.POINTS_PER_SIDE` (warm-up) | `32` | `16` |",
     "SAM.POINTS_PER_SIDE (warm-up), shapes: benchmark: cell '`16`', but the run has no warm-up"),
])
def test_a_stale_table_is_reported(readme, configs, old, new, expected):
    assert readme.count(old) == 1
    if new is None:
        stale = "\n".join(line for line in readme.splitlines() if old not in line)
    else:
        stale = readme.replace(old, new)
    assert any(problem.startswith(expected) for problem in check(stale, configs)), check(stale, configs)


def exponent(value: float) -> str:
    """0.002 -> '2e-3', as the table writes learning rates."""
    return f"{value:.0e}".replace("e-0", "e-")


def test_tiny_model_settings_are_those_of_their_weight_manifests(readme):
    """The training settings quoted for the tiny CLIP and tiny SAM are those recorded with their weights."""
    cells = {r.key: r.cells["shapes: ablation, demo"] for r in parse_rows(readme) if r.key}
    clip = json.loads((REPO / "dearli" / "weights" / "dearli_convnext_tiny_shapes.json").read_text())["settings"]
    assert (f"{clip['steps']} steps of {clip['scenes_per_step']} scenes, AdamW {exponent(clip['lr'])}, weight decay "
            f"{clip['weight_decay']:g}, {clip['warmup_steps']} warm-up steps, seed {clip['seed']}") \
        in cells["MODEL.OPEN_CLIP.PRETRAINED"]
    sam = json.loads((REPO / "dearli" / "weights" / "dearli_tiny_sam_shapes.json").read_text())["settings"]
    assert (f"{sam['steps']} steps of {sam['images_per_step']} scenes, AdamW {exponent(sam['lr'])}, weight decay "
            f"{sam['weight_decay']:g}, {sam['warmup_steps']} warm-up steps, focal : dice "
            f"{sam['focal_weight']:g} : {sam['dice_weight']:g}") in cells["SAM.MODEL_TYPE"]


def test_a_row_equal_to_the_paper_is_reported(readme, configs):
    row = "| queue | `SOLVER.WEIGHT_DECAY` | `0.05` | `0.05` | `0.05` | `0.05` | none |\n"
    stale = readme.replace("| warm-up data |", row + "| warm-up data |", 1)
    assert "SOLVER.WEIGHT_DECAY (semi-supervised stage): equal to the paper's in every CPU run; drop the row" \
        in check(stale, configs)

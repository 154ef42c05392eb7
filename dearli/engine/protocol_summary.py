"""Statistics and tables of a protocol run (dearli/engine/protocol.py) over its seeds.

``runs[dataset][stage][seed]`` (:func:`dearli.engine.protocol.finished_runs`) becomes, per
dataset and stage, the mean and sample standard deviation over the seeds of student and teacher
PQ/SQ/RQ/mIoU and per-class IoU, of the stage's wall time and of its pseudo-label quality at the
end; and, for every compared branch of the table, the paired (same seed) difference branch minus
baseline over the seeds where both finished.
"""
import statistics

from .protocol import METRICS, MODELS, PSEUDO_QUALITY

DIFFERENCES = "differences"  # summary[dataset][DIFFERENCES][branch]: branch - baseline, paired by seed


def mean_std(values) -> dict:
    """Mean and sample standard deviation (0 for a single value) of ``values``."""
    values = list(values)
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _summarize_stage(by_seed: dict) -> dict:
    entry = {"seeds": sorted(by_seed)}
    for model in MODELS:
        scores = [s[model] for s in by_seed.values() if model in s]
        if scores:
            entry[model] = {m: mean_std(s[m] for s in scores) for m in METRICS}
            entry[model]["IoU"] = {c: mean_std(s["IoU"][c] for s in scores) for c in scores[0]["IoU"]}
    seconds = [s["wall_seconds"] for s in by_seed.values() if s.get("wall_seconds") is not None]
    if seconds:
        entry["wall_seconds"] = mean_std(seconds)
    qualities = [s["pseudo_quality"] for s in by_seed.values() if "pseudo_quality" in s]
    if qualities:
        entry["pseudo_quality"] = {k: mean_std(q[k] for q in qualities) for k in PSEUDO_QUALITY if k in qualities[0]}
    return entry


def _paired_difference(branch: dict, baseline: dict) -> dict:
    """branch - baseline per model and metric over the seeds where both finished; {} if none."""
    paired = sorted(set(branch) & set(baseline))
    if not paired:
        return {}
    return {"seeds": paired, **{
        model: {m: mean_std(branch[s][model][m] - baseline[s][model][m] for s in paired) for m in METRICS}
        for model in MODELS if all(model in branch[s] and model in baseline[s] for s in paired)}}


def summarize(runs: dict, tables: dict) -> dict:
    """Per dataset (in ``tables[dataset]``'s stage order) the stage summaries and, under
    ``differences``, every compared branch minus the table's baseline, paired by seed."""
    summary = {}
    for dataset, by_stage in runs.items():
        table = tables[dataset]
        entry = {s.name: _summarize_stage(by_stage[s.name]) for s in table.stages if by_stage.get(s.name)}
        baseline = by_stage.get(table.baseline, {})
        differences = {s.name: _paired_difference(by_stage.get(s.name, {}), baseline) for s in table.compared}
        differences = {name: difference for name, difference in differences.items() if difference}
        if differences:
            entry[DIFFERENCES] = differences
        summary[dataset] = entry
    return summary


def _cell(stat: dict, signed: bool = False, digits: int = 1) -> str:
    mean = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    return f"{mean} +- {stat['std']:.{digits}f}" if stat["n"] > 1 else mean


def _scores_table(entry: dict, table) -> list:
    lines = ["| stage | model | seeds | " + " | ".join(METRICS) + " |", "|---|---|---|" + "---|" * len(METRICS)]
    baseline = table.stage(table.baseline)
    rows = [(s.title, entry.get(s.name, {}), False) for s in table.stages]
    rows += [(f"**difference** ({s.label} - {baseline.label}, paired)", entry.get(DIFFERENCES, {}).get(s.name, {}), True)
             for s in table.compared]
    for title, stats, signed in rows:
        for model in MODELS:
            if model in stats:
                cells = [_cell(stats[model][m], signed) for m in METRICS]
                seeds = ", ".join(map(str, stats["seeds"]))
                lines.append(f"| {title} | {model} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def _per_class_table(entry: dict, table, model: str) -> list:
    stages = [s for s in table.stages if model in entry.get(s.name, {})]
    if not stages:
        return []
    classes = list(entry[stages[0].name][model]["IoU"])
    lines = ["", f"Per-class IoU ({model}, mean over seeds):", "",
             "| stage | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for stage in stages:
        iou = entry[stage.name][model]["IoU"]
        lines.append(f"| {stage.title} | " + " | ".join(f"{iou[c]['mean']:.1f}" for c in classes) + " |")
    return lines


def _pseudo_quality_table(entry: dict, table) -> list:
    stages = [s for s in table.stages if "pseudo_quality" in entry.get(s.name, {})]
    if not stages:
        return []
    lines = ["", "Pseudo-label quality at the end of each stage (its teacher on the first "
             "SSL.PSEUDO_QUALITY_IMAGES unlabeled images, against their withheld labels):", "",
             "| stage | seeds | " + " | ".join(PSEUDO_QUALITY) + " |", "|---|---|" + "---|" * len(PSEUDO_QUALITY)]
    for stage in stages:
        quality = entry[stage.name]["pseudo_quality"]
        seeds = ", ".join(map(str, entry[stage.name]["seeds"]))
        lines.append(f"| {stage.title} | {seeds} | " + " | ".join(
            _cell(quality[k]) if k in quality else "-" for k in PSEUDO_QUALITY) + " |")
    return lines


WALL_TIME_HEADING = "Wall time per stage"


def _wall_time_table(entry: dict, table) -> list:
    stages = [s for s in table.stages if "wall_seconds" in entry.get(s.name, {})]
    if not stages:
        return []
    lines = ["", f"{WALL_TIME_HEADING} (seconds of training and evaluation, summed over the runs that "
             "resumed it):", "", "| stage | seeds | wall time (s) |", "|---|---|---|"]
    for stage in stages:
        seeds = ", ".join(map(str, entry[stage.name]["seeds"]))
        lines.append(f"| {stage.title} | {seeds} | {_cell(entry[stage.name]['wall_seconds'], digits=0)} |")
    return lines


def markdown(summary: dict, tables: dict) -> str:
    """Per dataset: stage x model (mean +- sample std over seeds, the seeds counted) with the paired
    differences, per-class IoU of student and teacher, pseudo-label quality, and, last, wall time
    (the only part that differs between two runs of the same settings)."""
    lines = []
    for dataset, entry in summary.items():
        table = tables[dataset]
        lines += [f"### {dataset}", ""] + _scores_table(entry, table)
        for model in MODELS:
            lines += _per_class_table(entry, table, model)
        lines += _pseudo_quality_table(entry, table) + _wall_time_table(entry, table) + [""]
    return "\n".join(lines)

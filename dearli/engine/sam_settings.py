"""Settings of SAM-guided pseudo-label refinement (SemiRES port, ``extensions.md`` §2.3), read from
``cfg.SSL.SAM_REFINE`` and checked once, so :func:`dearli.engine.sam_refine.refine_with_sam` can
trust them. Each bad value is reported with the config key that holds it.
"""
import math
from dataclasses import dataclass, fields

REFINE_MODES = ("best", "iom", "cpi")

# Field -> the config key it is read from (error messages name the key a user would edit).
_CONFIG_KEYS = {
    "mode": "SSL.SAM_REFINE.MODE",
    "iom_iou": "SSL.SAM_REFINE.IOM_IOU",
    "cpi_cover": "SSL.SAM_REFINE.CPI_COVER",
    "cpi_max_growth": "SSL.SAM_REFINE.CPI_MAX_GROWTH",
    "cpi_max_spill": "SSL.SAM_REFINE.CPI_MAX_SPILL",
    "apply_to_stuff": "SSL.SAM_REFINE.APPLY_TO_STUFF",
    "refined_first": "SSL.SAM_REFINE.REFINED_FIRST",
    "min_area_frac": "SSL.SAM_REFINE.MIN_AREA_FRAC",
    "max_area_frac": "SSL.SAM_REFINE.MAX_AREA_FRAC",
    "match_stride": "SSL.SAM_REFINE.MATCH_STRIDE",
    "pwa_enabled": "SSL.SAM_REFINE.PWA.ENABLED",
    "pwa_mu": "SSL.SAM_REFINE.PWA.MU",
    "pwa_var": "SSL.SAM_REFINE.PWA.VAR",
    "pwa_offset": "SSL.SAM_REFINE.PWA.OFFSET",
}


@dataclass(frozen=True)
class SamRefineSettings:
    """Thresholds of IOM / guarded CPI / the pre-filter and the PWA weight curve.

    ``cpi_max_growth=inf`` and ``cpi_max_spill=1`` switch the superset guards off (SemiRES's
    original CPI, kept reachable for the regression test that shows why the guards exist).
    """

    mode: str = "best"
    iom_iou: float = 0.5
    cpi_cover: float = 0.7
    cpi_max_growth: float = 2.0
    cpi_max_spill: float = 0.2
    apply_to_stuff: bool = False
    refined_first: bool = True
    min_area_frac: float = 5e-4
    max_area_frac: float = 0.9
    match_stride: int = 4
    pwa_enabled: bool = False
    pwa_mu: float = 0.5
    pwa_var: float = 0.1
    pwa_offset: float = 1.3

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            problem = _problem(field.name, value)
            if problem is None and field.name == "max_area_frac" and value <= self.min_area_frac:
                problem = f"must be larger than {_CONFIG_KEYS['min_area_frac']}={self.min_area_frac!r}"
            if problem is not None:
                raise ValueError(f"{_CONFIG_KEYS[field.name]}={value!r}: {problem}")

    @classmethod
    def from_config(cls, cfg) -> "SamRefineSettings":
        """The settings of ``cfg.SSL.SAM_REFINE`` (ENABLED and MISSING_MASKS are the caller's)."""
        node = cfg.SSL.SAM_REFINE
        return cls(
            mode=node.MODE,
            iom_iou=node.IOM_IOU,
            cpi_cover=node.CPI_COVER,
            cpi_max_growth=node.CPI_MAX_GROWTH,
            cpi_max_spill=node.CPI_MAX_SPILL,
            apply_to_stuff=node.APPLY_TO_STUFF,
            refined_first=node.REFINED_FIRST,
            min_area_frac=node.MIN_AREA_FRAC,
            max_area_frac=node.MAX_AREA_FRAC,
            match_stride=node.MATCH_STRIDE,
            pwa_enabled=node.PWA.ENABLED,
            pwa_mu=node.PWA.MU,
            pwa_var=node.PWA.VAR,
            pwa_offset=node.PWA.OFFSET,
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _problem(name: str, value):
    """Why ``value`` is not acceptable for field ``name``, or None."""
    if name == "mode":
        return None if value in REFINE_MODES else f"expected one of {REFINE_MODES}"
    if name in ("apply_to_stuff", "refined_first", "pwa_enabled"):
        return None if isinstance(value, bool) else "expected True or False"
    if name == "match_stride":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else "expected an integer >= 1"
    if not _is_number(value):
        return "expected a number"
    ranges = {
        "iom_iou": (0.0 <= value < 1.0, "expected 0 <= value < 1"),
        "cpi_cover": (0.0 <= value < 1.0, "expected 0 <= value < 1"),
        "cpi_max_growth": (value > 0.0, "expected a value > 0 (inf: no growth guard)"),
        "cpi_max_spill": (0.0 <= value <= 1.0, "expected 0 <= value <= 1 (1: no spill guard)"),
        "min_area_frac": (0.0 <= value < 1.0, "expected 0 <= value < 1"),
        "max_area_frac": (0.0 < value <= 1.0, "expected 0 < value <= 1"),
        "pwa_mu": (math.isfinite(value), "expected a finite number"),
        "pwa_var": (math.isfinite(value) and value > 0.0, "expected a finite value > 0"),
        "pwa_offset": (math.isfinite(value), "expected a finite number"),
    }
    ok, message = ranges[name]
    return None if ok else message

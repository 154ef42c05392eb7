"""Import a script of tools/ as a module, so tests call its ``main(argv)`` in-process."""
import importlib.util
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    """The module of ``tools/<name>.py`` (executed once per call, like a fresh import)."""
    path = TOOLS_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dearli_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

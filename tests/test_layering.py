"""The library's layering: it never imports the trainer, and its modules import each other without cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import equiav

PACKAGE = Path(equiav.__file__).parent
LIBRARY_MODULES = sorted(
    f"equiav.{path.stem}"
    for path in PACKAGE.glob("*.py")
    if path.stem not in ("__init__", "__main__", "frontend")
)


def _imports(path: Path, module: str) -> set[str]:
    """Every equiav module that ``path`` imports, at module level or inside functions."""
    package = module.rpartition(".")[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("equiav")}


def _library_graph() -> dict[str, set[str]]:
    modules = {f"equiav.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__main__"}
    modules["equiav"] = modules.pop("equiav.__init__")
    return {name: _imports(path, name) & set(modules) - {name} for name, path in modules.items()}


def test_importing_the_library_loads_no_training_module() -> None:
    code = (
        "import sys, importlib\n"
        f"for name in {LIBRARY_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "importlib.import_module('equiav').EquiAVModel('equiav-tiny')\n"
        "print(sorted(m for m in sys.modules if m.startswith('equiav.training')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_library_modules_do_not_name_the_training_package() -> None:
    for path in PACKAGE.glob("*.py"):
        imported = _imports(path, f"equiav.{path.stem}")
        assert not any(module.startswith("equiav.training") for module in imported), path.name


def test_library_imports_have_no_cycles() -> None:
    graph = _library_graph()
    graph.pop("equiav")  # the package re-exports its modules; they never import it back
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(
            visiting[visiting.index(module) :] + [module]
        )
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_frontend_is_a_deprecated_alias_of_the_audio_functions() -> None:
    from equiav import audio

    sys.modules.pop("equiav.frontend", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import equiav.frontend as frontend
    assert any(
        issubclass(w.category, DeprecationWarning) and "equiav.audio" in str(w.message) for w in caught
    )
    assert frontend.audio_input_to_fbanks is audio.audio_input_to_fbanks
    assert frontend.audio_inputs_to_fbanks is audio.audio_inputs_to_fbanks

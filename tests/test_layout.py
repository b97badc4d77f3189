"""The package layout (docs/architecture.md): lower layers never import upper ones, and the method stays pure."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "r3v_ray"

# Low to high. The engine interface (r3v_ray/engines/base.py: the request and sampling types) sits below the method,
# which builds requests in it; the engines themselves sit above the cluster code they size themselves with.
LAYERS = [
    {"r3v_ray.config"},
    {"r3v_ray.run"},
    {"r3v_ray.tasks", "r3v_ray.engines.base"},
    {"r3v_ray.method"},
    {"r3v_ray.models"},
    {"r3v_ray.observe"},
    {"r3v_ray.cluster"},
    {"r3v_ray.engines"},
    {"r3v_ray.training"},
    {"r3v_ray.pipeline"},
    {"r3v_ray.serving"},
    {"r3v_ray.experiments"},
    {"r3v_ray.cli", "r3v_ray.config_reference", "r3v_ray"},
]
PURE = ("ray", "torch", "transformers", "deepspeed", "vllm")  # what the method must not import


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    """The layer of a module: the most specific entry that names it or a package above it."""
    named = [(len(entry), rank) for rank, entries in enumerate(LAYERS) for entry in entries
             if module == entry or module.startswith(entry + ".")]
    assert named, f"{module} is in no layer of tests/test_layout.py"
    return max(named)[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an r3v_ray module imports, at module level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "r3v_ray":  # `from r3v_ray import x`: x is a module of the package
                found += [(node.lineno, f"r3v_ray.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    here = _module(path)
    upward = [f"line {line}: {name}" for line, name in _imports(path)
              if name.startswith("r3v_ray") and _rank(name) > _rank(here)]
    assert not upward, f"{here} imports a higher layer: {upward}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "method").glob("*.py")), ids=lambda p: p.name)
def test_the_method_is_pure(path):
    heavy = [name for _, name in _imports(path) if name.split(".")[0] in PURE]
    assert not heavy, f"r3v_ray/method/{path.name} imports {heavy}"


def test_the_tiny_model_does_not_import_a_task():
    names = [name for _, name in _imports(PACKAGE / "models" / "tiny.py")]
    assert not [n for n in names if n.startswith("r3v_ray.tasks")], names


def test_the_config_bounds_the_captions_by_the_prompts_it_does_not_import():
    from r3v_ray.config import CAPTION_WORDINGS
    from r3v_ray.method.prompts import CAPTION_PROMPTS

    assert CAPTION_WORDINGS == len(CAPTION_PROMPTS)


def test_no_flat_modules_left_beside_the_packages():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "config.py", "config_reference.py"]

"""The layers go one way, and the light stages do not load torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Top-level package names a module imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted((REPO / "transforms").glob("*.py")), ids=lambda p: p.name)
def test_transforms_never_import_pipeline_or_the_dev_tools(path):
    assert not imports(path) & {"pipeline", "bench", "tests"}


def test_no_two_modules_of_a_package_import_each_other():
    """Module-level or inside a function: an import cycle is one layer, not two."""
    for package in ("transforms", "pipeline"):
        graph = {}
        for path in (REPO / package).glob("*.py"):
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                    found |= {n.split(".")[1] for n in names
                              if n.startswith(f"{package}.") and n.count(".") >= 1}
                elif isinstance(node, ast.Import):
                    found |= {a.name.split(".")[1] for a in node.names
                              if a.name.startswith(f"{package}.")}
            graph[path.stem] = found - {path.stem}
        seen, path_ = set(), []

        def visit(node):
            assert node not in path_, f"{package}: import cycle {' -> '.join(path_ + [node])}"
            if node in seen:
                return
            path_.append(node)
            for nxt in sorted(graph.get(node, ())):
                visit(nxt)
            path_.pop()
            seen.add(node)

        for node in sorted(graph):
            visit(node)


@pytest.mark.parametrize("path", sorted((REPO / "pipeline").glob("*.py")), ids=lambda p: p.name)
def test_the_production_package_never_imports_the_dev_tools(path):
    assert not imports(path) & {"bench", "tests"}


@pytest.mark.parametrize("module", [
    "pipeline.options", "pipeline.tasks", "transforms.read", "transforms.route",
    "transforms.write", "transforms.shards", "transforms.align", "transforms.spec",
    "transforms.language",
])
def test_light_stages_import_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} imports torch"


def test_parsing_a_task_file_of_hf_models_does_not_load_torch(tmp_path):
    from tests.conftest import TOKENIZER
    from tests.fixtures.models import build_hf

    build_hf(tmp_path / "m", TOKENIZER)
    (tmp_path / "t.yaml").write_text("tasks:\n  p:\n    kind: hf\n    model: m\n"
                                     "    languages: [es]\n")
    code = ("import sys; from pipeline.tasks import load_tasks; "
            f"load_tasks({str(tmp_path / 't.yaml')!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"

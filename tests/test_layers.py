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

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


TRANSFORMS = sorted((REPO / "transforms").rglob("*.py"))
STAGES = {p.stem for p in (REPO / "transforms").glob("*.py")} - {"__init__"}
# what each part of transforms/ may not import: pure logic no Beam, torch nor I/O; formats,
# storage and models no Beam (the stages on top wrap them)
FORBIDDEN = {"core": {"apache_beam", "torch", "fsspec", "pyarrow", "pandas", "gcsfs", "s3fs",
                      "openvino", "transformers", "nncf"},
             "formats": {"apache_beam", "torch"}, "io": {"apache_beam", "torch"},
             "inference": {"apache_beam"}, "outputs": {"apache_beam", "torch"}}


def module_imports(path: Path) -> set[str]:
    """The modules of this repository a module imports (anywhere in it), dotted."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts)
               for root in ("transforms", "pipeline") for p in (REPO / root).rglob("*.py")}
    return {m for m in found if m in modules and not m.endswith("__init__")}


@pytest.mark.parametrize("path", TRANSFORMS, ids=lambda p: str(p.relative_to(REPO)))
def test_transforms_never_import_pipeline_or_the_dev_tools(path):
    assert not imports(path) & {"pipeline", "bench", "tests"}


@pytest.mark.parametrize("path", TRANSFORMS, ids=lambda p: str(p.relative_to(REPO)))
def test_each_part_of_transforms_keeps_to_its_layer(path):
    part = path.parent.name
    if part == "transforms":
        return  # the stages: Beam over the parts below
    assert not imports(path) & FORBIDDEN[part]
    stages = {m for m in module_imports(path) if m.count(".") == 1
              and m.split(".")[1] in STAGES}
    assert not stages, f"{path.name} imports the stages {stages}"
    if part == "core":
        assert all(m.startswith("transforms.core") for m in module_imports(path)
                   if m.startswith("transforms."))


def test_no_two_modules_import_each_other():
    """Module-level or inside a function: an import cycle is one layer, not two."""
    graph = {".".join(p.relative_to(REPO).with_suffix("").parts): module_imports(p)
             for root in ("transforms", "pipeline") for p in (REPO / root).rglob("*.py")}
    seen, stack = set(), []

    def visit(node):
        assert node not in stack, f"import cycle {' -> '.join(stack + [node])}"
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, set()) - {node}):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)


@pytest.mark.parametrize("path", sorted((REPO / "pipeline").glob("*.py")), ids=lambda p: p.name)
def test_the_production_package_never_imports_the_dev_tools(path):
    assert not imports(path) & {"bench", "tests"}


@pytest.mark.parametrize("module", [
    "pipeline.options", "pipeline.tasks", "transforms.read", "transforms.route",
    "transforms.write", "transforms.io.shards", "transforms.decode", "transforms.qualify",
    "transforms.render", "transforms.outputs.commit", "transforms.core.spec",
    "transforms.inference.language",
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

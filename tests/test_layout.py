"""The package's shape (issue 14): modules that import each other in one direction only, no private
name reached for across modules, and no module so long that it holds several ideas."""
import ast
from pathlib import Path

import pecrs

PACKAGE = Path(pecrs.__file__).parent
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(module imported, names imported from it) for every import in the file, lazy ones included."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            yield module, [alias.name for alias in node.names]


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in _imports(path):
            targets = [module] + [f"{module}.{n}" for n in names]  # `from . import metrics`
            for target in targets:
                if target in modules and target != name and not target.startswith(name + "."):
                    graph[name].add(target)  # a package's __init__ re-exporting its own modules is no cycle
    return graph


def test_no_import_cycles():
    graph, cycles = _graph(), []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_imported_across_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        here = _module_name(path)
        for module, names in _imports(path):
            if not (module or "").startswith("pecrs"):
                continue
            same_package = module.rpartition(".")[0] == here.rpartition(".")[0] and "." in here[6:]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and not same_package:  # a package's own modules may share private helpers
                offenders.append(f"{here}: from {module} import {', '.join(private)}")
    assert not offenders, "\n".join(offenders)


def test_no_module_over_the_line_budget():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_readme_names_real_files_and_settings():
    """Every `pecrs/...` path the README names exists, every `section.setting` it names is one, and
    its inference table lists the whole inference section."""
    import dataclasses
    import re

    from pecrs.config import LEGACY_TRAIN_KEYS, RunConfig

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    paths = [p for p in re.findall(r"`(pecrs/[\w./]+)`", readme) if not p.endswith("/NAME")]  # NAME: a placeholder
    missing = [p for p in paths if not (PACKAGE.parent / p).exists()]
    assert not missing, f"README names files that do not exist: {missing}"
    config = RunConfig()
    settings = {f"{s}.{f.name}" for s in ("model", "train", "inference") for f in dataclasses.fields(getattr(config, s))}
    named = set(re.findall(r"`((?:model|train|inference)\.\w+)", readme)) - {f"train.{k}" for k in LEGACY_TRAIN_KEYS}
    assert named <= settings, f"README names settings that do not exist: {sorted(named - settings)}"
    assert {s for s in settings if s.startswith("inference.")} <= named

"""The package's shape: imports point one way, no cycles, nothing branches on mixer names outside the mixers,
and the public names are re-exported where users look for them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mixnas
from mixnas.search_space import mixer_names
from mixnas.supernet.mixers import is_builtin

PACKAGE = Path(mixnas.__file__).resolve().parent
# Lower layers never import higher ones (DESIGN.md section 1); modules of one layer may import each other
# only within their own package.
LAYERS = {
    "mixnas.errors": 0, "mixnas.atomic": 0, "mixnas.device": 0, "mixnas.run_dir": 0, "mixnas.trials": 0,
    "mixnas.lock": 0,
    "mixnas.search_space": 1, "mixnas.packaged": 1,
    "mixnas.supernet": 2, "mixnas.data": 2,
    "mixnas.training": 3,
    "mixnas.search": 4,
    "mixnas.results": 5,
    "mixnas.presets": 6,
    "mixnas.cli": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str | None:
    """The mixnas module (or package) an imported name refers to; None outside mixnas."""
    if name != "mixnas" and not name.startswith("mixnas."):
        return None
    while name:
        rel = Path(*name.split("."))
        if (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file():
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path) -> set[str]:
    """Every mixnas module ``path`` imports, at module level or inside functions (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            target = resolve(n)
            if target is not None:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p) - {m} for m, p in modules.items()}


def layer(module: str) -> int | None:
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in graph() if m != "mixnas" and layer(m) is None]
    assert not unplaced, f"modules outside the layer map: {unplaced}"


def test_imports_point_one_way_and_the_library_never_imports_the_cli() -> None:
    wrong = []
    for module, targets in graph().items():
        if module == "mixnas":  # the package's __init__ re-exports the public surface
            continue
        for target in targets:
            if target == "mixnas":
                continue
            if target == "mixnas.cli" and module != "mixnas.cli":
                wrong.append(f"{module} imports mixnas.cli")
            elif layer(target) > layer(module):
                wrong.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_two_runners_share_modules_not_each_other() -> None:
    """The Optuna and Ray runners are peers over ``_shared`` and ``_study``; the Ray instance's code lives in
    ``ray_cluster`` (rank-check uses it), never in the runner."""
    edges = graph()
    optuna_side, ray_side = {"mixnas.search.optuna_runner"}, {
        "mixnas.search.ray_runner", "mixnas.search.ray_worker", "mixnas.search.ray_cluster"}
    wrong = [f"{m} imports {t}" for m in optuna_side for t in edges[m] & ray_side]
    wrong += [f"{m} imports {t}" for m in ray_side for t in edges[m] & optuna_side]
    wrong += [f"{m} imports {t}" for m in ("mixnas.search.ray_cluster", "mixnas.search.ray_worker",
                                            "mixnas.search.ranking") for t in edges[m] & {"mixnas.search.ray_runner"}]
    assert not wrong, "\n".join(wrong)
    assert "mixnas.search.ray_cluster" in edges["mixnas.search.ranking"]


def test_no_import_cycles() -> None:
    edges = graph()
    edges.pop("mixnas", None)
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt == "mixnas":
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_argparse_lives_in_the_cli_only() -> None:
    users = [module_name(p) for p in PACKAGE.rglob("*.py") if "argparse" in imports_of_stdlib(p)]
    assert users == ["mixnas.cli"]


def imports_of_stdlib(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def string_constants(path: Path) -> set[str]:
    """String literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


def test_no_mixer_names_outside_the_mixers() -> None:
    """Nothing branches on mixer types: their names appear only in the mixers' own modules (configs, docs
    and tests aside). Only mixnas's own mixers count: an installed plug-in's name is someone else's choice
    and may be any word mixnas uses (``pool``, a key of the guided sampler's proposals)."""
    names = {n for n in mixer_names() if is_builtin(n)}
    mixers_dir = PACKAGE / "supernet" / "mixers"
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if mixers_dir in path.parents:
            continue
        found = {s for s in string_constants(path) if s in names or any(s.startswith(f"{n}(") for n in names)}
        if found:
            offenders[module_name(path)] = sorted(found)
    assert not offenders, offenders


@pytest.mark.parametrize(
    "package, names",
    [
        ("mixnas", ["ArchConfig", "SearchSpace", "Supernet", "build_model", "register_mixer", "MixnasError"]),
        ("mixnas.search_space", ["MixerSpec", "MixerConfig", "IntParam", "get_mixer", "mixer_names"]),
        ("mixnas.supernet", ["MixerNet", "MixerContext", "DynamicCost", "budget_loss"]),
        ("mixnas.training", ["fit", "TrainConfig", "StandaloneConfig", "train_supernet", "train_architecture"]),
        ("mixnas.search", ["CandidateEvaluator", "EvalSettings", "SearchSettings", "Limits", "run_optuna_search"]),
        ("mixnas.results", ["load_trials", "pareto_front", "write_pages", "export_architectures"]),
    ],
)
def test_packages_re_export_their_public_names(package: str, names: list[str]) -> None:
    import importlib

    module = importlib.import_module(package)
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{package} lacks {missing}"


def test_one_error_base() -> None:
    from mixnas import errors

    kinds = [errors.ConfigError, errors.DataError, errors.CheckpointError, errors.ResultsError, errors.LUTError,
             errors.UsageError, errors.RunLockedError]
    assert all(issubclass(k, errors.MixnasError) for k in kinds)
    defined = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id in ("Exception", "ValueError", "RuntimeError") for b in node.bases
            ):
                defined.append(f"{module_name(path)}.{node.name}")
    assert defined == ["mixnas.errors.MixnasError"] or all(d.startswith("mixnas.errors.") for d in defined), defined

"""Each stage's code deps in dvc.yaml are exactly the project code the stage runs.

The code a stage runs is derived statically from its entry module (``python -m stages.X``):
every ``pipeline.*``/``stages.*`` module it imports, transitively, at module level or inside
functions (the code imports lazily), absolute or relative, ``import a.b`` and
``from a import b`` alike, with the ``__init__`` of every package on the way. A package that
discovers its own modules at run time (it hands its ``__path__`` to a call, as
pipeline/methods does with pkgutil) is needed as a whole directory: a new file there is new
code the stage runs.

Left out on purpose, each with its reason: code that only logs (OUTPUT_NEUTRAL) and imports
made only to validate names before any work (VALIDATION_ONLY). Everything else must be a dep,
and every code dep must be code the stage runs, so that a change reruns exactly the stages
whose results it can change.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("pipeline", "stages")

# Code that cannot change any stage's DVC outputs: not followed, and not a dep.
OUTPUT_NEUTRAL = {
    "pipeline/tracking": "MLflow runs, metrics and registry: how a run is logged, not its results",
    "pipeline/provenance.py": "the record each MLflow run gets (commit, packages, DVC hashes)",
    "pipeline/progress.py": "progress bars and log lines on the console",
    "pipeline/plots.py": "PNG charts logged to MLflow; the plots' CSVs are written by the stages",
    "pipeline/__init__.py": "the package docstring and __version__, which no stage reads",
    "stages/__init__.py": "empty: makes stages/ a package",
}

# Functions whose imports only look names up so that a typo fails the first stage; the names'
# code runs (and is a dep) in the stages that use it, never in the others.
VALIDATION_ONLY = {
    ("stages.common", "resolve_names"): "search.method and model.arch exist (every stage)",
    ("stages.common", "check_user_files_are_deps"): "the user's files are deps (every stage)",
}


@dataclass
class ImportGraph:
    """The project modules under ``root`` and what each imports (statically)."""

    root: Path
    packages: tuple[str, ...] = PROJECT_PACKAGES
    neutral: tuple[str, ...] = tuple(OUTPUT_NEUTRAL)
    skipped_functions: frozenset[tuple[str, str]] = frozenset(VALIDATION_ONLY)
    importers: dict[str, str] = field(default_factory=dict)  # module -> who imported it first

    def file(self, module: str) -> Path | None:
        base = self.root.joinpath(*module.split("."))
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def is_neutral(self, module: str) -> bool:
        path = self.relative(self.file(module))
        return any(path == n or path.startswith(n.rstrip("/") + "/") for n in self.neutral)

    def imports(self, module: str) -> tuple[set[str], bool]:
        """The project modules ``module`` imports, and whether it discovers its own modules
        (hands ``__path__`` to a call)."""
        path = self.file(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        discovers = False
        for node in self._nodes(tree, module):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Call):
                arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
                discovers |= any(isinstance(a, ast.Name) and a.id == "__path__" for a in arguments)
        project = {m for m in found if m.split(".")[0] in self.packages and self.file(m)}
        return project, discovers

    def _nodes(self, tree: ast.AST, module: str):
        """Every node of ``tree``, less the bodies of VALIDATION_ONLY functions."""
        for node in ast.iter_child_nodes(tree):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and (module, node.name) in self.skipped_functions:
                continue
            yield node
            yield from self._nodes(node, module)

    def submodules(self, package: str) -> set[str]:
        directory = self.file(package).parent
        return {
            ".".join(path.relative_to(self.root).with_suffix("").parts).removesuffix(".__init__")
            for path in directory.rglob("*.py")
        }

    def closure(self, entry: str) -> tuple[set[str], set[str]]:
        """(modules, directories): the project modules ``entry`` runs, as repository-relative
        files, and the packages it needs whole (they discover their modules)."""
        modules, directories, todo = set(), set(), [entry]
        while todo:
            module = todo.pop()
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                name = ".".join(parts[:depth])
                if name in modules or self.is_neutral(name):
                    continue
                modules.add(name)
                imported, discovers = self.imports(name)
                if discovers:
                    directories.add(self.relative(self.file(name).parent))
                    imported |= self.submodules(name)
                for other in imported - modules:
                    self.importers.setdefault(other, name)
                    todo.append(other)
        return {self.relative(self.file(m)) for m in modules}, directories


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


# --------------------------------------------------------------------------- dvc.yaml


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def entry_module(stage: dict) -> str:
    match = re.search(r"python -m ([\w.]+)", stage["cmd"])
    assert match, f"cannot tell the entry module of {stage['cmd']!r}"
    return match.group(1)


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if d.split("/")[0] in PROJECT_PACKAGES]


def covered(path: str, deps: list[str]) -> bool:
    """``path`` is a dep or lies in a directory dep (a directory needed whole is covered by
    itself or a directory above, never by its files)."""
    return any(path == dep or path.startswith(dep + "/") for dep in deps)


def stage_code(name: str) -> tuple[set[str], set[str], ImportGraph]:
    graph = ImportGraph(ROOT)
    files, directories = graph.closure(entry_module(dvc_stages()[name]))
    return files, directories, graph


STAGE_NAMES = list(dvc_stages())


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_module_a_stage_runs_is_one_of_its_deps(name: str) -> None:
    files, directories, graph = stage_code(name)
    deps = code_deps(dvc_stages()[name])
    missing = sorted(path for path in files | directories if not covered(path, deps))
    by_file = {graph.relative(graph.file(m)): m for m in graph.importers}
    explained = [
        f"{path} (a package that imports its own modules: the directory)"
        if path in directories
        else f"{path} (imported by {graph.importers.get(by_file.get(path), 'the command')})"
        for path in missing
    ]
    assert not missing, (
        f"stage {name!r} runs code its deps in dvc.yaml do not cover, so a change there would "
        f"not rerun it: {explained}. Add each (a package as its directory) to stages.{name}.deps."
    )


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_code_dep_is_code_the_stage_runs(name: str) -> None:
    files, directories, _ = stage_code(name)
    for dep in code_deps(dvc_stages()[name]):
        assert (ROOT / dep).exists(), f"stages.{name}.deps: {dep} does not exist"
        if (ROOT / dep).is_file():
            assert dep in files, (
                f"stages.{name}.deps lists {dep}, which the stage does not import: remove it, "
                "or a change there reruns the stage for nothing."
            )
            continue
        assert dep in directories or f"{dep}/__init__.py" in files, (
            f"stages.{name}.deps lists the directory {dep}, whose package the stage does not "
            "import: remove it or list the files the stage runs."
        )
        inside = [n for n in OUTPUT_NEUTRAL if n.startswith(dep + "/")]
        assert not inside, (
            f"stages.{name}.deps lists {dep}, which holds logging-only code {inside}: changing "
            "how runs are logged would rerun the stage. List the packages below it instead."
        )


def test_the_issues_example_search_depends_on_the_loader_and_config() -> None:
    files, directories, _ = stage_code("search")
    assert {"pipeline/data/loader.py", "pipeline/config.py", "stages/training.py"} <= files
    # Found by discovery, not by any import statement: pipeline/methods imports its modules.
    assert "pipeline/methods" in directories
    assert {"pipeline/methods/baselines.py", "pipeline/methods/jst/search.py"} <= files
    search_deps = code_deps(dvc_stages()["search"])
    assert covered("pipeline/data/loader.py", search_deps)
    assert "pipeline/methods" in search_deps  # a new method file reruns search


def test_prepare_does_not_depend_on_training_code() -> None:
    """The validation-only imports are what keeps a change to a method from rerunning prepare."""
    files, _, _ = stage_code("prepare")
    assert not any(p.startswith(("pipeline/methods", "pipeline/models")) for p in files)
    everything = ImportGraph(ROOT, skipped_functions=frozenset())
    with_validation, _ = everything.closure("stages.prepare")
    assert "pipeline/methods/__init__.py" in with_validation


def test_left_out_code_exists_and_is_imported_by_a_stage() -> None:
    """OUTPUT_NEUTRAL and VALIDATION_ONLY name real code a stage imports, so stale entries
    are noticed; each holds no code that writes a DVC output."""
    for path in OUTPUT_NEUTRAL:
        assert (ROOT / path).exists(), f"OUTPUT_NEUTRAL names {path}, which does not exist"
    everything = ImportGraph(ROOT, neutral=())
    imported = set().union(*(everything.closure(entry_module(s))[0] for s in dvc_stages().values()))
    for path in OUTPUT_NEUTRAL:
        assert any(p == path or p.startswith(path + "/") for p in imported), path
    for module, function in VALIDATION_ONLY:
        tree = ast.parse(everything.file(module).read_text(encoding="utf-8"))
        assert function in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_the_analysis_sees_lazy_relative_and_discovered_imports(tmp_path: Path) -> None:
    """The closure on a small made-up project, one import form per module."""
    sources = {
        "app/__init__.py": "",
        "app/main.py": "from app import helper, log\n\ndef run():\n    import app.lazy\n",
        "app/helper.py": "from .sub import leaf\n",
        "app/lazy.py": "from . import plugins\n",
        "app/sub/__init__.py": "",
        "app/sub/leaf.py": "import os\n",
        "app/plugins/__init__.py": "import pkgutil\nnames = list(pkgutil.iter_modules(__path__))\n",
        "app/plugins/one.py": "from app.sub import leaf\n",
        "app/log.py": "",
        "app/unused.py": "",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = ImportGraph(tmp_path, packages=("app",), neutral=("app/log.py",))
    files, directories = graph.closure("app.main")
    expected = set(sources) - {"app/log.py", "app/unused.py"}
    assert files == expected
    assert directories == {"app/plugins"}
    assert covered("app/plugins/one.py", ["app/plugins"])
    assert not covered("app/plugins", ["app/plugins/one.py", "app/plugins/__init__.py"])


# --------------------------------------------------------------------------- user files


def _config(dataset="digits", root="data/raw", download=False, **model):
    from pipeline.config import PipelineConfig

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(dataset=dataset, root=root, download=download)
    params["model"].update(model)
    return PipelineConfig.model_validate(params)


def _write_dvc_yaml(repo: Path, stage: str, deps: list[str]) -> None:
    stages = {stage: {"cmd": f"python -m stages.{stage}", "deps": deps}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))


def _check(cfg, stage: str, repo: Path) -> None:
    from stages.common import check_user_files_are_deps

    check_user_files_are_deps(cfg, stage, repo)


@pytest.mark.parametrize("dep", ["${data.root}", "data/raw", "./data/raw/", "data"])
def test_prepare_accepts_own_data_declared_as_a_dep(tmp_path, dep):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    _write_dvc_yaml(tmp_path, "prepare", ["stages/prepare.py", dep])
    _check(_config("imagefolder", str(tmp_path / "data" / "raw")), "prepare", tmp_path)


def test_prepare_refuses_own_data_that_is_not_a_dep(tmp_path):
    from pipeline.errors import ConfigError

    (tmp_path / "data" / "raw").mkdir(parents=True)
    _write_dvc_yaml(tmp_path, "prepare", ["stages/prepare.py", "pipeline/data"])
    cfg = _config("imagefolder", str(tmp_path / "data" / "raw"))
    with pytest.raises(ConfigError, match=r"Add `- \$\{data.root\}` to stages.prepare.deps"):
        _check(cfg, "prepare", tmp_path)


def test_shipped_dvc_yaml_needs_no_user_file_for_digits_or_downloads():
    for dataset, download in (("digits", False), ("cifar10", True)):
        for stage in ("prepare", "search", "finetune", "export", "evaluate"):
            _check(_config(dataset, "data/raw", download), stage, ROOT)


def test_search_refuses_a_weights_file_that_is_not_a_dep(tmp_path):
    from pipeline.errors import ConfigError

    (tmp_path / "dense.safetensors").write_bytes(b"")
    cfg = _config(weights=str(tmp_path / "dense.safetensors"))
    _write_dvc_yaml(tmp_path, "search", ["data/prepared"])
    with pytest.raises(ConfigError, match=r"model.weights .* Add `- .*dense.safetensors`"):
        _check(cfg, "search", tmp_path)
    _write_dvc_yaml(tmp_path, "search", ["data/prepared", "dense.safetensors"])
    _check(cfg, "search", tmp_path)


def test_model_stages_refuse_a_user_model_module_that_is_not_a_dep(tmp_path, monkeypatch):
    from pipeline.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_nets_for_deps").mkdir()
    (tmp_path / "my_nets_for_deps" / "__init__.py").write_text("")
    (tmp_path / "my_nets_for_deps" / "small.py").write_text("def build(num_classes): ...\n")
    cfg = _config(arch="my_nets_for_deps.small:build")
    for stage in ("search", "finetune", "export", "evaluate"):
        _write_dvc_yaml(tmp_path, stage, ["data/prepared"])
        with pytest.raises(ConfigError, match=r"model.arch .* Add `- my_nets_for_deps/small.py"):
            _check(cfg, stage, tmp_path)
        _write_dvc_yaml(tmp_path, stage, ["data/prepared", "my_nets_for_deps"])
        _check(cfg, stage, tmp_path)
    _write_dvc_yaml(tmp_path, "prepare", ["stages/prepare.py"])
    _check(cfg, "prepare", tmp_path)  # the data do not depend on the model

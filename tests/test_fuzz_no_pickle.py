"""Nothing a user passes in is ever loaded through pickle (or another code-running format).

A static scan of the library and the stages refuses every call that can unpickle, and a
property-based test feeds the one pickle-format reader (CIFAR's python batches, read by a
numpy-only unpickler) pickles that name random globals, including code-running ones: each is
refused with a DataError naming the file, and nothing is ever called.
"""

from __future__ import annotations

import ast
import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.cifar import _NumpyOnlyUnpickler, load_cifar
from pipeline.errors import DataError

PROJECT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path for folder in ("pipeline", "stages") for path in (PROJECT / folder).rglob("*.py")
)
# Modules whose loaders run code from the bytes they read.
CODE_RUNNING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib"}
CODE_RUNNING_MODULES |= {"shelve", "marshal", "jsonpickle"}
UNPICKLING_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "pd.read_pickle"}
UNPICKLING_CALLS |= {"pandas.read_pickle", "mlflow.pytorch.load_model", "torch.package"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(PROJECT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in UNPICKLING_CALLS:
                found.append(f"{where}: {name}(...)")
            if name == "torch.load" and not _keyword_is_true(node, "weights_only"):
                found.append(f"{where}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _keyword_is_true(node, "allow_pickle"):
                found.append(f"{where}: {name}(allow_pickle=True)")
        if isinstance(node, ast.ImportFrom) and node.module in CODE_RUNNING_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        if isinstance(node, ast.Import):
            found += [
                f"{where}: import {alias.name}"
                for alias in node.names
                if alias.name in CODE_RUNNING_MODULES - {"pickle"}
            ]
        if isinstance(node, ast.ClassDef) and "pickle.Unpickler" in map(_dotted, node.bases):
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if "find_class" not in methods:
                found.append(f"{where}: Unpickler subclass without a find_class allow-list")
    return found


def test_the_scan_sees_the_project():
    assert len(SOURCES) > 20
    names = {p.name for p in SOURCES}
    assert {"artifacts.py", "cifar.py", "common.py"} <= names


def test_no_code_path_can_unpickle_a_file():
    """pickle only through an allow-listed Unpickler subclass; torch.load only with
    weights_only=True; no numpy pickles, joblib, dill, shelve, marshal..."""
    found = [v for path in SOURCES for v in _violations(path)]
    assert not found, "code that can run code from a file:\n" + "\n".join(found)


def test_the_scan_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, torch, numpy as np, joblib\n"
        "pickle.loads(b'')\n"
        "torch.load('m.pt')\n"
        "torch.load('m.pt', weights_only=False)\n"
        "np.load('a.npy', allow_pickle=True)\n"
        "class U(pickle.Unpickler):\n    pass\n"
    )
    global PROJECT
    saved, PROJECT = PROJECT, tmp_path
    try:
        assert len(_violations(bad)) == 6, _violations(bad)
    finally:
        PROJECT = saved


def _calling_pickle(module: str, name: str, argument: str) -> bytes:
    """A protocol-2 pickle that calls ``module.name(argument)``: a malicious payload."""
    text = argument.encode()
    return (
        b"\x80\x02c"
        + f"{module}\n{name}\n".encode()  # PROTO 2, GLOBAL module name
        + b"X"
        + struct.pack("<I", len(text))
        + text  # BINUNICODE argument
        + b"\x85R."  # TUPLE1, REDUCE (the call), STOP
    )


_GLOBALS = st.one_of(
    st.sampled_from(
        [
            ("os", "system"),
            ("os", "mkdir"),
            ("builtins", "eval"),
            ("builtins", "exec"),
            ("subprocess", "Popen"),
            ("posix", "system"),
            ("builtins", "getattr"),
            ("pathlib", "Path"),
            ("numpy", "load"),
            ("numpy.core.multiarray", "_unknown"),
            ("torch", "load"),
        ]
    ),
    st.tuples(
        st.from_regex(r"[a-z_][a-z0-9_.]{0,12}", fullmatch=True),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
    ).filter(lambda pair: pair not in _NumpyOnlyUnpickler._ALLOWED),
)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar-pickles")
    (root / "cifar-10-batches-py").mkdir()
    return root


@settings(
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(_GLOBALS, st.sampled_from(["batches.meta", "data_batch_1"]))
def test_a_pickle_naming_any_other_global_is_refused(cifar_root, target, file_name):
    """The meta file is read first, then data_batch_1: the payload is what fails."""
    module, name = target
    folder = cifar_root / "cifar-10-batches-py"
    meta = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2)
    for other in ["batches.meta", "test_batch", *[f"data_batch_{i}" for i in range(1, 6)]]:
        (folder / other).write_bytes(meta)
    marker = cifar_root / "touched"
    path = folder / file_name
    path.write_bytes(_calling_pickle(module, name, str(marker)))
    with pytest.raises(DataError) as error:
        load_cifar("cifar10", cifar_root, download=False)
    assert str(path) in str(error.value), str(error.value)
    assert f"global '{module}.{name}' is not allowed" in str(error.value), str(error.value)
    assert not marker.exists()


def test_the_payload_does_run_code_when_unpickled_plainly(tmp_path):
    """The payload is real: plain pickle.loads would have created the marker."""
    marker = tmp_path / "touched"
    pickle.loads(_calling_pickle("os", "mkdir", str(marker)))
    assert marker.is_dir()

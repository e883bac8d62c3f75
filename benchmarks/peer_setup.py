"""Make the peers' virtual environments under ``.peers/<peer>/`` (at the repository's root,
git-ignored; outside ``benchmarks/`` so that linting it does not read the peers' code).

hyper-nn's import name is also ``hypernn``, so each peer runs in its own environment and
process (``peer_step.py``), where this repository's ``hypernn`` cannot be imported:

* ``python -m venv --without-pip .peers/<peer>`` (no system site-packages);
* the peer alone from PyPI, without its dependencies, into that environment's
  site-packages: ``python -m pip install --no-deps --target <site-packages> hyper-nn==0.2.2``
  (run by this interpreter's pip);
* a ``.pth`` file there that appends this interpreter's site-packages (torch, numpy: the
  very builds hypernn is measured with) to the path. A ``.pth`` line that names a folder
  only adds it to ``sys.path``: the ``.pth`` files inside it, among them the editable
  install's hook that maps ``hypernn`` to this repository, are not run, so ``import hypernn``
  there finds hyper-nn (checked after setting up).

``status.json`` in each environment says whether it is usable and, if not, why (e.g. PyPI
unreachable); ``run_all.py`` prints n/a with that reason. Setting up is skipped when an
environment for the same requirement and interpreter is already there.

Usage::

    python benchmarks/peer_setup.py            # both peers (make bench-peers)
    python benchmarks/peer_setup.py --force hyper-nn
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parent.parent / ".peers"
#: peer -> (requirement, module to import, check that the module is the peer's own)
PEERS = {
    "hyper-nn": ("hyper-nn==0.2.2", "hypernn.torch"),
    "hyperlight": ("hyperlight==0.0.5", "hyperlight"),
}
BASE_PTH = "_hypernn_bench_base.pth"


def environment(peer: str) -> Path:
    return ROOT / peer


def python(peer: str) -> Path:
    return environment(peer) / "bin" / "python"


def status(peer: str) -> Dict:
    """The peer environment's ``status.json`` (``ok``, ``reason``...), or why there is none."""
    path = environment(peer) / "status.json"
    if not path.exists():
        return {"ok": False, "reason": f"no environment in {environment(peer)} (run `make bench-peers`)"}
    state = json.loads(path.read_text())
    if state.get("ok") and not python(peer).exists():
        return {"ok": False, "reason": f"{python(peer)} is missing (run `make bench-peers`)"}
    return state


def _write_status(peer: str, state: Dict) -> Dict:
    environment(peer).mkdir(parents=True, exist_ok=True)
    (environment(peer) / "status.json").write_text(json.dumps(state, indent=2))
    return state


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def setup(peer: str, force: bool = False) -> Dict:
    """Make (or keep) the peer's environment; returns its status."""
    requirement, module = PEERS[peer]
    current = status(peer)
    if (not force and current.get("ok") and current.get("requirement") == requirement
            and current.get("interpreter") == sys.executable):  # fmt: skip
        return current
    shutil.rmtree(environment(peer), ignore_errors=True)
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment(peer))],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        return _write_status(peer, {"ok": False, "reason": f"python -m venv failed: {_last_line(made.stderr)}"})
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python(peer)), "-c", query], capture_output=True, text=True, check=True).stdout.strip()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
         "--timeout", "30", "--retries", "1", "--target", site, requirement],
        capture_output=True, text=True,
    )  # fmt: skip
    if install.returncode != 0:
        reason = f"`pip install --no-deps {requirement}` failed: {_last_line(install.stderr or install.stdout)}"
        return _write_status(peer, {"ok": False, "requirement": requirement, "reason": reason})
    base = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    Path(site, BASE_PTH).write_text("\n".join(base) + "\n")
    probe = (f"import json, importlib, torch; m = importlib.import_module({module!r}); "
             "import sys; top = sys.modules[m.__name__.split('.')[0]]; "
             "print(json.dumps({'file': m.__file__, 'ours': top.__name__ == 'hypernn' and hasattr(top, 'hypernetize'), "
             "'torch': torch.__version__}))")  # fmt: skip
    checked = subprocess.run([str(python(peer)), "-c", probe], capture_output=True, text=True, cwd=str(environment(peer)),
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    if checked.returncode != 0:
        return _write_status(peer, {"ok": False, "requirement": requirement,
                                    "reason": f"import {module} failed there: {_last_line(checked.stderr)}"})  # fmt: skip
    found = json.loads(_last_line(checked.stdout))
    if found["ours"] or not found["file"].startswith(site):
        return _write_status(peer, {"ok": False, "requirement": requirement,
                                    "reason": f"`import {module}` found {found['file']}, not the peer's"})  # fmt: skip
    return _write_status(peer, {"ok": True, "requirement": requirement, "interpreter": sys.executable,
                                "site_packages": site, "base": base, "torch": found["torch"]})  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Make the peers' virtual environments (.peers/).")
    parser.add_argument("peers", nargs="*", metavar="PEER", help=f"which, of {', '.join(PEERS)} (default: all)")
    parser.add_argument("--force", action="store_true", help="make them again even if they are there")
    args = parser.parse_args(argv)
    unknown = [peer for peer in args.peers if peer not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    for peer in args.peers or list(PEERS):
        state = setup(peer, args.force)
        print(f"{peer}: " + (f"ready ({state['requirement']}, {python(peer)})" if state["ok"] else f"n/a: {state['reason']}"))
    return 0  # a peer that cannot be installed is reported n/a by run_all.py, not an error


if __name__ == "__main__":
    sys.exit(main())

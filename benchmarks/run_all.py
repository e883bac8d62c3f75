"""The benchmark suite (``make bench``): every workload, one table, ``benchmarks/RESULTS.md``.

Each workload script runs in its own subprocess (so that thread settings, imports and
caches do not leak from one to the next) with ``--json``; this runner collects the JSON,
prints one table and writes it, with the machine, the versions and the date, to
``benchmarks/RESULTS.md`` (and the raw results to ``benchmarks/RESULTS.json``, git-ignored).

Every ratio is the median of per-round ratios measured in one process run, implementation
and baseline interleaved round by round, torch / XLA on one thread, process CPU time. Each
row is checked against issue 7's target for it (MET / MISSED); the peers' rows against
hypernn's own ratio on the same workload (MET when hypernn's overhead ratio is lower).

Workloads (scripts in this folder):

* static MLP 784-256-256-10, batch 128, training step: torch eager (``torch_mlp_step.py``),
  torch compiled (``torch_compiled_step.py``), JAX jit, linen and NNX (``jax_mlp_step.py``);
* many small tensors, 48-layer MLP of width 64, forward and step, against a functional and
  a same-model twin (``torch_small_tensors.py``), and under JAX jit (``jax_small_tensors.py``);
* dynamic per-sample weights, batch 256, MLP and CNN, against a batched hand-written step
  and a Python loop: torch (``torch_dynamic_step.py``), JAX (``jax_dynamic_step.py``, run
  when present);
* selective hypernetization of a small transformer (``torch_transformer_step.py``);
* eval with reuse (``torch_eval_reuse.py``);
* peers, hyper-nn 0.2.2 and hyperlight 0.0.5, each in its own environment under ``.peers/``
  (``peer_setup.py``, ``peer_step.py``); a peer that is not installed, or cannot run a
  workload, is n/a with the reason.

Usage::

    python benchmarks/run_all.py                  # the suite (~10 min on 2 idle cores)
    python benchmarks/run_all.py --quick          # a smoke run: few rounds (~4 min), numbers rough
    python benchmarks/run_all.py --only torch_small_tensors peers --output /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import peer_setup  # noqa: E402  (this folder)

#: memory columns' methods, by short name (the legend under the table)
MEMORY = {
    "RSS": "peak RSS growth over the first 3 calls, fresh process per implementation (VmHWM after clear_refs)",
    "RSS'": "peak RSS growth over 3 steps after the compiling one, fresh process per implementation",
    "prof": "peak live torch tensor bytes during one step above those live at its start (torch.profiler)",
    "XLA": "temp + argument + output bytes of the compiled step (XLA memory_analysis; loops: largest jitted piece)",
}
TIMEOUT_S = 1800


# ---------------------------------------------------------------- rows


def row(workload: str, implementation: str, baseline: str, ratio: Optional[float], ratios=(), ms=None,
        baseline_ms=None, target: Optional[float] = None, kind: str = "<=", memory=None, baseline_memory=None,
        method: str = "", notes: str = "", metric: str = "ratio", na: str = "") -> Dict[str, Any]:  # fmt: skip
    """One table row. ``metric="speedup"``: ``ratio`` is baseline/implementation (``>= target``)."""
    met = None
    if ratio is not None and target is not None:
        met = ratio <= target if kind == "<=" else ratio >= target
    return {"workload": workload, "implementation": implementation, "baseline": baseline, "ratio": ratio,
            "range": (min(ratios), max(ratios)) if ratios else None, "ms": ms, "baseline_ms": baseline_ms,
            "target": target, "kind": kind, "met": met, "memory": memory, "baseline_memory": baseline_memory,
            "method": method, "notes": notes, "metric": metric, "na": na}  # fmt: skip


def from_script_rows(results: List[Dict], method: str = "RSS") -> List[Dict]:
    """Rows the new scripts write themselves (``common.make_row``)."""
    out = []
    for r in results:
        if "na" in r:
            out.append(row(r["workload"], r["implementation"], "", None, na=r["na"]))
            out[-1]["key"] = r.get("key")
            continue
        out.append(row(r["workload"], r["implementation"], r["baseline"], r["ratio"], r["per_round_ratios"], r["ms"],
                       r["baseline_ms"], r["target"], r["target_kind"], r["memory"], r["baseline_memory"],
                       memory_method(r["memory_method"], method), r.get("notes", "")))  # fmt: skip
        out[-1]["key"] = r.get("key")
    return out


def memory_method(text: str, default: str) -> str:
    """The legend's short name for a script's memory method."""
    return "XLA" if "XLA" in text else "RSS'" if "compil" in text else default


def torch_mlp_rows(results: List[Dict]) -> List[Dict]:
    out = []
    for r in results:
        rss = r.get("rss_delta_bytes", {})
        out.append(row(f"static MLP step, torch eager (D={r['embedding_dim']}, E={r['num_embeddings']})", "hypernn",
                       "hand-written twin (split + F.linear)", r["ratio"], r["per_round_ratios"],
                       r["median_ms_per_step"]["hypernn"], r["median_ms_per_step"]["hand"], 1.05, "<=",
                       rss.get("hypernn"), rss.get("hand"), "RSS"))  # fmt: skip
        out[-1]["key"] = f"static:{r['embedding_dim']}:{r['num_embeddings']}"
    return out


#: the JAX scripts' hand-written baselines, by key: each with one hypernetwork's values and start map
BASELINE_LABELS = {"hand": "hand-written pure function with linen's start map, jax.jit",
                   "hand_hyperfan": "hand-written pure function with NNX's start map, jax.jit"}  # fmt: skip


def jax_mlp_rows(results: List[Dict]) -> List[Dict]:
    out = []
    labels = {"linen": "hypernn linen", "nnx_pure": "hypernn NNX (nnx.split + jax.jit)",
              "nnx_jit": "hypernn NNX (nnx.jit)", "nnx_jit_partial": "hypernn NNX (nnx.jit_partial)"}  # fmt: skip
    for r in results:
        med, memory = r["median_ms_per_step"], r.get("xla_memory_bytes", {})
        for name, data in r["rows"].items():
            baseline = data.get("baseline", "hand")  # linen: the twin with linen's start map; NNX rows: NNX's
            out.append(row(f"static MLP step, JAX jit (D={r['embedding_dim']}, E={r['num_embeddings']})",
                           labels.get(name, name), BASELINE_LABELS.get(baseline, baseline), data["ratio"],
                           data["per_round_ratios"], med[name], med[baseline], 1.05, "<=", memory.get(name),
                           memory.get(baseline), "XLA"))  # fmt: skip
    return out


def torch_dynamic_rows(results: List[Dict]) -> List[Dict]:
    out = []
    for r in results:
        med, memory = r["median_ms_per_step"], r.get("peak_step_bytes", {})
        workload = f"dynamic per-sample {r['workload']} step, torch, batch {r['batch']}"
        hand = "hand-written batched (baddbmm" + (" / grouped conv)" if "Conv" in r.get("model", "") else ")")
        out.append(row(workload, "hypernn", hand, r["ratio_vs_hand"],
                       r["per_round_ratio_vs_hand"], med["hypernn"], med["hand"], 1.2, "<=", memory.get("hypernn"),
                       memory.get("hand"), "prof"))  # fmt: skip
        out[-1]["key"] = f"dynamic:{r['workload']}"
        out.append(row(workload, "hypernn", "Python loop over samples", r["speedup_vs"]["loop"],
                       r["per_round_speedup_vs"]["loop"], med["hypernn"], med["loop"], 10.0, ">=", memory.get("hypernn"),
                       memory.get("loop"), "prof", metric="speedup"))  # fmt: skip
    return out


def jax_dynamic_rows(results: List[Dict]) -> List[Dict]:
    """Rows of ``jax_dynamic_step.py`` (written by another engineer: read defensively)."""
    out = []
    labels = {"linen": "hypernn linen", "nnx": "hypernn NNX (pure)", "nnx_jit": "hypernn NNX (nnx.jit)",
              "linen_loop": "linen", "nnx_loop": "NNX"}  # fmt: skip
    for r in results:
        med = r["median_ms_per_step"]
        memory = {k: (v.get("total") if isinstance(v, dict) else v) for k, v in r.get("xla_memory_bytes", {}).items()}
        workload = f"dynamic per-sample {r['workload']} step, JAX jit, batch {r.get('batch', 256)}"
        conv = f" / {r['hand_conv']} conv" if r.get("hand_conv") else ""
        for name, ratio in r.get("ratio_vs_hand", {}).items():
            if name.startswith("hand") or name.endswith("_loop"):  # other baselines; the loops: speedup rows
                continue
            target = 1.2 if name in ("linen", "nnx") else None
            baseline = r.get("baselines", {}).get(name, "hand")  # linen: the twin with linen's start map; NNX rows: NNX's
            hand = f"hand-written batched (einsum{conv}) with {'NNX' if 'hyperfan' in baseline else 'linen'}'s start map"
            out.append(row(workload, labels.get(name, name), f"{hand}, jax.jit", ratio,
                           r.get("per_round_ratio_vs_hand", {}).get(name, ()), med.get(name), med.get(baseline), target,
                           "<=", memory.get(name), memory.get(baseline), "XLA"))  # fmt: skip
        for loop, speedup in r.get("speedup_vs_loop", {}).items():
            hyper = "linen" if loop.startswith("linen") else "nnx"
            out.append(row(workload, labels.get(hyper, hyper), f"Python loop over samples ({labels.get(loop, loop)})",
                           speedup, r.get("per_round_speedup_vs_loop", {}).get(loop, ()), med.get(hyper), med.get(loop),
                           10.0, ">=", memory.get(hyper), memory.get(loop), "XLA", metric="speedup"))  # fmt: skip
    return out


# ---------------------------------------------------------------- the workloads


class Workload:
    """A script run with ``--json``; ``adapt`` turns its results into rows."""

    def __init__(self, name: str, script: str, args: List[str], quick: List[str], adapt: Callable[[List[Dict]], List[Dict]],
                 python: Optional[str] = None, label: str = ""):  # fmt: skip
        self.name, self.script, self.args, self.quick, self.adapt = name, script, args, quick, adapt
        self.python, self.label = python or sys.executable, label or name


def workloads() -> List[Workload]:
    rss = ["--rss"]
    suite = [
        Workload("torch_mlp_step", "torch_mlp_step.py",
                 ["--embedding-dim", "32", "64", "--num-embeddings", "64", "512", "--rounds", "31", *rss],
                 ["--embedding-dim", "32", "--num-embeddings", "64", "--rounds", "5", "--steps", "5", "--warmup", "3", *rss],
                 torch_mlp_rows),
        Workload("torch_compiled_step", "torch_compiled_step.py", ["--rounds", "21", *rss],
                 ["--rounds", "3", "--steps", "5", "--warmup", "3"], from_script_rows),
        Workload("jax_mlp_step", "jax_mlp_step.py", ["--rounds", "21", "--steps", "30"],
                 ["--rounds", "5", "--steps", "5", "--warmup", "3"], jax_mlp_rows),
        Workload("torch_small_tensors", "torch_small_tensors.py", ["--rounds", "31", *rss],
                 ["--rounds", "5", "--steps", "5", "--warmup", "3", *rss], from_script_rows),
        Workload("jax_small_tensors", "jax_small_tensors.py", ["--rounds", "21"],
                 ["--rounds", "3", "--steps", "10", "--warmup", "3"], from_script_rows),
        Workload("torch_dynamic_step", "torch_dynamic_step.py", ["--rounds", "15"],
                 ["--rounds", "3", "--steps", "3", "--warmup", "2", "--loop-samples", "64"], torch_dynamic_rows),
        Workload("jax_dynamic_step", "jax_dynamic_step.py", [],
                 ["--rounds", "3", "--loop-samples", "64"], jax_dynamic_rows),
        Workload("torch_transformer_step", "torch_transformer_step.py", ["--rounds", "25", *rss],
                 ["--rounds", "5", "--steps", "5", "--warmup", "3", *rss], from_script_rows),
        Workload("torch_eval_reuse", "torch_eval_reuse.py", ["--rounds", "25", *rss],
                 ["--rounds", "5", "--steps", "10", "--warmup", "3", *rss], from_script_rows),
    ]
    for peer in peer_setup.PEERS:
        suite.append(Workload(f"peer:{peer}", "peer_step.py", ["--peer", peer, "--rounds", "15", *rss],
                              ["--peer", peer, "--rounds", "3", "--steps", "5", "--warmup", "2"], from_script_rows,
                              python=str(peer_setup.python(peer)), label=peer))  # fmt: skip
    return suite


def run(workload: Workload, quick: bool, folder: Path) -> Dict[str, Any]:
    """Run one script; ``{"rows", "seconds", "cpu_seconds"}`` or ``{"error"}`` / ``{"na"}``."""
    if workload.name.startswith("peer:"):
        state = peer_setup.status(workload.label)
        if not state.get("ok"):
            return {"na": state.get("reason", "not installed")}
    if not (HERE / workload.script).exists():
        return {"na": f"benchmarks/{workload.script} is not there"}
    out = folder / f"{workload.name.replace(':', '_')}.json"
    command = [workload.python, str(HERE / workload.script), *(workload.quick if quick else workload.args), "--json", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if workload.name.startswith("peer:"):
        env.pop("PYTHONPATH", None)  # nothing may put this repository's hypernn in front of the peer's
    print(f"\n=== {workload.name}: {' '.join(command[1:])}", flush=True)
    start, before = time.perf_counter(), os.times()
    try:
        done = subprocess.run(command, env=env, cwd=str(REPO), timeout=TIMEOUT_S, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TIMEOUT_S} s"}
    after = os.times()
    seconds, cpu = time.perf_counter() - start, (after.children_user + after.children_system
                                                 - before.children_user - before.children_system)  # fmt: skip
    print(done.stdout[-6000:], end="", flush=True)
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()
        print(done.stderr[-3000:], file=sys.stderr)
        return {"error": f"exit {done.returncode}: {tail[-1][:300] if tail else 'no output'}", "seconds": seconds}
    data = json.loads(out.read_text())
    try:
        rows = workload.adapt(data["results"])
    except (KeyError, TypeError, ValueError) as err:
        return {"error": f"could not read its JSON: {type(err).__name__}: {err}", "seconds": seconds, "raw": data}
    return {"rows": rows, "meta": data.get("meta", {}), "seconds": seconds, "cpu_seconds": cpu, "raw": data}


# ---------------------------------------------------------------- peers against hypernn


def judge_peers(rows: List[Dict]) -> None:
    """A peer's row is MET when hypernn's ratio on the same workload is lower than the peer's."""
    ours = {}
    for r in rows:
        key = r.get("key") or ""
        if key == "static:32:64":
            ours["static"] = r
        elif key == "dynamic:mlp":
            ours["per_sample"] = r
        elif r["implementation"] == "hypernn" and r["baseline"].startswith("functional twin") and "48-layer" in r["workload"]:
            ours["deep_forward" if "forward" in r["workload"] else "deep_step"] = r
    for r in rows:
        if r.get("na") or not r["implementation"].startswith(("hyper-nn", "hyperlight")):
            continue
        mine = ours.get(r.get("key"))
        if mine is None or mine["ratio"] is None:
            r["notes"] = "hypernn's row for this workload is missing"
            continue
        r["target"], r["kind"], r["met"] = mine["ratio"], ">", mine["ratio"] < r["ratio"]
        r["notes"] = (f"hypernn {mine['ratio']:.2f}x on the same workload ({mine['workload']}, vs {mine['baseline']})"
                      + (f"; {r['notes']}" if r["notes"] else ""))  # fmt: skip


# ---------------------------------------------------------------- the table and the report


def _mib(value: Any) -> str:
    return f"{value / 2**20:.1f}" if isinstance(value, (int, float)) else "n/a"


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def cells(r: Dict) -> List[str]:
    """The row's table cells."""
    if r.get("na"):
        return [r["workload"], r["implementation"], r["baseline"] or "", "n/a", "", "", "", "", "", "", r["na"]]
    if r["metric"] == "speedup":
        ratio = f"{r['ratio']:.1f}x faster"
        target = f">= {r['target']:.0f}x faster"
        spread = f"{r['range'][0]:.1f}-{r['range'][1]:.1f}" if r["range"] else ""
    else:
        ratio = f"{r['ratio']:.3f}x"
        spread = f"{r['range'][0]:.2f}-{r['range'][1]:.2f}" if r["range"] else ""
        if r["target"] is None:
            target = ""
        elif r["kind"] == ">":
            target = f"> hypernn {r['target']:.2f}x"
        else:
            target = f"{r['kind']} {r['target']:.2f}x"
    verdict = "" if r["met"] is None else ("MET" if r["met"] else "MISSED")
    overhead = (f"{r['ms'] - r['baseline_ms']:+.3f}" if isinstance(r["ms"], (int, float))
                and isinstance(r["baseline_ms"], (int, float)) else "")  # fmt: skip
    memory = f"{_mib(r['memory'])} / {_mib(r['baseline_memory'])} ({r['method']})" if r["method"] else ""
    return [r["workload"], r["implementation"], r["baseline"], ratio, spread, target, verdict,
            f"{_ms(r['ms'])} / {_ms(r['baseline_ms'])}", overhead, memory, r["notes"]]  # fmt: skip


HEADER = ["workload", "implementation", "baseline", "ratio", "range", "target", "verdict", "ms/step (impl / base)",
          "overhead ms", "peak MiB (impl / base)", "notes"]  # fmt: skip


def text_table(rows: List[Dict]) -> str:
    """The table for a terminal: fixed-width columns, long notes on the next line."""
    table = [cells(r) for r in rows]
    shown = HEADER[:-1]
    widths = [max(len(str(c)) for c in col) for col in zip(shown, *[t[:-1] for t in table])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(shown, widths)), "  ".join("-" * w for w in widths)]
    for t in table:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(t[:-1], widths)).rstrip())
        if t[-1]:
            lines.append(" " * 4 + f"note: {t[-1]}")
    return "\n".join(lines)


def markdown_table(rows: List[Dict]) -> str:
    def escape(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(escape(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        out["hypernn"] = commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["hypernn"] = "unknown (not a git checkout)"
    for peer in peer_setup.PEERS:
        state = peer_setup.status(peer)
        out[peer] = state["requirement"].split("==")[-1] if state.get("ok") else "not installed"
    return out


def machine() -> Dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in load] if load else None}  # fmt: skip


def report(rows: List[Dict], runs: Dict[str, Dict], info: Dict[str, Any], quick: bool) -> str:
    """``RESULTS.md``."""
    v = info["versions"]
    failures = {name: r["error"] for name, r in runs.items() if "error" in r}
    skipped = {name: r["na"] for name, r in runs.items() if "na" in r}
    verdicts = [r["met"] for r in rows if r["met"] is not None]
    lines = [
        "# Benchmark results",
        "",
        f"`make bench` (`python benchmarks/run_all.py{' --quick' if quick else ''}`), {info['date']}.",
        "",
        f"- machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, {info['machine']['platform']}; "
        f"load average {info['machine']['load_average']} at the start, {info['load_after']} at the end"
        + (" (busy: other processes shared the cores; CPU time keeps the ratios fair, but noisier)"
           if (info["machine"]["load_average"] or [0])[0] > (info["machine"]["cores"] or 1) else ""),
        f"- versions: python {v['python']}, torch {v['torch']}, jax {v['jax']} (jaxlib {v['jaxlib']}), flax {v['flax']}, "
        f"optax {v['optax']}, numpy {v['numpy']}; hypernn {v['hypernn']}; peers: hyper-nn {v['hyper-nn']}, "
        f"hyperlight {v['hyperlight']}",
        "- settings: one thread (`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`, XLA single-threaded), process CPU "
        "time; ratio = median of per-round ratios (implementation / baseline, interleaved round by round in one "
        "process run; 'range' is the spread of the per-round ratios); speedup rows: baseline / implementation",
        f"- targets (issue 7): {sum(verdicts)} of {len(verdicts)} MET",
        f"- wall time {info['seconds']:.0f} s (CPU time of the workload processes {info['cpu_seconds']:.0f} s)",
        "",
        markdown_table(rows),
        "",
        "Memory (`peak MiB`), by method:",
        "",
    ]
    lines += [f"- `{key}`: {text}" for key, text in MEMORY.items()]
    if failures or skipped:
        lines += ["", "Workloads that did not run:", ""]
        lines += [f"- {name}: failed: {error}" for name, error in failures.items()]
        lines += [f"- {name}: n/a: {reason}" for name, reason in skipped.items()]
    lines += ["", "Time per workload (wall s / CPU s of its processes): " + ", ".join(
        f"{name} {r.get('seconds', 0):.0f} / {r.get('cpu_seconds', 0):.0f}" for name, r in runs.items()) + "."]
    lines += ["", "Each workload's script documents its models, baselines and checks (`benchmarks/*.py`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark; print one table; write benchmarks/RESULTS.md.")
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run, rough numbers")
    names = [w.name for w in workloads()]
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"run these only ({', '.join(names)}; 'peers' for both peers)")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"), help="the report (default: benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    chosen = workloads()
    if args.only:
        wanted = set(args.only) | ({f"peer:{p}" for p in peer_setup.PEERS} if "peers" in args.only else set())
        unknown = wanted - set(names) - {"peers"}
        if unknown:
            parser.error(f"unknown workloads {sorted(unknown)}; choose from {names} or 'peers'")
        chosen = [w for w in chosen if w.name in wanted]

    info: Dict[str, Any] = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                            "machine": machine(), "versions": versions()}  # fmt: skip
    start = time.perf_counter()
    runs: Dict[str, Dict] = {}
    rows: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="hypernn-bench-") as folder:
        for workload in chosen:
            result = runs[workload.name] = run(workload, args.quick, Path(folder))
            if "rows" in result:
                rows += result["rows"]
            else:
                reason = result.get("error") or result.get("na")
                print(f"=== {workload.name}: {'failed' if 'error' in result else 'n/a'}: {reason}", flush=True)
                if workload.name.startswith("peer:"):
                    rows.append(row(f"all {workload.label} workloads", workload.label, "", None,
                                    na=reason if "na" in result else f"failed: {reason}"))  # fmt: skip
    judge_peers(rows)
    info["seconds"] = time.perf_counter() - start
    info["cpu_seconds"] = sum(r.get("cpu_seconds", 0.0) for r in runs.values())
    info["load_after"] = machine()["load_average"]

    print("\n" + text_table(rows))
    for key, text in MEMORY.items():
        print(f"  memory {key}: {text}")
    Path(args.output).write_text(report(rows, runs, info, args.quick))
    raw = Path(args.output).with_suffix(".json")
    raw.write_text(json.dumps({"info": info, "rows": rows, "runs": runs}, indent=1, default=str))
    print(f"\nwrote {args.output} and {raw}")
    failed = [name for name, r in runs.items() if "error" in r]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The documentation site builds with ``mkdocs build --strict`` (a warning fails it), offline.

CI runs only ``make test``, so the build lives here: the site must build, every page must
be in the navigation, no page may load anything from another host (fonts, scripts,
images), the API reference must document the public API, and the layout picture must be
what ``docs/scripts/draw_layouts.py`` draws from today's layout planner.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
INSTALL = "pip install -c requirements-dev.txt -e '.[docs]' (`make test` installs it)"

#: objects the API reference must document (their anchors on the built pages)
PUBLIC_API = (
    "hypernn.hypernetize", "hypernn.select", "hypernn.Hypernetize", "hypernn.mlp_generator",
    "hypernn.options.HypernetizeOptions", "hypernn.selection.select", "hypernn.layout.plan_layout",
    "hypernn.layout.Layout", "hypernn.conditioning.film", "hypernn.conditioning.concat",
    "hypernn.conditioning.recurrent", "hypernn.errors.HypernnError", "hypernn.errors.SelectionError",
    "hypernn.errors.CheckpointMismatchError",
    "hypernn.transform.torch.HypernetizedModule", "hypernn.transform.torch.DynamicHypernetizedModule",
    "hypernn.transform.linen.HypernetizedLinen", "hypernn.transform.linen.DynamicHypernetizedLinen",
    "hypernn.transform.nnx.HypernetizedNNX", "hypernn.transform.nnx.DynamicHypernetizedNNX",
    "hypernn.transform.jaxsharding.hypernetwork_partition_specs",
    "hypernn.transform.jaxcheckpoint.restore_variables",
)  # fmt: skip
#: elements that make the browser fetch something (links to other sites are fine)
FETCHING = re.compile(r"<(?:script|img|iframe|source|link)\b[^>]*?\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"")


def test_docs_tools_are_installed():
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        assert importlib.util.find_spec(module) is not None, f"{module} is missing: {INSTALL}"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return site, done.stderr


def test_every_page_is_built_and_in_the_nav(build):
    site, log = build
    assert "not included in the \"nav\" configuration" not in log, log
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).with_suffix("")
        built = site / "index.html" if relative == pathlib.Path("index") else site / relative / "index.html"
        assert built.is_file(), f"{page} was not built to {built}"


def test_pages_fetch_nothing_from_other_hosts(build):
    site, _ = build
    fetched = {str(page.relative_to(site)): FETCHING.findall(page.read_text()) for page in site.rglob("*.html")}
    assert not {page: urls for page, urls in fetched.items() if urls}
    assert "fonts.googleapis" not in "".join(page.read_text() for page in site.rglob("*.html"))


def test_api_reference_documents_the_public_api(build):
    site, _ = build
    anchors = set()
    for page in (site / "api").rglob("index.html"):
        text = page.read_text()
        assert 'class="doc doc-object' in text, f"{page} documents nothing"
        anchors |= set(re.findall(r'id="(hypernn[\w.]*)"', text))
    assert not [name for name in PUBLIC_API if name not in anchors], sorted(anchors)


def test_layout_picture_is_what_the_planner_draws():
    spec = importlib.util.spec_from_file_location("draw_layouts", DOCS / "scripts" / "draw_layouts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "images" / "layouts.svg").read_text() == module.draw(), "run: python docs/scripts/draw_layouts.py"

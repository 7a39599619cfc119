"""The course contract: every chapter in the registry is held to docs/AUTHORING.md.

Walks :data:`gpulab.course.registry.CHAPTERS`. For every chapter: numbers and slugs are
unique and consistent. For chapters that exist (ready, or with a lecture on disk): their
lecture, solution, exercise and benchmark script exist, the notebooks carry no outputs,
the exercise is what ``gpulab exercises`` would write, the tests folder exists, and the
lecture names each paper by title and arXiv id. For ready chapters: the graded checks
module imports and the results file holds the schema of the benchmark harness
(``gpulab.benchmark``). For every
family with a torch and a numba twin: the functions both offer have the same parameters.
And README.md's chapter table is the one the registry renders.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
from pathlib import Path

import nbformat
import pytest

from gpulab.course import registry
from gpulab.course.exercises import stale_exercises
from gpulab.course.registry import CHAPTERS, README_BEGIN, README_END, readme_table

ROOT = Path(__file__).resolve().parents[2]
HEADLINE_KEYS = {"metric", "ours", "peer", "peer_value", "ratio", "goal", "lower_is_better"}


def _exists(ch) -> bool:
    return ch.built or (ROOT / ch.lecture).exists()


EXISTING = [ch for ch in CHAPTERS if _exists(ch)]
BUILT = [ch for ch in CHAPTERS if ch.built]     # ready ones and those awaiting their GPU run
READY = [ch for ch in CHAPTERS if ch.ready]


def _ids(chapters):
    return [ch.stem for ch in chapters]


# ------------------------------------------------------------------ the registry itself

def test_registry_lists_nineteen_chapters_numbered_in_order():
    assert [ch.number for ch in CHAPTERS] == [f"{n:02d}" for n in range(19)]
    assert len({ch.slug for ch in CHAPTERS}) == len(CHAPTERS), "two chapters share a slug"
    for ch in CHAPTERS:
        assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", ch.slug), f"{ch.number}: slug {ch.slug!r}"
        assert registry.chapter(ch.number) is ch and registry.chapter(ch.slug) is ch
        assert ch.lecture.name == ch.solution.name == ch.exercise.name == f"{ch.stem}.ipynb"
        assert ch.tests.name == f"ch{ch.stem}"
        assert ch.title and ch.title == ch.title.strip()


def test_every_paper_has_an_arxiv_id_or_a_venue():
    for ch in CHAPTERS:
        for paper in ch.papers:
            if paper.arxiv is None:
                assert paper.venue, f"{ch.number}: {paper.title!r} has neither an arXiv id nor a venue"
            else:
                assert re.fullmatch(r"\d{4}\.\d{4,5}", paper.arxiv), f"{ch.number}: bad id {paper.arxiv!r}"


def test_every_chapter_but_the_first_cites_papers():
    assert not CHAPTERS[0].papers   # chapter 00 teaches the tools
    assert all(ch.papers for ch in CHAPTERS[1:]), [ch.number for ch in CHAPTERS[1:] if not ch.papers]


def test_families_named_by_the_registry_exist_for_built_chapters():
    for ch in BUILT:
        for family in (ch.family, *ch.extra_families):
            if family is not None:
                assert (ROOT / "gpulab" / family / "__init__.py").exists(), f"{ch.number}: no gpulab/{family}/"


# ------------------------------------------------------------------ chapters that exist

@pytest.mark.parametrize("ch", EXISTING, ids=_ids(EXISTING))
def test_chapter_files_exist(ch):
    missing = [str(p) for p in (ch.lecture, ch.solution, ch.exercise, ch.benchmark, ch.tests)
               if not (ROOT / p).exists()]
    assert not missing, f"chapter {ch.number} lacks {', '.join(missing)}"


@pytest.mark.parametrize("ch", EXISTING, ids=_ids(EXISTING))
def test_chapter_notebooks_are_stored_without_outputs(ch):
    for path in (ch.lecture, ch.solution, ch.exercise):
        nb = nbformat.read(ROOT / path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
        assert not dirty, f"{path}: cells {dirty} have outputs (clear them before committing)"


@pytest.mark.parametrize("ch", EXISTING, ids=_ids(EXISTING))
def test_chapter_exercise_is_fresh(ch):
    stale = [name for name in stale_exercises(ROOT, committed=True) if name.split(" ")[0] == ch.exercise.name]
    assert not stale, f"{ch.exercise} is stale: run `gpulab exercises` and commit it"


def _lecture_text(path: Path) -> str:
    """The lecture's markdown, flattened: lower case, emphasis and line breaks removed."""
    nb = nbformat.read(path, as_version=4)
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    text = re.sub(r"[*`]", "", text)
    return re.sub(r"\s+", " ", text).lower()


def _flat(title: str) -> str:
    return re.sub(r"\s+", " ", title).lower()


@pytest.mark.parametrize("ch", EXISTING, ids=_ids(EXISTING))
def test_lecture_names_each_paper_by_title_and_arxiv_id(ch):
    text = _lecture_text(ROOT / ch.lecture)
    missing = []
    for paper in ch.papers:
        if _flat(paper.title) not in text:
            missing.append(f"the title {paper.title!r}")
        if paper.arxiv and paper.arxiv not in text:
            missing.append(f"the arXiv id {paper.arxiv} ({paper.short_name})")
    assert not missing, f"{ch.lecture} does not name " + "; ".join(missing)


# ------------------------------------------------------------------ ready chapters

def _old_assignment(ch) -> Path:
    return ROOT / "gpulab" / (ch.family or "") / "assignment.py"


@pytest.mark.parametrize("ch", BUILT, ids=lambda ch: ch.stem)
def test_built_chapter_checks_live_with_the_course(ch):
    # the graded checks live in gpulab/course/checks/, never in the family
    assert importlib.util.find_spec(ch.checks_module) is not None, f"no module {ch.checks_module}"
    assert not _old_assignment(ch).exists(), f"{_old_assignment(ch).relative_to(ROOT)} stays next to its move"


@pytest.mark.parametrize("ch", READY, ids=lambda ch: ch.stem)
def test_ready_chapter_results_hold_gpu_date_and_headline(ch):
    script = ROOT / ch.benchmark
    assert "gpulab.benchmark" in script.read_text(), f"{ch.benchmark} does not use the harness gpulab.benchmark"
    path = ROOT / ch.results
    assert path.exists(), f"chapter {ch.number} is ready but has no {ch.results}"
    data = json.loads(path.read_text())
    assert isinstance(data.get("gpu"), str) and data["gpu"].strip(), f"{ch.results}: no 'gpu'"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", str(data.get("date", ""))), f"{ch.results}: 'date' is not YYYY-MM-DD"
    rows = data.get("headline")
    assert isinstance(rows, list) and rows, f"{ch.results}: 'headline' must be a non-empty list"
    for i, row in enumerate(rows):
        missing = HEADLINE_KEYS - set(row)
        assert not missing, f"{ch.results}: headline row {i} lacks {sorted(missing)}"
        assert isinstance(row["metric"], str) and row["metric"], f"{ch.results}: row {i} has no metric"
        assert isinstance(row["lower_is_better"], bool), f"{ch.results}: row {i}: lower_is_better is not a bool"
        ours, peer_value, ratio = row["ours"], row["peer_value"], row["ratio"]
        if all(isinstance(v, (int, float)) for v in (ours, peer_value, ratio)) and peer_value:
            # ratio = ours / peer, whichever way is better
            assert ratio == pytest.approx(ours / peer_value, rel=1e-3), \
                f"{ch.results}: row {i} ({row['metric']}): ratio {ratio} != ours / peer_value"


# ------------------------------------------------------------------ torch and numba twins

# family -> (torch twin, numba twin). Every family with both files must be listed here.
TWINS = {
    "splat": ("gpulab.splat.torch_impl", "gpulab.splat.kernels"),
    "moe": ("gpulab.moe.torch_impl", "gpulab.moe.kernels"),
    "gemm": ("gpulab.gemm.torch_impl", "gpulab.gemm.kernels"),
    "nerf": ("gpulab.nerf.torch_impl", "gpulab.nerf.kernels"),
    "attention": ("gpulab.attention.torch_impl", "gpulab.attention.kernels"),
}
# parameters one twin adds after the shared ones: knobs of that implementation (output
# buffers, tiling, validation switches), keyword-only in spirit, each with a default
TWIN_EXTRAS = {
    ("gpulab.splat.torch_impl", "rasterize_tiles"): {"max_elements"},
    ("gpulab.moe.kernels", "grouped_gemm"): {"out", "tiles"},
    ("gpulab.moe.kernels", "moe_ffn"): {"validate", "gemm"},
    ("gpulab.moe.kernels", "permute"): {"validate"},
    ("gpulab.gemm.kernels", "gemm"): {"kernel", "tile", "out"},
    ("gpulab.attention.kernels", "attention"): {"tile_q", "tile_k"},
}


# public functions only one twin offers, and why: the rest must exist on both sides
TWIN_ONLY = {
    "gpulab.splat.torch_impl": {
        "quat_to_rotmat": "a step of projection the numba kernel does inline",
        "covariance_3d": "a step of projection the numba kernel does inline",
        "project_covariance": "a step of projection the numba kernel does inline",
        "conic_and_radius": "a step of projection the numba kernel does inline",
        "tile_rects": "a step of binning the numba kernel does inline",
        "tile_grid": "the tile count; kernels imports this one",
        "sort_keys": "the sort both paths run (torch.sort); kernels re-exports this one",
        "trace_pixel": "a per-pixel explanation for the lecture, not a pipeline stage",
    },
    "gpulab.splat.kernels": {
        "raster_kernel_for": "picks the compiled raster kernel for a feature count",
    },
    "gpulab.moe.torch_impl": {
        "expert_ffn": "one expert's MLP, the step of the torch loop over experts (the baseline)",
        "load_balancing_loss": "training only (differentiable), on the torch path",
        "validate_experts": "input checks both paths call",
        "validate_routing_inputs": "input checks both paths call",
        "validate_topk": "input checks both paths call",
    },
    "gpulab.moe.kernels": {
        "gemm_tiles": "the register-tiled GEMM's launch geometry",
        "grouped_gemm_naive": "the simple kernel kept for comparison",
        "moe_ffn_fused": "the persistent fused kernel, a numba-only variant of moe_ffn",
        "persistent_blocks": "the fused kernel's launch geometry",
    },
    "gpulab.gemm.kernels": {
        "launch_config": "a ladder kernel's launch geometry (grid, block)",
    },
    "gpulab.attention.torch_impl": {
        "sla_block_map": "the pooled block scores and labels both SLA paths are given (a few small matmuls)",
        "visible_mask": "the causal mask drawn as a matrix; the kernels compute it from indices",
    },
    "gpulab.attention.kernels": {
        "tiles_for": "the shared-memory sub-tile for a head size",
    },
}


# families without a numba twin on purpose, and why (the twins' contract does not apply to them)
ONE_SIDED_FAMILIES = {
    "dist": "distributed training is collectives between processes and torch modules: no kernel of its own "
            "to twin (chapter 14)",
}


def test_one_sided_families_say_why_and_stay_one_sided():
    for family, why in ONE_SIDED_FAMILIES.items():
        assert why.strip(), f"say why {family} has no numba twin"
        assert (ROOT / "gpulab" / family / "__init__.py").exists(), f"no gpulab/{family}/"
        assert family not in TWINS and not (ROOT / "gpulab" / family / "kernels.py").exists(), \
            f"gpulab/{family} has a numba twin now: move it from ONE_SIDED_FAMILIES to TWINS"


def test_every_family_with_two_twins_is_declared():
    families = {p.parent.name for p in (ROOT / "gpulab").glob("*/torch_impl.py")
                if (p.parent / "kernels.py").exists()}
    assert families == set(TWINS), f"declare the twins of {sorted(families - set(TWINS))} in TWINS"


def _public_functions(module) -> dict:
    return {name: obj for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module.__name__}


def _shape(module_name: str, name: str, fn) -> list[tuple]:
    """Names, kinds and defaults of the parameters (annotations aside), extras dropped."""
    extras = TWIN_EXTRAS.get((module_name, name), set())
    params = list(inspect.signature(fn).parameters.values())
    for p in params:
        if p.name in extras:
            assert p.default is not inspect.Parameter.empty, f"{module_name}.{name}: extra {p.name!r} needs a default"
    kept = [p for p in params if p.name not in extras]
    assert [p.name for p in params[:len(kept)]] == [p.name for p in kept], \
        f"{module_name}.{name}: the extras {sorted(extras)} must come after the shared parameters"
    return [(p.name, p.kind, p.default) for p in kept]


@pytest.mark.parametrize("family", sorted(TWINS))
def test_twins_offer_the_same_signatures(family):
    torch_name, numba_name = TWINS[family]
    torch_mod, numba_mod = importlib.import_module(torch_name), importlib.import_module(numba_name)
    torch_fns, numba_fns = _public_functions(torch_mod), _public_functions(numba_mod)
    shared = sorted(set(torch_fns) & set(numba_fns))
    assert shared, f"{family}: its twins share no public function"
    for mine, other, name in ((torch_fns, numba_fns, torch_name), (numba_fns, torch_fns, numba_name)):
        one_sided = set(mine) - set(other)
        undeclared = sorted(one_sided - set(TWIN_ONLY.get(name, {})))
        assert not undeclared, (f"{name} offers {undeclared}, which its twin lacks: add them to the twin, "
                                "or to TWIN_ONLY with the reason")
        stale = sorted(set(TWIN_ONLY.get(name, {})) - one_sided)
        assert not stale, f"TWIN_ONLY[{name!r}] lists {stale}, which are not one-sided any more"
    mismatched = []
    for name in shared:
        a = _shape(torch_name, name, torch_fns[name])
        b = _shape(numba_name, name, numba_fns[name])
        if a != b:
            mismatched.append(f"{name}: {a} != {b}")
    assert not mismatched, f"{family}: " + "\n".join(mismatched)


def test_twin_extras_are_real_parameters():
    # a stale entry would silently widen what the signature test accepts
    for (module_name, name), extras in TWIN_EXTRAS.items():
        fn = getattr(importlib.import_module(module_name), name)
        assert extras <= set(inspect.signature(fn).parameters), f"{module_name}.{name}: {extras}"


def test_moe_route_twins_agree_on_awkward_sizes():
    import torch
    from helpers import assert_twins_equal, awkward_sizes
    from gpulab.moe import kernels, torch_impl

    def make_inputs(tokens, generator):
        return torch.randn(tokens, 6, generator=generator), 2

    def decisions(route):   # the routing decisions, without the differentiable extras
        def run(logits, k):
            r = route(logits, k)
            return r.topk_idx, r.topk_weight
        run.__name__ = route.__module__ + ".route"
        return run

    compared = assert_twins_equal(decisions(torch_impl.route), decisions(kernels.route), make_inputs,
                                  sizes=awkward_sizes(block=8, primes=(5,)))
    assert compared == 4


# ------------------------------------------------------------------ the README

def test_readme_chapter_table_is_the_registrys():
    text = (ROOT / "README.md").read_text()
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1, \
        f"README.md needs one {README_BEGIN} ... {README_END} block"
    table = text.split(README_BEGIN)[1].split(README_END)[0].strip()
    assert table == readme_table(), ("README.md's chapter table differs from the registry; paste "
                                     "gpulab.course.registry.readme_table() between the markers")


def test_readme_table_rows_follow_the_registry():
    rows = readme_table().splitlines()[2:]
    assert len(rows) == len(CHAPTERS)
    for ch, row in zip(CHAPTERS, rows):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[0] == ch.number and cells[-1].split()[0] == ch.status
        assert (f"]({ch.lecture.as_posix()})" in cells[1]) == ch.built
        for paper in ch.papers:
            assert paper.arxiv is None or f"arxiv.org/abs/{paper.arxiv}" in row


def test_twin_helper_catches_a_twin_that_differs_past_a_block():
    import torch
    from helpers import assert_rejected, assert_twins_equal, awkward_sizes

    def spec(x):
        return x * 2

    def off_by_one(x):            # forgets the last element once the size passes a block
        y = x * 2
        if x.numel() > 32:
            y[-1] = 0
        return y

    def make_inputs(n, generator):
        return (torch.rand(n, generator=generator) + 1,)

    assert awkward_sizes(32) == [1, 7, 13, 31, 33]
    assert assert_twins_equal(spec, spec, make_inputs) == 5
    assert_rejected(lambda twin: assert_twins_equal(spec, twin, make_inputs), off_by_one, "size=33")


def test_gpulab_chapters_lists_the_registry_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys, gpulab_cli\n"
            "status = gpulab_cli.main(['chapters'])\n"
            "assert 'torch' not in sys.modules and 'numba' not in sys.modules, 'imported torch or numba'\n"
            "sys.exit(status)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [ch.number for ch in CHAPTERS] and len(lines) == 19
    assert all(line.split()[2] == ch.status for line, ch in zip(lines, CHAPTERS))


def test_gpulab_chapters_filters_ready_and_built(capsys):
    import gpulab_cli

    for flag, status in (("--ready", "ready"), ("--built", "built")):
        assert gpulab_cli.main(["chapters", flag]) == 0
        numbers = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
        assert numbers == [ch.number for ch in CHAPTERS if ch.status == status], flag

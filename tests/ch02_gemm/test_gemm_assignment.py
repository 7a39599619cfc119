"""The checks' inputs probe what the planted answers get wrong: both beta == 0 (with a NaN
c) and beta != 0, two T's, ragged sizes, K = 1 and K over several steps."""
import torch

from gpulab.course.checks import ch02_gemm as checks


def test_task1_sizes_probe_t_beta_and_edges():
    sizes = checks.TILED.sizes.sim
    assert len({t for *_, t in sizes}) >= 2, "two T's: a hard-coded T fails one"
    assert any(k == 1 for _, _, k, _ in sizes) and any(k > t for _, _, k, t in sizes)
    assert any(m % t or n % t for m, n, _, t in sizes), "a ragged edge: unguarded loads show"
    betas = set()
    for size in sizes:
        a, b, c, alpha, beta = checks._gemm_inputs(size, torch.Generator().manual_seed(0))
        betas.add(beta == 0)
        if beta == 0:
            assert torch.isnan(c).all()
        assert alpha != 1.0
    assert betas == {True, False}


def test_task3_reference_holds_out_whole_shapes():
    table, fraction, seed = checks._split_inputs(20, torch.Generator().manual_seed(5))
    train, test = checks._split_shapes(table, fraction, seed)
    rows = [tuple(r) for r in table.tolist()]
    assert not {rows[i] for i in train.tolist()} & {rows[i] for i in test.tolist()}
    assert len(table) > 20, "shapes repeat over several kernels' rows: a row split leaks them"

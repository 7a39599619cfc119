"""Chapter 11 kernels against the torch specification: routing, permutation, grouped GEMM,
combine, the multi-kernel layer and the fused persistent kernel (sizes not multiples of
the tile, experts with no tokens, capacity drops)."""
import pytest
import torch

import gpulab
from gpulab.moe import kernels as K
from gpulab.moe import torch_impl as R

DEV = gpulab.device


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _topk(T, E, k, g, skip_last=True):
    s = torch.rand(T, E, generator=g)
    if skip_last:
        s[:, -1] -= 2.0                      # the last expert gets no tokens
    return torch.topk(s, k, 1).indices.to(torch.int32)


def _weights(T, k, g):
    w = torch.rand(T, k, generator=g) + 0.1
    return w / w.sum(1, keepdim=True)


# ------------------------------------------------------------------ known answers

def test_permute_known_answer():
    p = R.permute(torch.tensor([[1, 0], [1, 2]]), 3)
    assert p.counts.tolist() == [1, 2, 1]
    assert p.offsets.tolist() == [0, 1, 3, 4]
    assert p.sorted_assignment.tolist() == [1, 0, 2, 3]
    assert p.slot_of.tolist() == [[1, 0], [2, 3]]
    q = K.permute(torch.tensor([[1, 0], [1, 2]], dtype=torch.int32, device=DEV), 3)
    assert q.sorted_assignment.tolist() == [1, 0, 2, 3] and q.slot_of.tolist() == [[1, 0], [2, 3]]


def test_capacity_known_answer():
    # expert 0 gets tokens 0, 1, 2 (choice 0); capacity 2 drops token 2's first choice
    idx = torch.tensor([[0, 1], [0, 2], [0, 1]])
    p = R.permute(idx, 3, capacity=2)
    assert p.dropped == 1 and p.slot_of[2, 0] == -1
    assert p.offsets.tolist() == [0, 2, 4, 5]
    q = K.permute(idx.to(torch.int32).to(DEV), 3, capacity=2)
    assert q.dropped == 1 and q.slot_of.tolist() == p.slot_of.tolist()


def test_aux_loss_known_answers():
    # balanced: k; every token on the same experts, probability 1 on one of them: E
    probs = torch.full((4, 4), 0.25)
    assert float(R.load_balancing_loss(probs, torch.tensor([2, 2, 2, 2]))) == pytest.approx(2.0)
    onehot = torch.zeros(4, 4)
    onehot[:, 0] = 1.0
    assert float(R.load_balancing_loss(onehot, torch.tensor([4, 0, 0, 0]))) == pytest.approx(4.0)
    # top-2, every token on experts 0 and 1: still E, not E * k
    assert float(R.load_balancing_loss(onehot, torch.tensor([4, 4, 0, 0]))) == pytest.approx(4.0)


def test_route_weights_renormalised_and_differentiable():
    logits = torch.randn(6, 5, generator=_gen(0), requires_grad=True)
    r = R.route(logits, 2)
    assert torch.allclose(r.topk_weight.sum(1), torch.ones(6))
    (r.topk_weight[:, 0].sum() + r.aux_loss).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# ------------------------------------------------------------- numba vs torch

@pytest.mark.parametrize("T,E,k", [(1, 3, 1), (11, 5, 2), (6, 8, 3)])
def test_route_matches_torch(T, E, k):
    logits = (3 * torch.randn(T, E, generator=_gen(T))).to(DEV)
    a, b = K.route(logits, k), R.route(logits, k)
    assert torch.equal(a.topk_idx, b.topk_idx)
    torch.testing.assert_close(a.probs, b.probs)
    torch.testing.assert_close(a.topk_weight, b.topk_weight)
    assert torch.equal(a.counts, b.counts)
    torch.testing.assert_close(a.aux_loss, b.aux_loss)


@pytest.mark.parametrize("T,E,k,cap", [(9, 4, 2, None), (13, 3, 2, 3), (5, 6, 1, 0)])
def test_permute_matches_torch(T, E, k, cap):
    idx = _topk(T, E, k, _gen(T + E)).to(DEV)
    a, b = K.permute(idx, E, cap), R.permute(idx, E, cap)
    for name in ("counts", "offsets", "sorted_assignment", "slot_of"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name
    assert a.dropped == b.dropped
    # round trip: every kept assignment's row points back at it
    kept = a.slot_of.flatten() >= 0
    back = a.sorted_assignment[a.slot_of.flatten()[kept].long()]
    assert torch.equal(back.cpu(), torch.nonzero(kept).flatten().to(torch.int32).cpu())


def _check_tiles_cover(p, tile_group, tile_row_start, rows, tile):
    covered = torch.zeros(rows, dtype=torch.int32)
    for g, start in zip(tile_group.tolist(), tile_row_start.tolist()):
        if g < 0:
            continue
        end = min(start + tile, int(p.offsets[g + 1]))
        assert int(p.offsets[g]) <= start < int(p.offsets[g + 1])
        covered[start:end] += 1
    assert torch.equal(covered, torch.ones(rows, dtype=torch.int32))


def test_tile_table_covers_every_row_once():
    T, E, k = 23, 5, 2
    p = K.permute(_topk(T, E, k, _gen(3)).to(DEV), E)
    _check_tiles_cover(p, p.tile_group, p.tile_row_start, T * k, K.TILE)
    # the register-tiled GEMM's own table of BM-row tiles, and one of 3-row tiles
    _check_tiles_cover(p, *K.gemm_tiles(p), T * k, K.BM)
    _check_tiles_cover(p, *K.gemm_tiles(p, 3), T * k, 3)


def _groups(sizes, g):
    """topk_idx (k = 1) giving expert e exactly sizes[e] rows, tokens shuffled."""
    idx = torch.cat([torch.full((n,), e, dtype=torch.int32) for e, n in enumerate(sizes)])
    return idx[torch.randperm(idx.numel(), generator=g)].view(-1, 1)


# awkward groups: empty ones (first, middle, last), one row, more than one BM row tile;
# K and N not multiples of BK and BN. Under the simulator BM = BN = 16, BK = 4 and a
# block is 16 threads; on a GPU the same test runs the 128 x 128 x 8 kernel.
@pytest.mark.parametrize("sizes,Kd,N,act", [
    ((0, K.BM + 1, 5, 0, 2 * K.BM + 1, 1), 2 * K.BK + 3, 2 * K.BN + 5, "silu"),
    ((3, 0, 0, K.BM - 1), K.BK - 1, K.BN + 1, "none"),
])
def test_register_tiled_grouped_gemm_matches_torch(sizes, Kd, N, act):
    g = _gen(sum(sizes) + Kd)
    E = len(sizes)
    p = K.permute(_groups(sizes, g).to(DEV), E)
    a = torch.randn(sum(sizes), Kd, generator=g).to(DEV)
    w = torch.randn(E, Kd, N, generator=g).to(DEV)
    want = R.grouped_gemm(a, w, p, act)
    torch.testing.assert_close(K.grouped_gemm(a, w, p, act), want, rtol=1e-5, atol=1e-5)
    # a tile table made once and reused gives the same result
    torch.testing.assert_close(K.grouped_gemm(a, w, p, act, tiles=K.gemm_tiles(p)), want, rtol=1e-5, atol=1e-5)


def test_gather_and_grouped_gemm_match_torch():
    T, E, k, H, F = 7, 4, 2, 6, 9               # not multiples of the tile
    g = _gen(7)
    idx = _topk(T, E, k, g).to(DEV)
    x = torch.randn(T, H, generator=g).to(DEV)
    w = torch.randn(E, H, F, generator=g).to(DEV)
    p = K.permute(idx, E)
    xs = K.gather_rows(x, p)
    assert torch.equal(xs.cpu(), R.gather_rows(x, R.permute(idx, E)).cpu())
    for act in ("none", "silu"):
        want = R.grouped_gemm(xs, w, p, act)
        torch.testing.assert_close(K.grouped_gemm(xs, w, p, act), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(K.grouped_gemm_naive(xs, w, p, act), want, rtol=1e-5, atol=1e-5)


def test_combine_matches_torch_with_drops():
    g = _gen(8)
    T, k, H = 9, 2, 5
    y = torch.randn(T * k, H, generator=g).to(DEV)
    slot = torch.randperm(T * k, generator=g).view(T, k).to(torch.int32)
    slot[2, 1] = -1
    w = _weights(T, k, g)
    gpulab.check(lambda y, s, w: K.combine(y, s, w), R.combine,
                 lambda n, gen: (y, slot, w), sizes=(0,), trials=1, writes_outputs=False)


@pytest.mark.parametrize("cap", [None, 2])
def test_moe_layer_multikernel_and_fused_match_torch_loop(cap):
    T, E, k, H, F = 7, 3, 2, 5, 6
    g = _gen(11)
    x = torch.randn(T, H, generator=g).to(DEV)
    w1 = (torch.randn(E, H, F, generator=g) / 2).to(DEV)
    w2 = (torch.randn(E, F, H, generator=g) / 2).to(DEV)
    idx = _topk(T, E, k, g, skip_last=False).to(DEV)
    w = _weights(T, k, g).to(DEV)
    want = R.moe_ffn(x, w1, w2, idx, w, cap)
    # gemm="auto" picks the naive kernel at these few rows per expert (one run serves both)
    assert T * k / E < K.REGTILE_MIN_ROWS_PER_EXPERT
    torch.testing.assert_close(K.moe_ffn(x, w1, w2, idx, w, cap), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(K.moe_ffn(x, w1, w2, idx, w, cap, gemm="regtile"), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(K.moe_ffn_fused(x, w1, w2, idx, w, cap), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- bad input

def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="k must be"):
        R.route(torch.randn(4, 3), 4)
    with pytest.raises(TypeError, match="float32"):
        K.route(torch.randn(4, 3, dtype=torch.float64).to(DEV), 1)
    with pytest.raises(ValueError, match="outside"):
        K.permute(torch.tensor([[0], [5]], dtype=torch.int32, device=DEV), 3)
    with pytest.raises(ValueError, match="capacity"):
        R.permute(torch.tensor([[0]]), 2, capacity=-1)
    with pytest.raises(ValueError, match="hidden size"):
        R.moe_ffn(x, torch.randn(2, 5, 6), torch.randn(2, 6, 5), torch.zeros(4, 1, dtype=torch.int32),
                  torch.ones(4, 1))
    with pytest.raises(ValueError, match="activation"):
        R.grouped_gemm(x, torch.randn(1, 3, 2), R.permute(torch.zeros(4, 1, dtype=torch.int32), 1), "relu")
    with pytest.raises(ValueError, match="tile table"):
        K.grouped_gemm(x.to(DEV), torch.randn(1, 3, 2).to(DEV), R.permute(torch.zeros(4, 1, dtype=torch.int32), 1))
    with pytest.raises(ValueError, match="tile table"):
        K.grouped_gemm_naive(x.to(DEV), torch.randn(1, 3, 2).to(DEV),
                             R.permute(torch.zeros(4, 1, dtype=torch.int32), 1))
    with pytest.raises(ValueError, match="experts"):
        K.grouped_gemm(x.to(DEV), torch.randn(2, 3, 2).to(DEV),
                       K.permute(torch.zeros(4, 1, dtype=torch.int32, device=DEV), 1))
    with pytest.raises(ValueError, match="gemm must be"):
        K.moe_ffn(x.to(DEV), torch.randn(1, 3, 2).to(DEV), torch.randn(1, 2, 3).to(DEV),
                  torch.zeros(4, 1, dtype=torch.int32, device=DEV), torch.ones(4, 1, device=DEV), gemm="fast")


# ------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("T,E", [(1000, 8), (4097, 64)])
def test_gpu_full_path_and_fused_kernel(T, E):
    """Real concurrency: atomics, the persistent queue and the spin-wait on a GPU."""
    k, H, F = 2, 256, 384
    g = _gen(1)
    x = torch.randn(T, H, generator=g).to(DEV)
    w1 = (torch.randn(E, H, F, generator=g) / H**0.5).to(DEV)
    w2 = (torch.randn(E, F, H, generator=g) / F**0.5).to(DEV)
    logits = torch.randn(T, E, generator=g).to(DEV)
    r, rr = K.route(logits, k), R.route(logits, k)
    assert torch.equal(r.topk_idx, rr.topk_idx)
    want = R.moe_ffn(x, w1, w2, r.topk_idx, r.topk_weight)
    torch.testing.assert_close(K.moe_ffn(x, w1, w2, r.topk_idx, r.topk_weight), want, rtol=1e-3, atol=1e-4)
    for _ in range(3):                       # the queue must reset: repeat
        torch.testing.assert_close(K.moe_ffn_fused(x, w1, w2, r.topk_idx, r.topk_weight), want,
                                   rtol=1e-3, atol=1e-4)
    p, q = K.permute(r.topk_idx, E, capacity=T // E), R.permute(r.topk_idx, E, capacity=T // E)
    assert torch.equal(p.slot_of, q.slot_of) and p.dropped == q.dropped


@pytest.mark.gpu
def test_gpu_register_tiled_grouped_gemm_real_size():
    """The 128 x 128 x 8 kernel at a real size: 64 experts of awkward sizes (some empty,
    some larger than several row tiles), K and N not multiples of BK and BN."""
    g = _gen(4)
    sizes = torch.randint(0, 400, (64,), generator=g)
    sizes[[0, 7, 63]] = 0
    sizes[5] = 5 * K.BM + 3
    Kd, N = 1027, 2050
    p = K.permute(_groups(sizes.tolist(), g).to(DEV), 64)
    a = torch.randn(int(sizes.sum()), Kd, generator=g).to(DEV)
    w = (torch.randn(64, Kd, N, generator=g) / Kd**0.5).to(DEV)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for act in ("none", "silu"):
            want = R.grouped_gemm(a, w, p, act)
            torch.testing.assert_close(K.grouped_gemm(a, w, p, act), want, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(K.grouped_gemm_naive(a, w, p, act), want, rtol=1e-3, atol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.gpu
def test_gpu_offload_replay_runs():
    from gpulab.moe import offload as off
    L, E, H, F = 2, 4, 64, 128
    g = _gen(2)
    topk = torch.stack([torch.randperm(E, generator=g)[:2] for _ in range(6 * L)]).view(6, L, 1, 2)
    probs = torch.softmax(torch.randn(6, L, 1, E, generator=g), -1)
    tr = off.RoutingTrace(topk, probs)
    w1 = torch.randn(L, E, H, F).pin_memory()
    w2 = torch.randn(L, E, F, H).pin_memory()
    res = off.run_on_gpu(tr, w1, w2, "score", capacity=2, prefetch=1)
    sim = off.simulate(tr, "score", capacity=2, prefetch=1)
    assert res.hits == sim.hits and res.copies == sim.copies
    assert res.time_ms > 0 and all(ev["end"] >= ev["start"] for ev in res.events)

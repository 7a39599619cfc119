"""A stable counting sort of the (tile, Gaussian) pairs by tile: one pass, 32-bit values.

The pairs arrive in depth order (nearest Gaussian first, :func:`kernels._bin_front_to_back`),
so a *stable* sort by tile id alone gives every tile's list front to back. The tile ids are
few (8160 at 1080p), which is what a counting sort wants (the idea of a radix sort's one
pass, with a digit as wide as the tile id):

1. ``chunk_histogram_kernel``: block b counts the tiles of its chunk of pairs in shared
   memory and writes its row ``hist[b, t]``;
2. two torch scans: the pairs of tile t start at ``tile_start[t]`` (an exclusive scan of
   the column sums; the tile ranges fall out of it), and block b's share of tile t starts
   ``sum_{b' < b} hist[b', t]`` further (an inclusive scan down the columns, read one row up);
3. ``chunk_scatter_kernel``: block b walks its chunk in rounds of 256 pairs. A thread's rank
   among the lower lanes of its warp with the same tile comes from the round's tiles in
   shared memory; the 8 warps then take their places one after the other from per-tile
   cursors in shared memory, so equal tiles keep their input order.

It moves 4 bytes per pair to count, 8 in and 8 out to scatter, where ``torch.sort`` runs 4
radix passes over a 4-byte key and an 8-byte int64 index and then gathers the ids: about a
fifth of the traffic and no int64 index. Works under the simulator too (only shared memory
and barriers); images with more tiles than ``MAX_TILES`` fall back to ``torch.sort``.
"""
from __future__ import annotations

import torch
from numba import cuda, int32

from ..launch import kernel

__all__ = ["MAX_TILES", "ROUNDS", "sort_kernels_for", "counting_sort_by_tile"]

MAX_TILES = 8192     # per-tile counters in shared memory (32 KiB): 1080p has 120 x 68 = 8160 tiles
BLOCK = 256          # threads per block; each round of a block takes 256 consecutive pairs
WARPS = BLOCK // 32
ROUNDS = 64          # rounds per block: a block's chunk is 16384 pairs (hist: 2 bytes per pair at 1080p)

_KERNELS: dict = {}


def sort_kernels_for(rounds: int = ROUNDS):
    """(chunk_histogram_kernel, chunk_scatter_kernel) for chunks of ``rounds`` x 256 pairs
    (a compile-time constant; tests use small chunks to cover several blocks cheaply)."""
    if rounds not in _KERNELS:
        _KERNELS[rounds] = _build(rounds)
    return _KERNELS[rounds]


def _build(rounds: int):
    chunk = BLOCK * rounds
    return kernel(_histogram(chunk)), kernel(_scatter(chunk, rounds))


def _histogram(CHUNK):   # the kernels below freeze CHUNK and ROUNDS as compile-time constants
    def chunk_histogram_kernel(tiles, hist):
        """hist[b, t] = how many of chunk b's pairs fall in tile t."""
        counts = cuda.shared.array(MAX_TILES, int32)
        n_tiles = hist.shape[1]
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        for t in range(tid, n_tiles, BLOCK):
            counts[t] = 0
        cuda.syncthreads()
        start = b * CHUNK
        stop = min(start + CHUNK, tiles.shape[0])
        for k in range(start + tid, stop, BLOCK):
            cuda.atomic.add(counts, tiles[k], 1)
        cuda.syncthreads()
        for t in range(tid, n_tiles, BLOCK):
            hist[b, t] = counts[t]
    return chunk_histogram_kernel


def _scatter(CHUNK, ROUNDS):
    def chunk_scatter_kernel(tiles, ids, columns, tile_start, out_tiles, out_ids):
        """Block b puts its chunk's pairs at their sorted places, in input order within a tile.

        ``columns`` is the inclusive scan of ``hist`` down its columns: block b's pairs of tile t
        start at ``tile_start[t] + columns[b - 1, t]``.
        """
        cursor = cuda.shared.array(MAX_TILES, int32)
        round_tiles = cuda.shared.array(BLOCK, int32)
        n = tiles.shape[0]
        n_tiles = columns.shape[1]
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        for t in range(tid, n_tiles, BLOCK):
            cursor[t] = tile_start[t] + (columns[b - 1, t] if b > 0 else 0)
        start = b * CHUNK
        for r in range(ROUNDS):
            first = start + r * BLOCK
            if first >= n:                      # the same for every thread: they leave together
                break
            k = first + tid
            valid = k < n
            tile = tiles[k] if valid else -1
            cuda.syncthreads()                  # the last round's tiles are no longer read
            round_tiles[tid] = tile
            cuda.syncthreads()
            # my rank among the lower lanes of my warp with my tile, and how many lanes have it
            rank = 0
            count = 0
            for j in range(32):
                if round_tiles[warp * 32 + j] == tile:
                    count += 1
                    if j < lane:
                        rank += 1
            # the warps in order: each reads its tiles' cursors, then its leaders move them on
            base = 0
            for w in range(WARPS):
                if warp == w and valid:
                    base = cursor[tile]
                cuda.syncthreads()
                if warp == w and valid and rank == 0:
                    cursor[tile] = base + count
                cuda.syncthreads()
            if valid:
                out_tiles[base + rank] = tile
                out_ids[base + rank] = ids[k]
    return chunk_scatter_kernel


def counting_sort_by_tile(tiles: torch.Tensor, ids: torch.Tensor, n_tiles: int, rounds: int = ROUNDS):
    """(sorted tiles [L] int32, their Gaussian ids [L] int32, ranges [n_tiles, 2] int32),
    stable: pairs of one tile keep their input order. Needs ``n_tiles <= MAX_TILES``."""
    if n_tiles > MAX_TILES:
        raise ValueError(f"counting_sort_by_tile holds at most {MAX_TILES} tile counters, got {n_tiles} tiles")
    n, device = tiles.shape[0], tiles.device
    if n == 0:
        return tiles.clone(), ids.clone(), torch.zeros(n_tiles, 2, dtype=torch.int32, device=device)
    histogram, scatter = sort_kernels_for(rounds)
    chunk = BLOCK * rounds
    blocks = (n + chunk - 1) // chunk
    hist = torch.empty(blocks, n_tiles, dtype=torch.int32, device=device)
    histogram[blocks, BLOCK](tiles, hist)
    hist.cumsum_(0)                                       # in place: inclusive down each column
    counts_per_tile = hist[-1]
    ends = torch.cumsum(counts_per_tile, 0, dtype=torch.int32)
    starts = ends - counts_per_tile
    out_tiles = torch.empty_like(tiles)
    out_ids = torch.empty_like(ids)
    scatter[blocks, BLOCK](tiles, ids, hist, starts, out_tiles, out_ids)
    empty = counts_per_tile == 0                          # empty tiles are (0, 0), as tile_ranges gives them
    ranges = torch.stack([starts, ends], 1).masked_fill_(empty[:, None], 0)
    return out_tiles, out_ids, ranges

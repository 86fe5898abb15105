"""KVCache: growing by doubling, shrinking back with the filled part intact."""

from __future__ import annotations

import torch

from omni.kv_cache import KVCache


def _filled(capacity: int, length: int) -> KVCache:
    cache = KVCache.allocate(num_layers=2, batch_size=2, num_kv_heads=2, head_dim=4, capacity=capacity,
                             dtype=torch.float32, device="cpu")
    for store in (cache.keys, cache.values):
        for tensor in store:
            tensor[:, :, :length] = torch.randn(tensor[:, :, :length].shape)
    cache.length = length
    return cache


def test_shrink_keeps_the_filled_part_and_gives_memory_back():
    cache = _filled(capacity=1024, length=40)
    cache.mark(0, 40, torch.rand(2, 40) > 0.3)
    filled = [t[:, :, :40].clone() for t in cache.keys + cache.values]
    valid = cache.valid[:, :40].clone()
    bytes_before = cache.nbytes()
    cache.shrink(128)
    assert cache.capacity == 128 and cache.length == 40
    assert cache.nbytes() == bytes_before // 8
    assert all(torch.equal(t[:, :, :40], f) for t, f in zip(cache.keys + cache.values, filled))
    assert cache.valid.shape == (2, 128) and torch.equal(cache.valid[:, :40], valid)
    # and it still grows afterwards, the filled part moving along
    cache.ensure_capacity(300)
    assert cache.capacity == 300 and all(torch.equal(t[:, :, :40], f) for t, f in zip(cache.keys + cache.values, filled))


def test_shrink_never_drops_filled_slots_nor_grows():
    cache = _filled(capacity=256, length=100)
    cache.shrink(10)
    assert cache.capacity == 100 and cache.length == 100
    keys = cache.keys[0]
    cache.shrink(500)
    assert cache.capacity == 100 and cache.keys[0] is keys  # nothing to give back: untouched

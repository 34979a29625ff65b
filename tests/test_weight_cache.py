"""The packed-weight cache's bookkeeping on the CPU: a dead source's pack is let go at
the next miss, not kept until the cache fills."""
import torch

from csd_fast import ops


def test_dead_sources_packs_go_at_the_next_miss():
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    with ops.cached_weights():
        for scale in range(1, 6):  # short-lived weights, as a per-call cast makes them
            w = torch.full((4, 4, 3, 3), float(scale), dtype=torch.float64)
            b = torch.full((4,), float(scale), dtype=torch.float64)
            ops.sliced_conv3x3(x, w, b, 4, 4)
            del w, b
        # the last pair died after its own misses; every earlier pair was swept by them
        assert ops.weight_cache_stats()["entries"] <= 2, ops.weight_cache_stats()
        w = torch.ones(4, 4, 3, 3, dtype=torch.float64)
        b = torch.ones(4, dtype=torch.float64)
        ops.sliced_conv3x3(x, w, b, 4, 4)
        ops.sliced_conv3x3(x, w, b, 4, 4)
        stats = ops.weight_cache_stats()
        assert stats["entries"] == 2 and stats["hits"] == 2, stats

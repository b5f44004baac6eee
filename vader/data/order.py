"""The order training prompts (and videos) are drawn in: an endless stream, reshuffled every epoch from the
seed, indexed by a global video number. A pure function of (seed, index), so every process
and a resumed run agree on which prompt (or video) any sample of any step gets."""
from __future__ import annotations

import functools
import random


@functools.lru_cache(maxsize=4)  # the current epoch and the next, for a few prompt lists
def epoch_order(num_prompts: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(num_prompts))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return tuple(order)


def item_at(num_items: int, seed: int, index: int) -> int:
    """Which of `num_items` items is the `index`-th (from 0) of the stream: every item once per
    epoch. Prompts and training videos (vader.data.loader) are drawn by it."""
    epoch, pos = divmod(index, num_items)
    return epoch_order(num_items, seed, epoch)[pos]


def prompt_at(prompts: list[str], seed: int, index: int) -> str:
    """The `index`-th prompt (from 0) of the stream: every prompt once per epoch."""
    return prompts[item_at(len(prompts), seed, index)]

"""Random hex from a bulk os.urandom read: every digit handed out once, in any count."""

from __future__ import annotations

import string

from appliance.sip.tags import BATCH, HexPool, random_hex


def test_random_hex_is_that_many_hex_digits_and_fresh_each_time() -> None:
    tags = [random_hex(10) for _ in range(3 * BATCH // 5)]  # past a batch or two
    assert all(len(tag) == 10 and set(tag) <= set(string.hexdigits.lower()) for tag in tags)
    assert len(set(tags)) == len(tags)


def test_a_pool_hands_out_each_digit_once_and_reads_again_when_short() -> None:
    pool = HexPool()
    first = pool.take(2 * BATCH - 4)
    second = pool.take(4)  # the last digits of the batch
    third = pool.take(10)  # not enough left: a new batch
    assert len(first) == 2 * BATCH - 4 and len(second) == 4 and len(third) == 10
    pool.reset()  # as in a forked child
    assert len(pool.take(2 * BATCH)) == 2 * BATCH

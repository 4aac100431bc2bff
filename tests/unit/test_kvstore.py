from __future__ import annotations

from pathlib import Path

import pytest

from edged.backends.kvstore import KVTiers, SavedState, decode, encode


def state(n: int, size: int) -> SavedState:
    return SavedState(tuple(range(n)), bytes([n % 256]) * size)


def test_encode_decode_round_trip() -> None:
    s = state(5, 100)
    assert decode(encode(s)) == s


@pytest.mark.parametrize("cut", [0, 4, 8, 12, 20, 40, -1])
def test_truncated_or_garbage_files_are_rejected(cut: int) -> None:
    blob = encode(state(5, 100))
    with pytest.raises(ValueError):
        decode(blob[:cut])
    with pytest.raises(ValueError):
        decode(blob + b"x")


def test_ram_spills_lru_to_disk_then_disk_drops_oldest(tmp_path: Path) -> None:
    t = KVTiers("k", tmp_path, ram_budget=250, disk_budget=250)
    assert t.put("a", state(1, 96)) == "ram"  # 100 bytes each
    assert t.put("b", state(1, 96)) == "ram"
    assert t.put("c", state(1, 96)) == "ram"  # over 250: "a" spills to disk
    assert t.location("a") == "disk" and t.ram_bytes == 200
    t.put("d", state(1, 96))  # "b" spills
    t.put("e", state(1, 96))  # "c" spills; disk holds 2 of 3: "a" dropped
    assert t.location("a") is None
    assert t.location("b") == "disk" and t.location("c") == "disk"
    got = t.take("b")
    assert got is not None and got[1] == "disk" and got[0] == state(1, 96)
    assert t.location("b") is None


def test_disk_tier_survives_a_new_instance_and_is_keyed(tmp_path: Path) -> None:
    t = KVTiers("model-a", tmp_path, ram_budget=0, disk_budget=10_000)
    assert t.put("s_1", state(3, 50)) == "disk"
    again = KVTiers("model-a", tmp_path, ram_budget=0, disk_budget=10_000)
    assert again.location("s_1") == "disk"
    other = KVTiers("model-b", tmp_path, ram_budget=0, disk_budget=10_000)
    assert other.location("s_1") is None and other.take("s_1") is None


def test_corrupt_disk_state_is_dropped_not_loaded(tmp_path: Path) -> None:
    t = KVTiers("k", tmp_path, ram_budget=0, disk_budget=10_000)
    t.put("s_1", state(3, 50))
    (tmp_path / "k" / "s_1.kv").write_bytes(b"EDKV\x01\x00\x00\x00garbage")
    assert t.take("s_1") is None and t.location("s_1") is None


def test_copy_and_drop_and_unsafe_ids(tmp_path: Path) -> None:
    t = KVTiers("k", tmp_path, ram_budget=1000, disk_budget=1000)
    t.put("a", state(2, 10))
    assert t.copy("a", "b") and t.location("b") == "ram"
    t.drop("a")
    assert t.location("a") is None and t.entries() == {"b": "ram"}
    with pytest.raises(ValueError):
        t.put("../x", state(1, 1))
    assert not t.copy("missing", "c")


def test_without_disk_a_too_big_state_is_dropped() -> None:
    t = KVTiers("k", None, ram_budget=10, disk_budget=10**9)
    assert t.put("a", state(1, 100)) == "dropped"

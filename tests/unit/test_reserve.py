"""The spool reserve: finished files are kept and overwritten by received ones, exactly and bounded."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from dicom_node.config import load_config
from dicom_node.errors import ConfigError
from dicom_node.reserve import IDLE_BEFORE_FILL_S, SpoolReserve
from dicom_node.spool import Spool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_received_instance_overwrites_a_reserved_file_and_is_cut_to_length(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reserve_bytes=1 << 20)
    blank = tmp_path / "reserve" / "1000.1"
    blank.write_bytes(b"\xff" * 1000)
    spool.reserve = SpoolReserve(tmp_path / "reserve", 1 << 20)       # rebuilt from the folder, as at start
    inode = blank.stat().st_ino
    stored = spool.put("1.2", "1.2.3", "1.2.3.4", (b"head", b"body-bytes"))
    assert stored.path.read_bytes() == b"headbody-bytes"                 # not a byte of the old content left
    assert stored.size == 14 and stored.digest == hashlib.sha256(b"headbody-bytes").hexdigest()
    assert stored.path.stat().st_ino == inode                            # the same file, overwritten
    assert names(tmp_path / "reserve") == []
    assert (spool.reserve.taken, spool.reserve.missed) == (1, 0)
    assert not [p for p in stored.path.parent.iterdir() if p.name.startswith(".tmp")]


def test_a_shorter_reserved_file_grows_to_the_instance(tmp_path: Path) -> None:
    (tmp_path / "reserve").mkdir()
    (tmp_path / "reserve" / "3.1").write_bytes(b"old")
    spool = Spool(tmp_path, reserve_bytes=1 << 20)
    stored = spool.put("1.2", "1.2.3", "1.2.3.4", b"a longer instance")
    assert stored.path.read_bytes() == b"a longer instance"


def test_take_prefers_the_exact_size_then_the_smallest_larger_then_the_largest(tmp_path: Path) -> None:
    folder = tmp_path / "reserve"
    folder.mkdir()
    for name, size in (("100.1", 100), ("200.2", 200), ("300.3", 300), ("50.4", 50)):
        (folder / name).write_bytes(bytes(size))
    reserve = SpoolReserve(folder, 10_000)
    assert reserve.files == 4 and reserve.bytes == 650
    taken = [reserve.take(200), reserve.take(150), reserve.take(1000), reserve.take(10)]
    assert [p.name if p else None for p in taken] == ["200.2", "300.3", "100.1", "50.4"]
    assert reserve.take(10) is None and reserve.missed == 1 and reserve.bytes == 0


def test_scan_drops_strays_torn_files_and_what_is_over_capacity(tmp_path: Path) -> None:
    folder = tmp_path / "reserve"
    folder.mkdir()
    (folder / "100.1").write_bytes(bytes(100))
    (folder / "100.2").write_bytes(bytes(60))          # its name says 100 bytes: a torn fill
    (folder / "half-made").write_bytes(b"x")
    (folder / ".100.9").write_bytes(b"patient data")   # given back, not yet zeroed when the node stopped
    (folder / "100.3").write_bytes(bytes(100))
    reserve = SpoolReserve(folder, 150)                # room for one of the two whole files
    assert reserve.files == 1 and reserve.bytes == 100
    assert len(names(folder)) == 1
    given = tmp_path / "done.dcm"
    given.write_bytes(bytes(40))
    assert reserve.give(given)                         # new names never clash with the scanned ones
    assert len(names(folder)) == 2 and not given.exists()


def test_finished_series_go_back_into_the_reserve_up_to_its_capacity(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reserve_bytes=250)
    for i in range(3):
        spool.put("1.2", "1.2.3", f"1.2.3.{i}", bytes(100))
    (tmp_path / "derived" / "9.9").mkdir(parents=True)
    (tmp_path / "derived" / "9.9" / "9.9.1.dcm").write_bytes(bytes(10))
    (tmp_path / "derived" / "9.9" / "manifest.txt").write_text("9.9.1\n")
    spool.remove_source("1.2.3")
    assert not (tmp_path / "incoming" / "1.2.3").exists()
    assert spool.reserve.files == 2 and spool.reserve.bytes == 200     # the third did not fit: deleted
    spool.remove_derived("9.9")
    assert not (tmp_path / "derived" / "9.9").exists()
    assert spool.reserve.bytes == 210 and all(n.split(".")[0] in {"100", "10"} for n in names(tmp_path / "reserve"))


def test_a_file_given_back_holds_only_zeros_in_the_same_blocks(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reserve_bytes=1 << 20)
    stored = spool.put("1.2", "1.2.3", "1.2.3.4", b"PATIENT^NAME" * 1000)
    inode = stored.path.stat().st_ino
    spool.remove_source("1.2.3")
    [kept] = (tmp_path / "reserve").iterdir()
    assert kept.stat().st_ino == inode and kept.read_bytes() == bytes(12_000)
    assert kept.name == "12000." + kept.name.split(".")[1]


def test_without_a_reserve_files_are_new_and_finished_ones_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    stored = spool.put("1.2", "1.2.3", "1.2.3.4", b"x" * 10)
    spool.remove_source("1.2.3")
    assert not spool.reserve.enabled and not (tmp_path / "reserve").exists()
    assert not stored.path.exists()


def test_fill_tops_up_while_idle_with_the_recent_size_and_stops_at_capacity(tmp_path: Path) -> None:
    clock = Clock()
    reserve = SpoolReserve(tmp_path / "reserve", 10 * 4096, fill_size=4096, clock=clock)
    assert reserve.fill_size() == 4096
    assert reserve.fill(threading.Event(), room=lambda n: True) == 10 * 4096
    assert reserve.files == 10 and all(p.stat().st_size == 4096 for p in (tmp_path / "reserve").iterdir())
    for _ in range(3):
        reserve.take(3000)                             # three received instances of 3000 bytes
    assert reserve.fill_size() == 3000
    clock.now += IDLE_BEFORE_FILL_S
    assert reserve.fill(threading.Event(), room=lambda n: True) == 4 * 3000   # back up to capacity
    assert reserve.bytes == 7 * 4096 + 4 * 3000


def test_fill_writes_nothing_while_receiving_or_stopping_and_stops_after_its_slice(tmp_path: Path) -> None:
    clock = Clock()
    reserve = SpoolReserve(tmp_path / "reserve", 1 << 20, fill_size=100, clock=clock)
    reserve.take(100)                                  # a C-STORE just now: not idle
    assert reserve.fill(threading.Event(), room=lambda n: True) == 0 and reserve.files == 0
    clock.now += IDLE_BEFORE_FILL_S
    stop = threading.Event()
    stop.set()
    assert reserve.fill(stop, room=lambda n: True) == 0 and reserve.files == 0

    def room(n: int) -> bool:                          # each file written takes 1 s of the clock
        clock.now += 0.5
        return True

    assert reserve.fill(threading.Event(), room=room, max_s=2.0) == 200 and reserve.files == 2


def test_fill_gives_space_back_above_the_watermark(tmp_path: Path) -> None:
    reserve = SpoolReserve(tmp_path / "reserve", 1000, fill_size=100)
    reserve.fill(threading.Event(), room=lambda n: True)
    assert reserve.files == 10

    def room(n: int) -> bool:                          # the disk's watermark is 700 bytes of reserve away
        return reserve.bytes + n <= 700

    assert reserve.fill(threading.Event(), room=room) == 0
    assert reserve.files == 7 and len(names(tmp_path / "reserve")) == 7


def test_fill_stops_at_the_watermark(tmp_path: Path) -> None:
    reserve = SpoolReserve(tmp_path / "reserve", 1000, fill_size=100)
    assert reserve.fill(threading.Event(), room=lambda n: n <= 0) == 0 and reserve.files == 0


def test_a_failed_fill_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reserve = SpoolReserve(tmp_path / "reserve", 1000, fill_size=100)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", no_space)
    assert reserve.fill(threading.Event(), room=lambda n: True) == 0
    assert reserve.files == 0 and names(tmp_path / "reserve") == []


def test_reserve_bounds_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the spool reserve cannot be negative, got -1 bytes"):
        SpoolReserve(tmp_path, -1)
    with pytest.raises(ValueError, match="fill_size must be positive, got 0"):
        SpoolReserve(tmp_path, 10, fill_size=0)
    config = tmp_path / "node.toml"
    config.write_text("[node]\nspool_reserve_mb = -5\n")
    with pytest.raises(ConfigError,
                       match=r"node.spool_reserve_mb must be in 0-65536 \(0 turns the reserve off\), got -5"):
        load_config(config)


def test_the_disk_guard_counts_the_reserve_as_free_and_the_reserve_as_used_for_growing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    from dicom_node import disk
    from dicom_node.disk import DiskGuard
    from dicom_node.receive import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(1000, 960, 40))
    reserved = {"bytes": 0}
    guard = DiskGuard(tmp_path, 0.95, reserved=lambda: reserved["bytes"])
    assert guard() == STATUS_OUT_OF_RESOURCES                       # 96 % in use, nothing reserved
    reserved["bytes"] = 100
    guard = DiskGuard(tmp_path, 0.95, reserved=lambda: reserved["bytes"])
    assert guard() == STATUS_SUCCESS                                # 86 % once the reserve is counted free
    assert guard.room_for(90).fits and not guard.room_for(91).fits  # 950 - 960 + 100 = 90 bytes of room
    assert not guard.reserve_may_grow(0)                            # but the reserve may not grow: 96 % real
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(1000, 900, 100))
    reserved["bytes"] = 20                                          # 50 bytes above the watermark: half is 25
    assert guard.reserve_may_grow(5) and not guard.reserve_may_grow(6)
    assert not DiskGuard(tmp_path, 1.0, reserved=lambda: 0).reserve_may_grow(1)   # no room above: no reserve

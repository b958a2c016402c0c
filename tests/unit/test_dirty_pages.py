"""Tests of the dirty-page tracker (csrc/rewind/dirty_pages.c) through
mayflyd._mayfly.DirtyTracker: userfaultfd async write-protect plus
PAGEMAP_SCAN over private anonymous memory mapped by Python's mmap.

Skipped only when the kernel refuses UFFD_FEATURE_WP_ASYNC /
UFFD_FEATURE_WP_UNPOPULATED (EOPNOTSUPP) or lacks PAGEMAP_SCAN (ENOTTY).
"""
from __future__ import annotations

import ctypes
import errno
import mmap
from collections.abc import Iterator

import pytest

from mayflyd import _mayfly as M

PAGE = mmap.PAGESIZE
SIZE = 32 << 20


def _open_or_skip() -> M.DirtyTracker:
    if not hasattr(M, "DirtyTracker"):
        pytest.skip("this build of mayflyd has no reset engine")
    try:
        return M.DirtyTracker()
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
            pytest.skip(f"kernel refuses dirty tracking: {e}")
        raise


class Region:
    """A private anonymous mapping, its address, and page-unit views."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.size = size

    def write(self, *pages: int) -> None:
        for p in pages:
            self.map[p * PAGE + 7] = 0xAB

    def pages(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Byte ranges as [first, end) page numbers relative to the start."""
        return [((s - self.address) // PAGE, (e - self.address) // PAGE) for s, e in ranges]

    def close(self) -> None:
        self.map.close()


@pytest.fixture
def tracker() -> Iterator[M.DirtyTracker]:
    t = _open_or_skip()
    yield t
    t.close()


@pytest.fixture
def region(tracker: M.DirtyTracker) -> Iterator[Region]:
    r = Region(SIZE)
    tracker.track(r.address, r.size)
    yield r
    tracker.close()  # before the unmap, so no scan ever sees a hole
    r.close()


def test_fresh_range_reports_nothing(tracker: M.DirtyTracker, region: Region) -> None:
    assert tracker.collect() == []
    assert tracker.scan() == []


def test_collect_reports_exactly_the_written_pages(tracker: M.DirtyTracker, region: Region) -> None:
    region.write(0, 5, 6, 100)
    ranges = tracker.collect()
    assert region.pages(ranges) == [(0, 1), (5, 7), (100, 101)]
    assert all(s % PAGE == 0 and e % PAGE == 0 for s, e in ranges)


def test_collect_reprotects(tracker: M.DirtyTracker, region: Region) -> None:
    region.write(0, 5, 6, 100)
    tracker.collect()
    assert tracker.collect() == []
    region.write(5, 200)
    assert region.pages(tracker.collect()) == [(5, 6), (200, 201)]
    assert tracker.collect() == []


def test_scan_reports_without_reprotecting_and_protect_clears(tracker: M.DirtyTracker, region: Region) -> None:
    region.write(3, 4, 9)
    first = tracker.scan()
    assert region.pages(first) == [(3, 5), (9, 10)]
    assert tracker.scan() == first
    # A copy-back between scan and protect dirties the pages again; protect
    # is what makes them clean (the rewinder's order: scan, copy, protect).
    region.map[3 * PAGE: 5 * PAGE] = bytes(2 * PAGE)
    tracker.protect(first)
    assert tracker.scan() == []
    region.write(4)
    assert region.pages(tracker.scan()) == [(4, 5)]


def test_protect_only_the_given_regions(tracker: M.DirtyTracker, region: Region) -> None:
    region.write(1, 2, 50)
    tracker.protect([(region.address + PAGE, region.address + 2 * PAGE)])
    assert region.pages(tracker.scan()) == [(2, 3), (50, 51)]


def test_protect_refuses_untracked_or_unaligned(tracker: M.DirtyTracker, region: Region) -> None:
    with pytest.raises(OSError) as e:
        tracker.protect([(region.address - PAGE, region.address)])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        tracker.protect([(region.address + 1, region.address + PAGE)])


def test_pages_outside_the_tracked_range_are_never_reported(tracker: M.DirtyTracker) -> None:
    outer = Region(64 * PAGE)
    try:
        # Track only pages [16, 48): writes on both sides must not show.
        tracker.track(outer.address + 16 * PAGE, 32 * PAGE)
        outer.write(0, 15, 16, 47, 48, 63)
        assert outer.pages(tracker.collect()) == [(16, 17), (47, 48)]
        outer.write(1, 62)
        assert tracker.collect() == []
    finally:
        tracker.close()
        outer.close()


def test_more_regions_than_the_cap_are_all_reported(tracker: M.DirtyTracker, region: Region) -> None:
    written = list(range(0, 2000, 3))  # 667 separate regions
    region.write(*written)
    expected = [(p, p + 1) for p in written]
    assert region.pages(tracker.scan(cap=7)) == expected
    assert region.pages(tracker.scan(cap=1)) == expected
    # collect re-protects only what it reported, so nothing is lost either.
    assert region.pages(tracker.collect(cap=5)) == expected
    assert tracker.collect(cap=5) == []


def test_several_ranges_in_address_order(tracker: M.DirtyTracker) -> None:
    a, b = Region(16 * PAGE), Region(16 * PAGE)
    try:
        for r in (b, a):
            tracker.track(r.address, r.size)
        a.write(2)
        b.write(3)
        got = tracker.scan(cap=1)
        assert sorted(got) == got
        assert sorted(got) == sorted([(a.address + 2 * PAGE, a.address + 3 * PAGE),
                                      (b.address + 3 * PAGE, b.address + 4 * PAGE)])
        with pytest.raises(OSError) as e:
            tracker.track(a.address + PAGE, PAGE)
        assert e.value.errno == errno.EINVAL
    finally:
        tracker.close()
        a.close()
        b.close()


def test_a_joined_scan_reports_what_the_per_range_scans_do(tracker: M.DirtyTracker) -> None:
    """One PAGEMAP_SCAN over the span of every range: the untracked pages
    between them (written too) are skipped, also across output batches."""
    outer = Region(96 * PAGE)
    try:
        for first in (8, 40, 72):
            tracker.track(outer.address + first * PAGE, 16 * PAGE)
        outer.write(0, 8, 9, 23, 24, 30, 40, 41, 55, 60, 72, 80, 87, 88, 95)
        per_range = tracker.scan()
        assert outer.pages(per_range) == [(8, 10), (23, 24), (40, 42), (55, 56), (72, 73), (80, 81), (87, 88)]
        assert tracker.scan(joined=True) == per_range
        assert tracker.scan(joined=True, cap=1) == per_range
        assert tracker.collect() == per_range
        assert tracker.scan(joined=True) == []
    finally:
        tracker.close()
        outer.close()


def test_a_joined_scan_skips_a_range_that_lost_its_registration(tracker: M.DirtyTracker) -> None:
    """What the per-range scan reports as an error the joined one cannot
    see: why the rewinder uses it only when no mapping was replaced."""
    outer = Region(32 * PAGE)
    try:
        tracker.track(outer.address, 32 * PAGE)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        fixed = 0x10
        got = libc.mmap(outer.address + 8 * PAGE, PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | fixed, -1, 0)
        assert got == outer.address + 8 * PAGE, ctypes.get_errno()
        outer.write(2, 8)
        assert outer.pages(tracker.scan(joined=True)) == [(2, 3)]
        with pytest.raises(OSError) as e:
            tracker.scan()
        assert e.value.errno == errno.EPERM
    finally:
        tracker.close()
        outer.close()


def test_reading_does_not_dirty(tracker: M.DirtyTracker, region: Region) -> None:
    region.write(10)
    tracker.collect()
    total = sum(region.map[p * PAGE] for p in range(0, SIZE // PAGE, 97))
    total += region.map[10 * PAGE + 7]
    assert total == 0xAB
    assert tracker.scan() == []


def test_madvise_dontneed_is_reported_as_written(tracker: M.DirtyTracker, region: Region) -> None:
    # Observed on Linux 6.18 with UFFD_FEATURE_WP_UNPOPULATED: zapping a
    # tracked page drops its write-protect marker, the page reads as zeros,
    # and PAGEMAP_SCAN reports the now-empty PTE as PAGE_IS_WRITTEN, for a
    # page written before (8), written and then protected (9), and never
    # touched (10). So a scan-copy-protect cycle restores such pages, unlike
    # what docs/design.md section 5 records for the prototype ("not reported").
    region.write(8, 9)
    tracker.protect([(region.address + 9 * PAGE, region.address + 10 * PAGE)])
    region.map.madvise(mmap.MADV_DONTNEED, 8 * PAGE, 3 * PAGE)
    assert region.map[8 * PAGE + 7] == 0 and region.map[9 * PAGE + 7] == 0
    assert region.pages(tracker.scan()) == [(8, 11)]
    # Re-protecting the zapped pages makes them clean again...
    assert region.pages(tracker.collect()) == [(8, 11)]
    assert tracker.scan() == []
    # ...and tracked as usual afterwards.
    region.write(9)
    assert region.pages(tracker.scan()) == [(9, 10)]


def test_track_refuses_bad_ranges(tracker: M.DirtyTracker, region: Region) -> None:
    for address, length in ((region.address + 1, PAGE), (region.address, PAGE + 1), (region.address, 0)):
        with pytest.raises(OSError) as e:
            tracker.track(address, length)
        assert e.value.errno == errno.EINVAL


def test_closed_tracker_raises(tracker: M.DirtyTracker) -> None:
    tracker.close()
    with pytest.raises(OSError) as e:
        tracker.scan()
    assert e.value.errno == errno.EBADF
    tracker.close()  # twice is harmless

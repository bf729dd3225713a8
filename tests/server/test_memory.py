"""The server fixes glibc's mmap threshold (server/memory.py); the soak test checks the effect."""

from __future__ import annotations


def test_mmap_threshold_is_fixed_unless_the_environment_says_otherwise(monkeypatch) -> None:
    from modelport.server.memory import fix_mmap_threshold

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert fix_mmap_threshold(1024 * 1024)  # glibc (Debian, the images): mallopt accepts it
    assert not fix_mmap_threshold(0)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")
    assert not fix_mmap_threshold(1024 * 1024)

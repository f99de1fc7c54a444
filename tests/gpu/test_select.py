"""GPU selection by index or UUID: parsing and resolving against a host's GPUs."""

from __future__ import annotations

import pytest

from jouletune.gpu._select import parse_selection, resolve_selection

UUIDS = {0: "GPU-aaa", 1: "GPU-bbb", 2: "GPU-ccc"}


@pytest.mark.parametrize(
    ("text", "chosen"),
    [
        ("0,2", [0, 2]),
        ("GPU-ccc, GPU-aaa\n", ["GPU-ccc", "GPU-aaa"]),
        ("1 GPU-aaa", [1, "GPU-aaa"]),
        ("١", ["١"]),  # not an ASCII digit: a name, which then matches no GPU
    ],
)
def test_parse_selection(text: str, chosen: list[int | str]) -> None:
    assert parse_selection(text) == chosen


@pytest.mark.parametrize("text", ["", " , ", "-1", "1,1", "GPU-a,GPU-a"])
def test_parse_selection_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected GPU|distinct"):
        parse_selection(text)


def test_resolve_keeps_the_order_given_and_the_hosts_indices() -> None:
    assert resolve_selection(["GPU-ccc", 0], UUIDS, "h") == [2, 0]
    assert resolve_selection(None, UUIDS, "h") == [0, 1, 2]


def test_resolve_names_what_is_missing_and_what_there_is() -> None:
    with pytest.raises(ValueError, match=r"no GPU \['GPU-zzz', 7\] on h; it has 0=GPU-aaa"):
        resolve_selection(["GPU-zzz", 7, 1], UUIDS, "h")


def test_resolve_refuses_one_gpu_named_twice() -> None:
    with pytest.raises(ValueError, match="the same GPU twice"):
        resolve_selection([0, "GPU-aaa"], UUIDS, "h")

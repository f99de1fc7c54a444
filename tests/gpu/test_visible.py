"""CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES read as CUDA and the container toolkit
read them, mapped to NVML indices."""

from __future__ import annotations

import pytest

from jouletune.gpu import VisibleDevices

HOST = {
    0: "GPU-0a1b2c3d-0000-0000-0000-000000000000",
    1: "GPU-1f2e3d4c-1111-1111-1111-111111111111",
    2: "GPU-2a3b4c5d-2222-2222-2222-222222222222",
    3: "GPU-3c4d5e6f-3333-3333-3333-333333333333",
}


@pytest.mark.parametrize(
    ("nvidia", "cuda", "visible"),
    [
        (None, None, [0, 1, 2, 3]),
        ("all", None, [0, 1, 2, 3]),
        ("", None, [0, 1, 2, 3]),
        (None, "2", [2]),
        (None, "3,1", [3, 1]),  # CUDA numbers them in the variable's order
        (None, "GPU-2a3b4c5d-2222-2222-2222-222222222222", [2]),
        (None, "GPU-1f2e", [1]),  # a unique prefix, as CUDA accepts
        (None, " 1 , 0 ", [1, 0]),
        ("2,0", None, [0, 2]),  # the toolkit's list: CUDA keeps the host's order
        ("GPU-3c4d5e6f-3333-3333-3333-333333333333,1", None, [1, 3]),
        ("1,3", "1", [3]),  # CUDA's index counts among what the container holds
        ("1,3", "GPU-1f2e3d4c", [1]),
    ],
)
def test_visible_gpus_in_cudas_order(
    nvidia: str | None, cuda: str | None, visible: list[int]
) -> None:
    assert VisibleDevices(nvidia=nvidia, cuda=cuda).visible(HOST) == visible


def test_inside_a_container_the_toolkits_indices_are_already_applied() -> None:
    # docker run --gpus '"device=2,3"': NVML inside sees two GPUs, numbered 0 and 1.
    container = {0: HOST[2], 1: HOST[3]}
    assert VisibleDevices(nvidia="2,3").visible(container) == [0, 1]
    assert VisibleDevices(nvidia="2,3", cuda="1").engine_gpus(container, 1) == [1]
    # The device plugin names UUIDs: they match whatever NVML numbers them.
    assert VisibleDevices(nvidia=HOST[3]).visible({0: HOST[3]}) == [0]


@pytest.mark.parametrize(
    ("cuda", "count", "engine"),
    [(None, 1, [0]), ("1", 1, [1]), ("3,1,2", 2, [3, 1]), (None, 4, [0, 1, 2, 3])],
)
def test_the_engine_takes_the_first_visible_gpus(
    cuda: str | None, count: int, engine: list[int]
) -> None:
    assert VisibleDevices(cuda=cuda).engine_gpus(HOST, count) == engine


@pytest.mark.parametrize(
    ("nvidia", "cuda", "message"),
    [
        (None, "4", r"CUDA_VISIBLE_DEVICES=4: there is no CUDA device 4; this process may use 4"),
        ("0,1", "2", r"no CUDA device 2; this process may use 2 GPU\(s\) \(NVML 0=GPU-0a1b"),
        (None, "GPU-ffff", r"GPU-ffff names none of the GPUs this process may use"),
        ("0", HOST[1], r"GPU-1f2e3d4c-1111-1111-1111-111111111111 names none of the GPUs"),
        (None, "GPU-", r"CUDA_VISIBLE_DEVICES=GPU-: GPU- matches several GPUs"),
        (None, "1,1", r"CUDA_VISIBLE_DEVICES=1,1 names the same GPU twice"),
        (None, "-1", r"CUDA_VISIBLE_DEVICES=-1: there is no CUDA device -1"),
        (None, "", r"CUDA_VISIBLE_DEVICES is set but empty: CUDA sees no GPU"),
        (None, "0,,1", r"CUDA_VISIBLE_DEVICES=0,,1: an empty entry"),
        ("none", None, r"NVIDIA_VISIBLE_DEVICES=none gives this process no GPU"),
        ("void", None, r"NVIDIA_VISIBLE_DEVICES=void gives this process no GPU"),
        ("7", None, r"NVIDIA_VISIBLE_DEVICES=7: 7 names none of the GPUs"),
        ("0,0", None, r"NVIDIA_VISIBLE_DEVICES=0,0 names the same GPU twice"),
        ("0:1", None, r"NVIDIA_VISIBLE_DEVICES=0:1: 0:1 is a MIG device"),
        (None, "MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f", r"is a MIG device; jouletune measures"),
        (None, "MIG-GPU-0a1b2c3d/1/0", r"is a MIG device"),
    ],
)
def test_bad_variables_are_one_line_errors_naming_the_variable(
    nvidia: str | None, cuda: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        VisibleDevices(nvidia=nvidia, cuda=cuda).visible(HOST)
    assert "\n" not in str(info.value)


def test_too_few_visible_gpus_for_the_tensor_parallelism() -> None:
    with pytest.raises(
        ValueError,
        match=r"tensor parallelism 2 needs 2 GPUs, but CUDA_VISIBLE_DEVICES=3 leaves 1 visible "
        r"\(NVML \[3\]\)",
    ):
        VisibleDevices(cuda="3").engine_gpus(HOST, 2)


def test_read_from_the_environment() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "all", "PATH": "/bin"}
    devices = VisibleDevices.from_env(env)
    assert devices == VisibleDevices(nvidia="all", cuda="1")
    assert devices.narrows()
    assert devices.describe() == "NVIDIA_VISIBLE_DEVICES=all CUDA_VISIBLE_DEVICES=1"
    assert not VisibleDevices.from_env({"NVIDIA_VISIBLE_DEVICES": "all"}).narrows()
    assert not VisibleDevices.from_env({}).narrows()

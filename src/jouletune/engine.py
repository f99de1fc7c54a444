"""jouletune.engine: everything jouletune knows about the serving engine, vLLM, in one place.

    args = ServeArgs(model="meta-llama/Llama-3.1-8B-Instruct", max_num_seqs=64, port=8000)
    argv = [*vllm_command(), *args.argv()]          # what a runner starts
    defaults = installed_defaults() or engine_defaults(gpu_name=..., gpu_memory_bytes=...)

Its flags (and which take no value), its defaults, the version jouletune is validated
against, its image: the local runner, the sim-server, the operator's trial pods and the
adoption patch all take them from here.

Every figure in this repository was measured with vLLM 0.24.0; `IMAGE` is that release's
official image. `engine_defaults` is vLLM 0.24's table (`EngineArgs.get_batch_defaults` and the
server's `cache_config_info` as the H100 calibration server reported it): what the simulator
serves and what a host without vLLM expects. On a GPU host with vLLM installed,
`installed_defaults` reads that version's own defaults from its code.
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import shutil
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOOLEAN_FLAGS",
    "IMAGE",
    "VALIDATED_VERSION",
    "EngineDefaults",
    "ServeArgs",
    "engine_defaults",
    "installed_defaults",
    "installed_version",
    "merge_args",
    "split_flags",
    "vllm_command",
]

VALIDATED_VERSION = "0.24.0"
IMAGE = f"vllm/vllm-openai:v{VALIDATED_VERSION}"
# Replaces `vllm serve` (split like a shell would): CI puts `jouletune sim-server` there.
ENV_COMMAND = "JOULETUNE_VLLM_CMD"
_GIB = 2**30

# `vllm serve` flags that take no value (argparse store_true or BooleanOptionalAction, both
# spellings), so the token after one is never taken for its value: it may be the model.
BOOLEAN_FLAGS = frozenset(
    {
        "--async-scheduling",
        "--no-async-scheduling",
        "--disable-custom-all-reduce",
        "--disable-fastapi-docs",
        "--disable-frontend-multiprocessing",
        "--disable-log-requests",
        "--enable-log-requests",
        "--disable-log-stats",
        "--enable-auto-tool-choice",
        "--enable-chunked-prefill",
        "--no-enable-chunked-prefill",
        "--enable-expert-parallel",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--enable-sleep-mode",
        "--enforce-eager",
        "--headless",
        "--skip-tokenizer-init",
        "--trust-remote-code",
    }
)


@dataclass(frozen=True, kw_only=True)
class EngineDefaults:
    """What `vllm serve` uses for a flag that is not given, on one GPU model.

    Attributes:
        version: the vLLM version these defaults are of.
        source: where they come from: `installed` (read from the vLLM on this host) or
            `built-in` (jouletune's table of VALIDATED_VERSION).
        max_num_seqs: most sequences in one engine step.
        max_num_batched_tokens: most tokens in one engine step.
        gpu_memory_utilization: fraction of GPU memory vLLM may take.
        enable_prefix_caching: whether prefix caching is on.
    """

    version: str
    source: str
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    enable_prefix_caching: bool


def installed_version() -> str | None:
    """The version of the vLLM installed here, or None."""
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_defaults(*, gpu_name: str, gpu_memory_bytes: int) -> EngineDefaults:
    """VALIDATED_VERSION's defaults for `vllm serve` on a GPU of this name and memory (what the
    simulator serves, and what a host without vLLM expects)."""
    seqs, tokens = _batch_defaults_0_24(gpu_name, gpu_memory_bytes)
    return EngineDefaults(
        version=VALIDATED_VERSION,
        source="built-in",
        max_num_seqs=seqs,
        max_num_batched_tokens=tokens,
        # The calibration server, started without the flag, reported "0.92" in
        # cache_config_info (benchmarks/results/h100-calibration).
        gpu_memory_utilization=0.92,
        enable_prefix_caching=True,
    )


def _batch_defaults_0_24(gpu_name: str, gpu_memory_bytes: int) -> tuple[int, int]:
    # vllm/engine/arg_utils.py EngineArgs.get_batch_defaults (OpenAI server): large defaults on
    # GPUs with >= 70 GiB except A100 (vLLM PR #17885 found they cut A100 throughput).
    if gpu_memory_bytes >= 70 * _GIB and "a100" not in gpu_name.lower():
        return 1024, 8192
    return 256, 2048


def installed_defaults() -> EngineDefaults | None:
    """The installed vLLM's own defaults for `vllm serve` on this host's GPU, read from its code
    (`EngineArgs.get_batch_defaults` asks the GPU); None where vLLM is not installed or sees no
    GPU (it would then answer for a small one). Importing vLLM takes seconds: call it once."""
    version = installed_version()
    if version is None:
        return None
    try:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.platforms import current_platform
        from vllm.usage.usage_lib import UsageContext

        if current_platform.get_device_total_memory() <= 0:
            return None
        tokens, seqs = EngineArgs.get_batch_defaults(world_size=1)
        server = UsageContext.OPENAI_API_SERVER
        utilization = float(EngineArgs.gpu_memory_utilization)
        # None means "on where the model supports it", which every dense decoder does.
        caching = EngineArgs.enable_prefix_caching is not False
        return EngineDefaults(
            version=version,
            source="installed",
            max_num_seqs=int(seqs[server]),
            max_num_batched_tokens=int(tokens[server]),
            gpu_memory_utilization=utilization,
            enable_prefix_caching=caching,
        )
    except Exception:  # any vLLM that cannot answer: the caller falls back to the table
        return None


@dataclass(frozen=True, kw_only=True)
class ServeArgs:
    """One `vllm serve` command line. None leaves a flag out, so vLLM's default applies.

    Attributes:
        model: the HF id or local directory (`vllm serve MODEL`).
        host: the address the server binds.
        port: the port it listens on.
        tensor_parallel_size: GPUs the model is sharded over.
        max_num_seqs: most sequences in one engine step.
        max_num_batched_tokens: most tokens in one engine step.
        max_model_len: longest context.
        api_server_count: API-server processes (HTTP, tokenization, streaming) in front of
            the engine.
        extra: further flags, as given (the spec's `engine.args`).
    """

    model: str
    host: str | None = None
    port: int | None = None
    tensor_parallel_size: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    api_server_count: int | None = None
    extra: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The flags after the model: where it listens, the engine's knobs, then `extra`."""
        valued = self._valued()
        out = [part for flag, value in valued if value is not None for part in (flag, str(value))]
        return [*out, *self.extra]

    def knobs_left_to_vllm(self) -> list[tuple[str, str]]:
        """The knobs this command line leaves out so that vLLM's default applies, as (flag,
        field name): a server adopting it drops its own value of those the search tried."""
        return [
            (flag, _FIELD_OF_FLAG[flag])
            for flag, value in self._valued()
            if flag in _DEFAULTABLE and value is None
        ]

    def _valued(self) -> tuple[tuple[str, int | str | None], ...]:
        return (
            ("--host", self.host),
            ("--port", self.port),
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--max-num-seqs", self.max_num_seqs),
            ("--max-num-batched-tokens", self.max_num_batched_tokens),
            ("--max-model-len", self.max_model_len),
            ("--api-server-count", self.api_server_count),
        )

    def argv(self) -> list[str]:
        """`MODEL FLAGS...`: the arguments of `vllm serve` (and of the vLLM image's entrypoint)."""
        return [self.model, *self.flags()]

    def shell(self) -> str:
        """The command a user types: `vllm serve MODEL FLAGS...`."""
        return shlex.join(["vllm", "serve", *self.argv()])

    @classmethod
    def parse(cls, argv: Sequence[str]) -> ServeArgs:
        """The command line of an existing server: `[MODEL] FLAGS...` (as a Deployment's
        container args hold it), `--flag value` or `--flag=value`; flags this class does not
        name are kept in `extra`.

        Raises:
            ValueError: a flag this class names has no value or not an integer one.
        """
        values: dict[str, str] = {}
        extra: list[str] = []
        model = ""
        i = 0
        while i < len(argv):
            arg = argv[i]
            flag, eq, inline = arg.partition("=")
            field = _FIELD_OF_FLAG.get(_canonical(flag))
            if field is None:
                if not arg.startswith("-") and not model and not extra:
                    model = arg
                else:
                    extra.append(arg)
                i += 1
                continue
            if not eq and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
                raise ValueError(f"{flag} has no value")
            values[field] = inline if eq else argv[i + 1]
            i += 1 if eq else 2
        return cls(model=model, extra=tuple(extra), **_typed(values))


# Searched knobs that a point may leave to vLLM's default (the others it always sets).
_DEFAULTABLE = frozenset({"--max-num-batched-tokens", "--api-server-count"})

# The flags `ServeArgs` names, by spelling (`-tp` is vLLM's short form).
_FIELD_OF_FLAG = {
    "--host": "host",
    "--port": "port",
    "--tensor-parallel-size": "tensor_parallel_size",
    "-tp": "tensor_parallel_size",
    "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--max-model-len": "max_model_len",
    "--api-server-count": "api_server_count",
}


def named_flags(argv: Sequence[str]) -> list[tuple[str, str]]:
    """The flags of `argv` that `ServeArgs` has fields for (`--max-num-seqs`, `--port`, ...),
    each as spelled there with its field's name."""
    flags = [arg.split("=", 1)[0] for arg in argv]
    return [
        (flag, _FIELD_OF_FLAG[_canonical(flag)])
        for flag in flags
        if _canonical(flag) in _FIELD_OF_FLAG
    ]


def _canonical(flag: str) -> str:
    """vLLM's spelling of a long flag: its parser reads `--max_num_seqs` as `--max-num-seqs`."""
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def _typed(values: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, text in values.items():
        if field == "host":
            out[field] = text
            continue
        try:
            out[field] = int(text)
        except ValueError:
            flag = next(f for f, name in _FIELD_OF_FLAG.items() if name == field)
            raise ValueError(f"{flag} needs an integer, got {text!r}") from None
    return out


def vllm_command() -> list[str]:
    """The command that starts a vLLM server, up to and including `serve`.

    `JOULETUNE_VLLM_CMD` (split like a shell would) wins; then `vllm` on PATH; else vLLM's
    module entry point (a vLLM installed without its console script).
    """
    override = os.environ.get(ENV_COMMAND)
    if override:
        return shlex.split(override)
    if shutil.which("vllm"):
        return ["vllm", "serve"]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]


def _takes_value(flag: str) -> bool:
    return "=" not in flag and flag not in BOOLEAN_FLAGS


def merge_args(
    existing: Sequence[str], recommended: Sequence[str], *, drop: Collection[str] = ()
) -> list[str]:
    """`existing` without the flags `recommended` sets or `drop` names (as `--f v` or
    `--f=v`), then `recommended`: a container keeps its model, port and every other flag."""
    ours = {_canonical(a.split("=", 1)[0]) for a in [*recommended, *drop] if a.startswith("--")}
    kept: list[str] = []
    i = 0
    while i < len(existing):
        arg = existing[i]
        if _canonical(arg.split("=", 1)[0]) in ours:
            i += 2 if _takes_value(arg) and i + 1 < len(existing) else 1
            continue
        kept.append(arg)
        i += 1
    return [*kept, *recommended]


def split_flags(argv: Sequence[str], known: Collection[str]) -> tuple[list[str], list[str]]:
    """(`argv` without the flags not in `known` and their values, those flags and values).

    A flag's value is the next token unless the flag takes none (BOOLEAN_FLAGS, `--f=v`) or
    the next token is itself a flag; a negative number is a value, not a flag.
    """
    kept: list[str] = []
    other: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not _is_flag(arg) or arg.split("=", 1)[0] in known:
            kept.append(arg)
            i += 1
            continue
        other.append(arg)
        value = argv[i + 1] if i + 1 < len(argv) else None
        if _takes_value(arg) and value is not None and not _is_flag(value):
            other.append(value)
            i += 1
        i += 1
    return kept, other


def _is_flag(arg: str) -> bool:
    return arg.startswith("-") and len(arg) > 1 and not _is_number(arg)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

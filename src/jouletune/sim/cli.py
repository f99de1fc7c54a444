"""`jouletune sim-server`: a stand-in for `vllm serve` on simulated GPUs.

    jouletune sim-server [MODEL] [--model MODEL] [--host H] [--port P]
        [--max-num-seqs N] [--tensor-parallel-size TP] [--max-num-batched-tokens T]
        [--max-model-len L] [--served-model-name NAME] [--gpu-memory-utilization U]
        [--api-server-count N] [--gpu h100-80gb] [--gpu-profile PROFILE.json]
        [--power-limit W] [--tokenizer HF_ID_OR_DIR] [--node-gpus N] [--gpu-list-file PATH]
        [any other vllm serve flag, ignored]

Takes `vllm serve`'s flags so a tuner can pass one argument list to real vLLM and to the
simulator; flags the simulator does not model (`--load-format dummy`, `--enforce-eager`, ...)
are accepted and ignored. MODEL is a catalog name, a directory holding a Hugging Face
`config.json`, or a Hugging Face id whose config.json is fetched (never weights; `HF_TOKEN`
for gated repositories). `--tokenizer` counts prompt tokens as `vllm serve` would with that
tokenizer; without it the simulator counts words (its own vocabulary: the catalog's models
are gated or remote, and the simulator needs none of their weights). Defaults are vLLM's for
the simulated GPU (`jouletune.engine`): on
GPUs with at least 70 GiB that are not A100s, `--max-num-seqs 1024` and
`--max-num-batched-tokens 8192`; elsewhere 256 and 2048. `--gpu-profile` runs the GPU with
the parameters `jouletune calibrate` fitted to a real one (`jouletune.profile`) instead of
the built-in constants; its `gpu` names the catalog entry, so `--gpu` may be left out.

The engine runs on `--tensor-parallel-size` simulated GPUs. `--node-gpus N` simulates a node
with more: the engine takes the first of those CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES
leave visible, as vLLM would (`jouletune.gpu.VisibleDevices`; without them, the first ones),
the others idle, and `/sim/gpus` serves them all, as NVML shows a whole node. Without
`--node-gpus` the node is the engine's GPUs and the variables do not apply. `--gpu-list-file
PATH` writes the UUIDs of the engine's GPUs there before serving, as a trial pod's vLLM engine
container does for its exporter sidecar (`jouletune exporter --gpus-file`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from jouletune.contract import ENGINE_PORT
from jouletune.engine import engine_defaults, split_flags
from jouletune.gpu import VisibleDevices
from jouletune.gpu.simulated import GPU_CATALOG, GpuModel, SimulatedGpu, gpu_model
from jouletune.models import MODEL_CATALOG, ModelArch, model_arch
from jouletune.profile import GpuProfile, load_profile
from jouletune.sim._engine import EngineConfig
from jouletune.sim._perf import DEFAULT_PERF, PerfConstants, kv_cache_tokens
from jouletune.sim._profile import apply_profile
from jouletune.tokenizer import PromptTokenizer, load_tokenizer

__all__ = ["SimServerArgs", "build_config", "main", "parse_args"]

_log = logging.getLogger("jouletune.sim")
_EXIT_USAGE = 2
_DEFAULT_GPU = "h100-80gb"


@dataclass(frozen=True, kw_only=True)
class SimServerArgs:
    """The parsed command line."""

    model: str
    host: str
    port: int
    served_model_name: str
    gpu: str | None
    power_limit_w: float | None
    tensor_parallel_size: int
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    max_model_len: int | None
    gpu_memory_utilization: float | None = None
    enable_prefix_caching: bool | None = None
    tokenizer: str | None = None
    gpu_profile: str | None = None
    node_gpus: int | None = None
    api_server_count: int = 1
    gpu_list_file: str | None = None
    ignored: tuple[str, ...] = ()


class _ArgError(Exception):
    """Bad command line; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(message)


def _parser() -> _Parser:
    p = _Parser(prog="jouletune sim-server", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "model_positional",
        nargs="?",
        metavar="MODEL",
        help="like `vllm serve MODEL`: a catalog name, a directory holding config.json, or a HF id",
    )
    p.add_argument("--model", help="the same as MODEL")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=ENGINE_PORT)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument(
        "--gpu", default=None, help=f"one of {', '.join(GPU_CATALOG)} (default: {_DEFAULT_GPU})"
    )
    p.add_argument(
        "--gpu-profile",
        default=None,
        help="a GPU profile from `jouletune calibrate`: its parameters replace the built-in ones",
    )
    p.add_argument("--power-limit", type=float, default=None, help="initial power limit, W")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument(
        "--node-gpus",
        type=int,
        default=None,
        help="GPUs of the simulated node (default: the tensor parallelism); the engine uses"
        " the first visible ones (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES)",
    )
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument(
        "--api-server-count",
        type=int,
        default=1,
        help="API-server processes sharing the requests (vLLM's default with one engine: 1)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="HF id, directory or tokenizer.json counting prompt tokens (default: words)",
    )
    # Unset flags take vLLM's defaults for the simulated GPU (jouletune.engine).
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reuse cached KV blocks of shared prompt prefixes (vLLM's default: on)",
    )
    p.add_argument(
        "--gpu-list-file",
        default=None,
        metavar="PATH",
        help="write the UUIDs of the engine's GPUs to PATH before serving",
    )
    return p


def parse_args(argv: list[str]) -> SimServerArgs:
    """Parse `argv`; raises ValueError with a one-line message on bad input."""
    parser = _parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    kept, ignored = split_flags(argv, known)
    try:
        ns = parser.parse_args(kept)
    except _ArgError as err:
        raise ValueError(str(err)) from None
    model = ns.model or ns.model_positional
    if ns.model and ns.model_positional and ns.model != ns.model_positional:
        raise ValueError(f"two models given: {ns.model_positional!r} and --model {ns.model!r}")
    if not model:
        raise ValueError(
            f"no model given (positional MODEL or --model); the catalog has: "
            f"{', '.join(sorted(MODEL_CATALOG))}"
        )
    return SimServerArgs(
        model=model,
        host=ns.host,
        port=ns.port,
        served_model_name=(ns.served_model_name or [model])[0],
        gpu=ns.gpu,
        power_limit_w=ns.power_limit,
        tensor_parallel_size=ns.tensor_parallel_size,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        max_model_len=ns.max_model_len,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        enable_prefix_caching=ns.enable_prefix_caching,
        tokenizer=ns.tokenizer,
        gpu_profile=ns.gpu_profile,
        node_gpus=ns.node_gpus,
        api_server_count=ns.api_server_count,
        gpu_list_file=ns.gpu_list_file,
        ignored=tuple(ignored),
    )


def build_config(args: SimServerArgs) -> EngineConfig:
    """Check the arguments against the catalogs and memory; raises ValueError (one line)."""
    arch = model_arch(args.model)
    gpu, perf = _gpu_and_perf(args)
    tp = args.tensor_parallel_size
    if tp < 1 or tp > 16:
        raise ValueError(f"--tensor-parallel-size must be 1-16, got {tp}")
    if args.node_gpus is not None and not tp <= args.node_gpus <= 16:
        raise ValueError(
            f"--node-gpus must be from --tensor-parallel-size ({tp}) to 16, got {args.node_gpus}"
        )
    if arch.num_attention_heads % tp:
        raise ValueError(
            f"{arch.num_attention_heads} attention heads of {arch.hf_id} are not divisible by "
            f"--tensor-parallel-size {tp}"
        )
    defaults = engine_defaults(gpu_name=gpu.name, gpu_memory_bytes=gpu.memory_bytes)
    util = args.gpu_memory_utilization
    if util is None:
        util = defaults.gpu_memory_utilization
    if not 0 < util <= 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {util}")
    max_num_seqs = args.max_num_seqs or defaults.max_num_seqs
    max_model_len = args.max_model_len or arch.max_position_embeddings
    max_batched = args.max_num_batched_tokens or defaults.max_num_batched_tokens
    if max_num_seqs < 1:
        raise ValueError(f"--max-num-seqs must be positive, got {max_num_seqs}")
    if args.api_server_count < 1:
        raise ValueError(f"--api-server-count must be positive, got {args.api_server_count}")
    if max_model_len < 1 or max_model_len > arch.max_position_embeddings:
        raise ValueError(
            f"--max-model-len {max_model_len} is outside 1-{arch.max_position_embeddings} "
            f"for {arch.hf_id}"
        )
    if max_batched < max_num_seqs:
        raise ValueError(
            f"--max-num-batched-tokens ({max_batched}) must be >= --max-num-seqs ({max_num_seqs})"
        )
    if args.power_limit_w is not None:
        rng = gpu.power_limits
        if not rng.min_w <= args.power_limit_w <= rng.max_w:
            raise ValueError(
                f"--power-limit {args.power_limit_w:g} W is outside {gpu.name}'s range "
                f"{rng.min_w:g}-{rng.max_w:g} W"
            )
    _check_memory(arch, gpu, tp, util, max_model_len, perf)
    return EngineConfig(
        arch=arch,
        gpu=gpu,
        tensor_parallel_size=tp,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_batched,
        max_model_len=max_model_len,
        gpu_memory_utilization=util,
        perf=perf,
        enable_prefix_caching=(
            defaults.enable_prefix_caching
            if args.enable_prefix_caching is None
            else args.enable_prefix_caching
        ),
        api_server_count=args.api_server_count,
    )


def _gpu_and_perf(args: SimServerArgs) -> tuple[GpuModel, PerfConstants]:
    """The GPU model and engine constants: the catalog's, or a GPU profile's over them."""
    if args.gpu_profile is None:
        return gpu_model(args.gpu or _DEFAULT_GPU), DEFAULT_PERF
    profile = load_profile(Path(args.gpu_profile))
    if args.gpu is not None and args.gpu.lower() != profile.gpu:
        raise ValueError(
            f"--gpu {args.gpu} contradicts --gpu-profile {args.gpu_profile}, which is for "
            f"{profile.gpu}"
        )
    return apply_profile(gpu_model(profile.gpu), DEFAULT_PERF, profile.parameters)


def _check_memory(
    arch: ModelArch, gpu: GpuModel, tp: int, util: float, max_model_len: int, perf: PerfConstants
) -> None:
    tokens = kv_cache_tokens(arch=arch, gpu=gpu, tp=tp, gpu_memory_utilization=util, perf=perf)
    if tokens <= 0:
        raise ValueError(
            f"{arch.hf_id} ({arch.weight_bytes / 1e9:.1f} GB of {arch.weights.name} weights) does "
            f"not fit on {tp} x {gpu.key} at --gpu-memory-utilization {util:g}; raise "
            "--tensor-parallel-size"
        )
    if tokens < max_model_len:
        raise ValueError(
            f"the model's max seq len ({max_model_len}) is larger than the maximum number of "
            f"tokens that can be stored in KV cache ({tokens}); lower --max-model-len"
        )


def main(argv: list[str]) -> int:
    """Run the sim-server until SIGTERM or Ctrl-C; return the exit code."""
    try:
        args = parse_args(argv)
        config = build_config(args)
        node, engine_gpus = place_gpus(args, config)
        tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    except ValueError as err:  # TokenizerError is one
        print(f"jouletune sim-server: error: {err}", file=sys.stderr)
        return _EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.ignored:
        _log.info("ignoring vLLM flags the simulator does not model: %s", " ".join(args.ignored))
    if args.gpu_profile is not None:
        _log_profile(load_profile(Path(args.gpu_profile)), args.gpu_profile)
    if len(node) > len(engine_gpus):
        _log.info(
            "a node of %d simulated GPUs; the engine runs on %s",
            len(node),
            ", ".join(f"{g.index} ({g.uuid})" for g in engine_gpus),
        )
    return _serve(args, config, tokenizer, node, engine_gpus)


def _log_profile(profile: GpuProfile, path: str) -> None:
    _log.info(
        "GPU profile %s: %s, fitted %s; power limits %s; SM clock locks %s",
        path,
        profile.gpu,
        ", ".join(profile.fitted()) or "nothing",
        "measured"
        if profile.power_limits_measured
        else "never measured (cap savings are predictions)",
        "measured"
        if profile.clock_locks_measured
        else "never measured (clock-lock savings are predictions)",
    )


def place_gpus(
    args: SimServerArgs, config: EngineConfig
) -> tuple[list[SimulatedGpu], list[SimulatedGpu]]:
    """The node's simulated GPUs, and the engine's among them (loaded, capped as asked).

    Raises:
        ValueError: the visible-device variables leave the engine too few GPUs.
    """
    tp = config.tensor_parallel_size
    count = tp if args.node_gpus is None else args.node_gpus
    weights_per_gpu = config.arch.weight_bytes // tp
    used = int(config.gpu.memory_bytes * config.gpu_memory_utilization)
    node = [
        SimulatedGpu(model=config.gpu, index=i, memory_used_bytes=max(used, weights_per_gpu))
        for i in range(count)
    ]
    if args.node_gpus is None:
        chosen = list(range(tp))  # the engine's own GPUs: the shell's variables do not apply
    else:
        chosen = VisibleDevices.from_env().engine_gpus({g.index: g.uuid for g in node}, tp)
    engine_gpus = [node[i] for i in chosen]
    # Only the engine's are loaded: no process holds the others, which draw unloaded idle power.
    for gpu in engine_gpus:
        gpu.set_loaded(True)
        if args.power_limit_w is not None:
            gpu.set_power_limit_w(args.power_limit_w)
    return node, engine_gpus


def _serve(
    args: SimServerArgs,
    config: EngineConfig,
    tokenizer: PromptTokenizer | None,
    node: list[SimulatedGpu],
    gpus: list[SimulatedGpu],
) -> int:
    # Imported here so `--help` and argument errors stay fast.
    from aiohttp import web

    from jouletune.sim._engine import Engine
    from jouletune.sim._server import SimServer

    if args.gpu_list_file is not None:
        try:
            _write_gpu_list(args.gpu_list_file, gpus)
        except OSError as err:
            print(f"jouletune sim-server: error: --gpu-list-file: {err}", file=sys.stderr)
            return 1
    server = SimServer(
        config=config,
        served_model_name=args.served_model_name,
        model_path=args.model,
        gpus=gpus,
        idle_gpus=[g for g in node if g not in gpus],
        tokenizer=tokenizer,
    )
    engine: Engine = server.engine
    _log.info(
        "sim-server: %s on %d x %s, max_num_seqs=%d max_num_batched_tokens=%d "
        "max_model_len=%d, KV cache %d tokens; listening on http://%s:%d",
        config.arch.hf_id,
        config.tensor_parallel_size,
        config.gpu.key,
        config.max_num_seqs,
        config.max_num_batched_tokens,
        config.max_model_len,
        engine.num_blocks * 16,
        args.host,
        args.port,
    )
    try:
        web.run_app(server.app(), host=args.host, port=args.port, print=None, access_log=None)
    except OSError as err:
        print(
            f"jouletune sim-server: error: cannot listen on {args.host}:{args.port}: "
            f"{err.strerror}",
            file=sys.stderr,
        )
        return 1
    return 0


def _write_gpu_list(path: str, gpus: list[SimulatedGpu]) -> None:
    """The engine's GPUs, one UUID a line; renamed into place, so a reader never sees half."""
    partial = f"{path}.tmp"
    with open(partial, "w") as f:
        f.writelines(f"{gpu.uuid}\n" for gpu in gpus)
    os.replace(partial, path)

"""jouletune.engine: everything jouletune knows about the serving engine (vLLM), in one place.

    args = ServeArgs(model="meta-llama/Llama-3.1-8B-Instruct", max_num_seqs=64, port=8000)
    argv = [*vllm_command(), *args.argv()]          # what a runner starts
    defaults = installed_defaults() or engine_defaults(gpu_name="NVIDIA H100 80GB HBM3",
                                                       gpu_memory_bytes=80 << 30)

Flag spellings, which flags take no value, the engine's defaults for the installed version and
GPU, the version jouletune was validated against and its image: the local runner, the
sim-server, the operator's trial pods and the adoption patch all take them from here.
"""

from jouletune.engine._vllm import (
    BOOLEAN_FLAGS,
    IMAGE,
    VALIDATED_VERSION,
    EngineDefaults,
    ServeArgs,
    engine_defaults,
    installed_defaults,
    installed_version,
    merge_args,
    split_flags,
    vllm_command,
)

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

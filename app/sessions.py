"""onnxruntime sessions: which providers, and the one way every model file of a bundle is opened.

The detector and each embedder run one after the other for every photo, each in its own
session with its own intra-op thread pool. onnxruntime's default lets those threads spin for a
while after a run; on a CPU host the spinning pool of one session then holds the cores the next
session needs (measured in bench/RESULTS.md: detector → embedder 3-4× slower on a busy 2-core
host). So spinning is off unless asked for; it changes nothing on the GPU providers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from app.manifest import BundleError

__all__ = ["default_workers", "open_session", "resolve_providers"]

# Short names a settings file may use, and the order in which providers are preferred.
_PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# TensorRT is not chosen by default: its builds list it as available even where the TensorRT
# libraries are missing, and it compiles an engine per input shape (minutes) on first use.
_DEFAULT_PREFERENCE = ("CUDAExecutionProvider", "CPUExecutionProvider")


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The onnxruntime providers to use: `requested` (short or full names) or the best available.

    CPU is always appended as the fallback. A requested provider this onnxruntime build lacks is
    an error naming it, so a GPU setting never silently runs on the CPU.
    """
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in _DEFAULT_PREFERENCE if p in available]
    chosen: list[str] = []
    for name in requested:
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise BundleError(
                f"onnxruntime provider {name!r} is not available here "
                f"(available: {', '.join(available)})"
            )
        if full not in chosen:
            chosen.append(full)
    # TensorRT hands the nodes it cannot build to the next provider: let that be CUDA.
    cuda = "CUDAExecutionProvider"
    if "TensorrtExecutionProvider" in chosen and cuda in available and cuda not in chosen:
        chosen.append(cuda)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def default_workers(providers: Sequence[str]) -> int:
    """How many copies of the models serve when the operator does not say: two on the CPU
    provider alone, one where an accelerator runs them.

    On the CPU, onnxruntime's intra-op threads hand every operator's work to each other, and a
    batch's Python preprocessing leaves them idle; two copies, each running its own batch,
    fill those gaps (bench/RESULTS.md: 1.3-1.6x the images/s of one copy at batch 4 on two
    cores, the lone photo as fast as before). On a GPU a second copy doubles its memory and
    engine builds for an overlap not yet measured there.
    """
    return 2 if list(providers) == ["CPUExecutionProvider"] else 1


def open_session(
    path: Path, providers: Sequence[str] | None = None, *, spinning: bool = False
) -> ort.InferenceSession:
    """An onnxruntime session for a model file; an unreadable file is a BundleError naming it.

    `spinning`: let intra-op threads busy-wait between runs (onnxruntime's default), which only
    pays on a CPU host that runs nothing else, one session at a time.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise to users
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=resolve_providers(providers)
        )
    except BundleError:
        raise
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise BundleError(f"{path} is not a model onnxruntime can load: {exc}") from exc

"""This machine's matmul FLOP rate and memory bandwidth, for the cost model's roofline.

The cost model prices a recomputation as ``max(FLOPs / flops_per_second, bytes / bytes_per_second)``
and sets the default plan's exchange rate between bytes and seconds from ``bytes_per_second``.
Without calibration those rates are round per-device guesses (``DEFAULT_RATES``).
``rematpass calibrate`` measures them and writes them to the rates file, where the cost model reads
them for that device type; the ``flops_per_second`` / ``bytes_per_second`` knobs (options,
``config.patch``, ``REMAT_*`` variables) still override the file.

    >>> from rematpass.calibrate import measure_rates
    >>> rates = measure_rates("cpu", seconds=0.5)
    >>> rates.flops_per_second > 0 and rates.bytes_per_second > 0
    True

The rates file is ``$REMAT_RATES_FILE`` when set, else ``$XDG_CONFIG_HOME/rematpass/rates.json``
(``~/.config/rematpass/rates.json``): one entry per device type.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import time
from dataclasses import asdict, dataclass

import torch

RATES_FILE_ENV = "REMAT_RATES_FILE"


# Default machine rates by device type: (FLOP/s, bytes/s). Deliberately round
# numbers; the knobs flops_per_second and bytes_per_second override them.
DEFAULT_RATES = {
    "cpu": (1.0e11, 1.0e10),
    "cuda": (1.0e14, 2.0e12),
}


@dataclass(frozen=True)
class Rates:
    device: str  # device type: "cpu" or "cuda"
    flops_per_second: float  # dense matmul, best of the trials
    bytes_per_second: float  # bytes read plus bytes written by a large copy, best of the trials
    dtype: str = "float32"  # the matmul's dtype
    threads: int = 0  # CPU threads torch used (0 on CUDA)
    device_name: str = ""
    measured_at: str = ""
    torch_version: str = ""


def rates_file() -> pathlib.Path:
    explicit = os.environ.get(RATES_FILE_ENV)
    if explicit:
        return pathlib.Path(explicit)
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return pathlib.Path(config_home) / "rematpass" / "rates.json"


def _read_file() -> dict:
    path = rates_file()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"rematpass: cannot read the rates file {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def load_rates(device: str) -> Rates | None:
    """The calibrated rates for a device type, or None when it was never calibrated."""
    entry = _read_file().get(device)
    if not isinstance(entry, dict):
        return None
    flops, moved = entry.get("flops_per_second"), entry.get("bytes_per_second")
    if not (isinstance(flops, (int, float)) and isinstance(moved, (int, float)) and flops > 0 and moved > 0):
        raise ValueError(f"rematpass: the rates file {rates_file()} has no positive rates for {device!r}: {entry}")
    known = Rates.__dataclass_fields__
    return Rates(**{k: v for k, v in entry.items() if k in known})


def rates_file_key() -> str:
    """What the calibrated rates contribute to a plan's cache key: the file's content."""
    return json.dumps(_read_file(), sort_keys=True)


def save_rates(rates: Rates) -> pathlib.Path:
    """Write ``rates`` for its device type into the rates file, keeping other devices' entries."""
    path = rates_file()
    data = _read_file()
    data[rates.device] = asdict(rates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def _best_seconds(run, sync, seconds: float, min_trials: int = 3) -> float:
    """The fastest of repeated timed calls, for about ``seconds`` (and at least ``min_trials``)."""
    run()
    sync()  # warm-up: allocation, kernel selection, thread pool start
    best, trials, started = float("inf"), 0, time.perf_counter()
    while trials < min_trials or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - begin)
        trials += 1
    return best


def measure_rates(device: str = "cpu", seconds: float = 10.0, dtype: torch.dtype | None = None) -> Rates:
    """Measure dense matmul FLOP/s and copy bandwidth on ``device`` in about ``seconds``.

    ``dtype`` is the matmul's (default float32 on CPU, bfloat16 on CUDA, what training runs in).
    """
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"rematpass calibrate: device must be 'cpu' or 'cuda', got {device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("rematpass calibrate: CUDA is not available on this machine")
    if seconds <= 0:
        raise ValueError(f"rematpass calibrate: seconds must be positive, got {seconds!r}")
    dtype = dtype or (torch.bfloat16 if device_type == "cuda" else torch.float32)
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    # Large enough to leave the caches and reach the steady rate, small enough for a few trials a second.
    n = 8192 if device_type == "cuda" else 1024
    copy_bytes = 2**30 if device_type == "cuda" else 2**28

    matmul_seconds = _time_matmul(n, device, dtype, sync, seconds / 2)
    copy_seconds = _time_copy(copy_bytes, device, sync, seconds / 2)

    name = torch.cuda.get_device_name(device) if device_type == "cuda" else _cpu_name()
    return Rates(
        device=device_type,
        flops_per_second=2 * n**3 / matmul_seconds,
        bytes_per_second=2 * copy_bytes / copy_seconds,
        dtype=str(dtype).removeprefix("torch."),
        threads=torch.get_num_threads() if device_type == "cpu" else 0,
        device_name=name,
        measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch_version=torch.__version__,
    )


def calibrate_and_report(device: str, seconds: float, *, write: bool = True, out=None) -> int:
    """``rematpass calibrate``: measure the rates, print them next to the defaults, write the rates file."""
    import sys

    out = out or sys.stdout
    rates = measure_rates(device, seconds)
    where = f"{rates.device_name}, {rates.threads} threads" if rates.device == "cpu" else rates.device_name
    print(f"{rates.device} ({where}), torch {rates.torch_version}:", file=out)
    print(f"  matmul ({rates.dtype}):  {rates.flops_per_second:.3g} FLOP/s", file=out)
    print(f"  copy bandwidth:   {rates.bytes_per_second:.3g} B/s (bytes read + written)", file=out)
    default_flops, default_bytes = DEFAULT_RATES[rates.device]
    print(
        f"  (uncalibrated defaults: {default_flops:.3g} FLOP/s, {default_bytes:.3g} B/s; measured / default: "
        f"{rates.flops_per_second / default_flops:.2g}x, {rates.bytes_per_second / default_bytes:.2g}x)",
        file=out,
    )
    if write:
        print(
            f"wrote {save_rates(rates)}: the cost model reads it for {rates.device} graphs; "
            "the flops_per_second / bytes_per_second knobs still override it",
            file=out,
        )
    else:
        print(
            f"not written; to use these rates: export REMAT_FLOPS_PER_SECOND={rates.flops_per_second:.4g} "
            f"REMAT_BYTES_PER_SECOND={rates.bytes_per_second:.4g} (or rerun without --no-write to write {rates_file()})",
            file=out,
        )
    return 0


def _time_matmul(n: int, device: str, dtype: torch.dtype, sync, seconds: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return _best_seconds(lambda: torch.mm(a, b), sync, seconds)


def _time_copy(nbytes: int, device: str, sync, seconds: float) -> float:
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    return _best_seconds(lambda: dst.copy_(src), sync, seconds)


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()

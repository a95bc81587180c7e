"""Power and energy per image while a benchmark runs, from the sensors the machine actually has.

- Desktop/server NVIDIA GPUs: NVML (``nvidia-ml-py``, module ``pynvml``). The GPU's energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, mJ since driver load, Volta and newer) gives the exact
  energy between start and stop; otherwise ``nvmlDeviceGetPowerUsage`` (mW) is sampled and
  integrated over time. Either way it is the GPU board alone, not the host.
- Jetson: ``tegrastats --interval MS``, whose lines carry the module's power rails as
  ``NAME current/average`` (``VDD_IN 4556mW/4556mW`` on Orin with JetPack 5 and 6, ``POM_5V_IN
  2954/2954`` on Nano with JetPack 4). The module input rail (``VDD_IN``, ``POM_5V_IN``) is used;
  boards without one (AGX Orin: ``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``, ...) report the
  sum of their rails. It is the whole module (CPU, GPU, memory), the number an edge budget needs.
- Anything else (a CPU run on a desktop, no NVML, a GPU without power readings): no source, and a
  ``reason`` saying why. Never a made-up number.

``with PowerMonitor(device) as monitor: run()`` then ``monitor.result(images)``. Torch-free;
``pynvml`` is imported only when a GPU is asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_INTERVAL_MS = 100
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # the module's input power, where the board measures it
# "NAME 4556mW/4556mW", "NAME 2954/2954" (mW implied) or "NAME 4.5W/3.2W"; the lookahead keeps
# "RAM 2147/7620MB" out.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+(?:\.\d+)?)(mW|W)?/(\d+(?:\.\d+)?)(?:mW|W)?(?![\w.])")


@dataclass(frozen=True)
class PowerReading:
    """What a ``PowerMonitor`` measured. ``source`` None means no sensor: every number is None and
    ``reason`` says why."""

    source: str | None  # "nvml", "tegrastats", or None
    mean_watts: float | None
    energy_joules: float | None
    joules_per_image: float | None
    samples: int
    reason: str  # what was measured (rail, GPU) or why nothing was

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """One tegrastats line -> ``{rail: current watts}`` (the instantaneous value, not the average)."""
    rails = {}
    for name, current, unit, _average in _RAIL.findall(line):
        rails[name] = float(current) if unit == "W" else float(current) / 1000.0
    return rails


def board_watts(rails: dict[str, float]) -> tuple[float, str] | None:
    """The module's input power and the rail(s) it came from; None when the line had no rails."""
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name], name
    if not rails:
        return None
    return sum(rails.values()), "+".join(sorted(rails))


def integrate(samples: list[tuple[float, float]], start: float, stop: float) -> float:
    """Joules from ``(time s, watts)`` samples over ``[start, stop]``: trapezoids between samples,
    the first and last value held to the edges."""
    if not samples or stop <= start:
        return 0.0
    points = sorted((min(max(t, start), stop), watts) for t, watts in samples)
    energy = points[0][1] * (points[0][0] - start) + points[-1][1] * (stop - points[-1][0])
    for (t0, w0), (t1, w1) in zip(points[:-1], points[1:], strict=True):
        energy += 0.5 * (w0 + w1) * (t1 - t0)
    return energy


def is_jetson() -> bool:
    """A Jetson (L4T) board: its release file or device-tree model says so."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        model = Path("/proc/device-tree/model").read_text(errors="ignore").lower()
    except OSError:
        return False
    return "jetson" in model or "orin" in model


def _nvml_index(device: str) -> int:
    """The NVML index of ``cuda[:N]``, through ``CUDA_VISIBLE_DEVICES`` when it lists indices."""
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if visible and all(part.isdigit() for part in visible) and index < len(visible):
        return int(visible[index])
    return index


def _nvml_handle(device: str) -> tuple[Any, Any, str]:
    """``(pynvml, handle, GPU name)``; raises with the reason when NVML cannot read power."""
    try:
        import pynvml
    except ImportError:
        raise RuntimeError("NVML is not installed (pip install nvidia-ml-py)") from None
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(device))
    pynvml.nvmlDeviceGetPowerUsage(handle)  # raises NVMLError_NotSupported where the GPU has no sensor
    name = pynvml.nvmlDeviceGetName(handle)
    return pynvml, handle, name.decode() if isinstance(name, bytes) else str(name)


def power_source(device: str) -> tuple[str | None, str]:
    """``(source, reason)`` for a run on ``device``: ``tegrastats`` on a Jetson (any device: the
    rail is the whole module), ``nvml`` for a desktop CUDA device, else ``(None, why not)``."""
    if is_jetson():
        if shutil.which("tegrastats") is None:
            return None, "Jetson without tegrastats on PATH (in a container, mount /usr/bin/tegrastats)"
        return "tegrastats", "Jetson module input power from tegrastats"
    if not device.startswith("cuda"):
        return None, f"no power sensor for device {device!r}: NVML measures NVIDIA GPUs and tegrastats Jetsons"
    try:
        _pynvml, _handle, name = _nvml_handle(device)
    except Exception as exc:  # NVMLError subclasses, ImportError, a bad index
        return None, f"no power reading from NVML for {device}: {exc}"
    return "nvml", f"GPU board power of {name} from NVML"


class _NvmlSampler:
    def __init__(self, device: str, interval_s: float) -> None:
        self.pynvml, self.handle, self.name = _nvml_handle(device)
        self.interval_s, self.samples = interval_s, []
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._run, daemon=True)
        self._energy_start = self._energy()
        self.energy_joules: float | None = None

    def _energy(self) -> float | None:
        try:
            return float(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) / 1000.0
        except Exception:  # pre-Volta GPUs: sample power instead
            return None

    def _run(self) -> None:
        while True:
            try:
                watts = float(self.pynvml.nvmlDeviceGetPowerUsage(self.handle)) / 1000.0
                self.samples.append((time.monotonic(), watts))
            except Exception:
                pass  # one failed read is a missing sample, not a zero
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        end = self._energy()
        if self._energy_start is not None and end is not None and end >= self._energy_start:
            self.energy_joules = end - self._energy_start


class _TegrastatsSampler:
    def __init__(self, interval_s: float) -> None:
        self.interval_s, self.samples, self.rails = interval_s, [], ""
        self.energy_joules: float | None = None
        command = ["tegrastats", "--interval", str(max(int(interval_s * 1000), 1))]
        if shutil.which("stdbuf"):  # tegrastats block-buffers into a pipe; ask for one line at a time
            command = ["stdbuf", "-oL", *command]
        self._command, self._process, self._thread = command, None, None

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            total = board_watts(parse_tegrastats_line(line))
            if total is not None:
                self.samples.append((time.monotonic(), total[0]))
                self.rails = total[1]

    def start(self) -> None:
        self._process = subprocess.Popen(self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)


class PowerMonitor:
    """Samples power in the background between ``__enter__`` and ``__exit__``.

    ``device`` is the benchmark's device (``cuda:0``, ``cpu``); ``result(images)`` gives the mean
    power, the energy and the energy per image of what ran inside the block."""

    def __init__(self, device: str, interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        if interval_ms < 1:
            raise ValueError(f"power sampling interval must be >= 1 ms, got {interval_ms}")
        self.device, self.interval_s = device, interval_ms / 1000.0
        self.source, self.reason = power_source(device)
        self._sampler: _NvmlSampler | _TegrastatsSampler | None = None
        self._start = self._stop = 0.0

    def __enter__(self) -> PowerMonitor:
        try:
            if self.source == "nvml":
                self._sampler = _NvmlSampler(self.device, self.interval_s)
            elif self.source == "tegrastats":
                self._sampler = _TegrastatsSampler(self.interval_s)
            if self._sampler is not None:
                self._sampler.start()
        except Exception as exc:  # the sensor went away between the probe and the start
            self.source, self.reason, self._sampler = None, f"{self.source} could not start: {exc}", None
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop = time.monotonic()
        if self._sampler is not None:
            self._sampler.stop()

    def result(self, images: int) -> PowerReading:
        """The reading for ``images`` images processed inside the block."""
        if images < 1:
            raise ValueError(f"energy per image needs at least one image, got {images}")
        sampler, duration = self._sampler, self._stop - self._start
        if self.source is None or sampler is None:
            return PowerReading(None, None, None, None, 0, self.reason)
        energy = sampler.energy_joules
        if energy is None:
            if not sampler.samples:
                reason = f"{self.source} gave no power sample in {duration:.2f} s (run longer or sample faster)"
                return PowerReading(self.source, None, None, None, 0, reason)
            energy = integrate(sampler.samples, self._start, self._stop)
        reason = self.reason
        if isinstance(sampler, _TegrastatsSampler) and sampler.rails:
            reason = f"{reason} ({sampler.rails})"
        elif isinstance(sampler, _NvmlSampler):
            how = "energy counter" if sampler.energy_joules is not None else "sampled power"
            reason = f"{reason} ({how})"
        mean = energy / duration if duration > 0 else None
        return PowerReading(self.source, mean, energy, energy / images, len(sampler.samples), reason)

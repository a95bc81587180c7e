"""Power sources: the tegrastats parser on real-format lines, the NVML and tegrastats samplers
against stand-ins, and the explicit no-source reading."""

import stat
import sys
from types import SimpleNamespace

import pytest

import clda_deploy.power as power
from clda_deploy.power import PowerMonitor, board_watts, integrate, parse_tegrastats_line, power_source

# Orin Nano, JetPack 6 (L4T 36.x): a timestamp first, GR3D_FREQ without the @[...] list.
JETPACK6_ORIN_NANO = (
    "07-14-2025 10:29:36 RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB (cached 1MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] GR3D_FREQ 0% cpu@47.687C soc2@46.718C "
    "soc0@47.468C gpu@48.625C tj@48.625C soc1@48.25C VDD_IN 4556mW/4556mW VDD_CPU_GPU_CV 483mW/483mW "
    "VDD_SOC 1451mW/1451mW"
)
# Orin NX, JetPack 5 (L4T 35.x): no timestamp, EMC_FREQ and GR3D_FREQ 0%@[305].
JETPACK5_ORIN_NX = (
    "RAM 1224/15368MB (lfb 8x4MB) SWAP 0/7684MB (cached 0MB) CPU [1%@729,0%@729,0%@729,0%@729,off,off,off,off] "
    "EMC_FREQ 0% GR3D_FREQ 0%@[305] CPU@43.5C GPU@42.5C tj@43.5C SOC0@42.906C SOC1@42.156C CV0@-256C "
    "VDD_IN 4319mW/4319mW VDD_CPU_GPU_CV 499mW/499mW VDD_SOC 1200mW/1200mW"
)
# AGX Orin, JetPack 5: no module input rail; the rails are summed.
JETPACK5_AGX_ORIN = (
    "RAM 4023/30536MB (lfb 5555x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@1190,0%@1190,off,off] EMC_FREQ 0%@2133 "
    "GR3D_FREQ 0%@[0,0] cpu@45.5C tj@45.5C VDD_GPU_SOC 3188mW/3188mW VDD_CPU_CV 797mW/797mW "
    "VIN_SYS_5V0 2420mW/2420mW NC 0mW/0mW VDDQ_VDD2_1V8AO 503mW/503mW NC 0mW/0mW"
)
# Nano, JetPack 4 (L4T 32.x): POM_ rails, milliwatts without a unit.
JETPACK4_NANO = (
    "RAM 1505/3964MB (lfb 6x4MB) SWAP 0/1982MB (cached 0MB) CPU [9%@1479,4%@1479,3%@1479,2%@1479] "
    "EMC_FREQ 3%@1600 GR3D_FREQ 0%@921 APE 25 PLL@35C CPU@37.5C PMIC@100C GPU@36C AO@44C thermal@36.75C "
    "POM_5V_IN 2954/2954 POM_5V_GPU 0/0 POM_5V_CPU 561/561"
)


def test_tegrastats_lines_of_each_jetpack():
    rails = parse_tegrastats_line(JETPACK6_ORIN_NANO)
    assert rails == {"VDD_IN": 4.556, "VDD_CPU_GPU_CV": 0.483, "VDD_SOC": 1.451}  # no RAM/SWAP "rails"
    assert board_watts(rails) == (4.556, "VDD_IN")
    assert board_watts(parse_tegrastats_line(JETPACK5_ORIN_NX)) == (4.319, "VDD_IN")
    assert board_watts(parse_tegrastats_line(JETPACK4_NANO)) == (2.954, "POM_5V_IN")
    watts, rails_used = board_watts(parse_tegrastats_line(JETPACK5_AGX_ORIN))
    assert watts == pytest.approx(3.188 + 0.797 + 2.420 + 0.503)
    assert rails_used == "NC+VDDQ_VDD2_1V8AO+VDD_CPU_CV+VDD_GPU_SOC+VIN_SYS_5V0"
    assert parse_tegrastats_line("VDD_IN 4.5W/3.2W") == {"VDD_IN": 4.5}  # the current value, not the average
    assert board_watts(parse_tegrastats_line("RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB")) is None


def test_integrate_holds_the_edges_and_uses_trapezoids():
    assert integrate([(1.0, 2.0), (3.0, 6.0)], start=0.0, stop=4.0) == pytest.approx(2.0 + 8.0 + 6.0)
    assert integrate([(5.0, 10.0)], start=4.0, stop=6.0) == pytest.approx(20.0)
    assert integrate([], 0.0, 1.0) == 0.0


@pytest.fixture
def desktop(monkeypatch):
    monkeypatch.setattr(power, "is_jetson", lambda: False)


def test_no_source_is_explicit(desktop, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # NVML not installed
    source, reason = power_source("cuda:0")
    assert source is None and "NVML is not installed" in reason
    with PowerMonitor("cpu") as monitor:
        pass
    reading = monitor.result(images=8)
    assert reading.source is None and reading.mean_watts is None and reading.energy_joules is None
    assert (
        reading.joules_per_image is None
        and reading.samples == 0
        and "no power sensor for device 'cpu'" in reading.reason
    )
    with pytest.raises(ValueError, match="at least one image"):
        monitor.result(images=0)


def test_this_machine_reports_no_source_with_a_reason():
    """On the CPU test machines (no Jetson, no NVML-readable GPU) nothing is measured, and says why."""
    if power.is_jetson():
        pytest.skip("a Jetson measures CPU runs too (module power from tegrastats)")
    with PowerMonitor("cpu") as monitor:
        pass
    reading = monitor.result(images=1)
    assert reading.source is None and reading.mean_watts is None and reading.reason.startswith("no power sensor")


def fake_nvml(energy_counter=True):
    state = {"energy_mj": 1_000_000, "reads": 0}

    def power_usage(handle):
        state["reads"] += 1
        return 250_000  # mW

    def energy(handle):
        if not energy_counter:
            raise RuntimeError("NVMLError_NotSupported")
        state["energy_mj"] += 50_000  # 50 J between the two reads
        return state["energy_mj"]

    return SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: ("gpu", index),
        nvmlDeviceGetPowerUsage=power_usage,
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetName=lambda handle: b"NVIDIA H200",
    )


def test_nvml_energy_counter(desktop, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert power_source("cuda") == ("nvml", "GPU board power of NVIDIA H200 from NVML")
    with PowerMonitor("cuda:0", interval_ms=5) as monitor:
        pass
    reading = monitor.result(images=10)
    assert reading.source == "nvml" and reading.energy_joules == pytest.approx(50.0)
    assert reading.joules_per_image == pytest.approx(5.0) and "energy counter" in reading.reason


def test_nvml_sampled_power_without_an_energy_counter(desktop, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(energy_counter=False))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert power._nvml_index("cuda:1") == 1 and power._nvml_index("cuda:0") == 3
    with PowerMonitor("cuda:0", interval_ms=5) as monitor:
        power.time.sleep(0.05)
    reading = monitor.result(images=2)
    assert reading.samples >= 2 and reading.mean_watts == pytest.approx(250.0, rel=0.05)
    assert reading.energy_joules == pytest.approx(250.0 * 0.05, rel=0.5) and "sampled power" in reading.reason


def test_tegrastats_subprocess(monkeypatch, tmp_path):
    """A stand-in ``tegrastats`` on PATH prints JetPack 6 lines; the monitor reads VDD_IN from it."""
    script = tmp_path / "tegrastats"
    script.write_text(f'#!/bin/sh\nwhile true; do echo "{JETPACK6_ORIN_NANO}"; sleep 0.01; done\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{power.os.environ['PATH']}")
    monkeypatch.setattr(power, "is_jetson", lambda: True)
    assert power_source("cuda:0")[0] == "tegrastats"
    with PowerMonitor("cuda:0", interval_ms=10) as monitor:
        deadline = power.time.monotonic() + 5
        while not monitor._sampler.samples and power.time.monotonic() < deadline:
            power.time.sleep(0.01)
        power.time.sleep(0.05)
    reading = monitor.result(images=4)
    assert reading.source == "tegrastats" and reading.samples >= 1 and "(VDD_IN)" in reading.reason
    assert reading.mean_watts == pytest.approx(4.556, rel=0.01)
    assert reading.joules_per_image == pytest.approx(reading.energy_joules / 4)


def test_jetson_without_tegrastats(monkeypatch, tmp_path):
    monkeypatch.setattr(power, "is_jetson", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert power_source("cuda:0") == (
        None,
        "Jetson without tegrastats on PATH (in a container, mount /usr/bin/tegrastats)",
    )

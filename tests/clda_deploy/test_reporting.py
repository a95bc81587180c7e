import json
from pathlib import Path

import pytest

from clda_deploy.checkpoint import atomic_write
from clda_deploy.reporting import (
    GATE_FAILED,
    Target,
    fmt,
    gate_status,
    machine_line,
    markdown_table,
    section_markers,
    write_outputs,
    write_table_section,
)


def test_markdown_and_atomic_outputs(tmp_path, capsys):
    assert fmt(None) == "–" and fmt(1.23456) == "1.23" and fmt(3) == "3" and fmt(True) == "yes"
    table = markdown_table(["a", "b"], [[1.0, None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.00 | – |"]

    def plot(path: Path) -> Path:
        return atomic_write(path, lambda tmp: tmp.write_bytes(b"\x89PNG"))

    paths = write_outputs(tmp_path / "out", "demo", {"value": 1}, "| x |", plot)
    assert json.loads(Path(paths["json"]).read_text())["files"]["plot"].endswith("demo.png")
    assert "| x |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo.json", "demo.md", "demo.png"]
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out" / "broken.json", lambda tmp: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert not list((tmp_path / "out").glob("*.tmp")) and not (tmp_path / "out" / "broken.json").exists()


def test_machine_line_flags_a_busy_machine():
    machine = {"cpu": "Test CPU", "usable_cores": 2, "load_average_1m": {"before": 1.5, "after": 2.0}}
    assert "busy" in machine_line(machine, 1) and machine_line(machine, 1).startswith("Test CPU, 1 thread;")
    assert "OMP_WAIT_POLICY=PASSIVE" in machine_line(machine, 1)
    machine["thread_env"] = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert machine_line(machine, 1).count("OMP_WAIT_POLICY") == 1, "the advice goes once the variable is set"
    machine["load_average_1m"]["before"] = 0.2
    assert "busy" not in machine_line(machine, 2) and "2 threads" in machine_line(machine, 2)


def test_targets_compare_report_and_gate():
    fast = Target("speedup", 2.5, 2.0, ">=")
    slow = Target("overhead", 20.0, 15.0, "<=", unit="%")
    assert fast.met and not slow.met and not Target("speedup", None, 2.0, ">=").met, "unmeasured never meets"
    assert slow.describe() == "overhead: 20% (target <= 15%: NOT met, informational)"
    assert slow.to_json() == {"name": "overhead", "value": 20.0, "threshold": 15.0, "comparison": "<=",
                              "kind": "informational", "met": False}  # fmt: skip
    assert gate_status([fast, slow]) == 0, "an informational target never changes the exit status"
    gate = Target("pixel agreement", 99.5, 99.9, ">=", gate=True)
    assert gate.kind == "gate" and gate_status([fast, gate]) == GATE_FAILED != 0
    assert gate_status([Target("pixel agreement", 99.95, 99.9, ">=", gate=True)]) == 0
    with pytest.raises(ValueError, match="comparison"):
        Target("x", 1.0, 1.0, "==")  # type: ignore[arg-type]


def test_table_sections_replace_only_their_own_text(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nhand-written\n")
    write_table_section(doc, "bench_demo", "## Demo table\n\n| a |\n|---|", "Benchmark: demo")
    write_table_section(doc, "bench_demo", "## Demo table\n\n| b |\n|---|", "Benchmark: demo")
    text = doc.read_text()
    start, end = section_markers("bench_demo")
    assert text == f"# Results\n\nhand-written\n\n## Demo table\n\n{start}\n| b |\n|---|\n{end}\n"

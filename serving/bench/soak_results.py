"""The bookkeeping and the record of ``python -m serving.bench http --soak``: status counts per
request kind, the latency of the valid requests, the server's RSS over time, and the one gate that
matters for a soak: no 5xx at all (a refusal the server meant is a 4xx, or a 503 under overload,
which a bounded rate below capacity must not cause)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clda_deploy.reporting import Bars, Target, draw_bars, figure, fmt, machine_line, markdown_table, save_figure
from clda_deploy.statistics import summarize_timings
from serving.bench.common import BenchRun, recorded_settings

KINDS = ("valid", "malformed", "oversize", "slow")
# What the server should answer each kind with; anything else is listed as unexpected.
EXPECTED = {"valid": {"200"}, "malformed": {"415", "422"}, "oversize": {"413"}, "slow": {"408"}}


@dataclass
class SoakRecorder:
    """Every answer by kind and status (``"200"``, ``"408"``, ``"error:ConnectError"``, ``"skipped"``
    for a request the client's own bounds did not send), the valid requests' latencies, RSS samples."""

    statuses: dict[str, Counter[str]] = field(default_factory=lambda: {kind: Counter() for kind in KINDS})
    valid_ms: list[float] = field(default_factory=list)
    rss: list[tuple[float, float | None]] = field(default_factory=list)  # (seconds since start, MiB)
    polled_peak_mib: float | None = None  # RssSampler's peak, polled far more often than the samples

    def record(self, kind: str, status: str, latency_ms: float) -> None:
        self.statuses[kind][status] += 1
        if kind == "valid" and status == "200":
            self.valid_ms.append(latency_ms)

    def sample(self, seconds: float, rss_mib: float | None) -> None:
        self.rss.append((round(seconds, 3), rss_mib))

    def server_errors(self) -> int:
        """5xx answers of any kind: the soak's gate."""
        return sum(count for counter in self.statuses.values() for status, count in counter.items()
                   if status.startswith("5"))  # fmt: skip

    def unexpected(self) -> dict[str, dict[str, int]]:
        """Per kind, the answers other than the expected ones (client errors and skips included)."""
        found = {kind: {status: count for status, count in sorted(counter.items()) if status not in EXPECTED[kind]}
                 for kind, counter in self.statuses.items()}  # fmt: skip
        return {kind: counts for kind, counts in found.items() if counts}

    def rss_summary(self) -> dict[str, float | None]:
        known = [mib for _, mib in self.rss if mib is not None]
        if not known:
            return {"start_mib": None, "peak_mib": None, "end_mib": None, "growth_mib": None}
        peak = max(known + ([self.polled_peak_mib] if self.polled_peak_mib is not None else []))
        return {"start_mib": known[0], "peak_mib": peak, "end_mib": known[-1], "growth_mib": known[-1] - known[0]}

    def to_json(self) -> dict[str, Any]:
        return {
            "statuses": {kind: dict(sorted(counter.items())) for kind, counter in self.statuses.items()},
            "sent": {kind: sum(counter.values()) for kind, counter in self.statuses.items()},
            "valid_latency_ms": summarize_timings(self.valid_ms) if self.valid_ms else None,
            "server_errors": self.server_errors(),
            "unexpected": self.unexpected(),
            "rss_mib": [{"t_s": seconds, "rss_mib": mib} for seconds, mib in self.rss],
            "rss": self.rss_summary(),
        }


@dataclass
class SoakResult:
    """One soak against one server; ``out_dir`` is where its files go (docs/results by default)."""

    settings: Any  # HttpSettings
    server: dict[str, Any]  # label, url, env, model
    image: dict[str, Any]  # size, bytes, source
    duration_s: float
    recorder: SoakRecorder
    out_dir: str
    stem: str = "soak"

    def targets(self) -> list[Target]:
        return [Target("5xx answers", float(self.recorder.server_errors()), 0.0, "<=", gate=True)]

    def to_json(self) -> dict[str, Any]:
        return {"settings": recorded_settings(self.settings), "server": self.server, "image": self.image,
                "duration_s": self.duration_s, **self.recorder.to_json()}  # fmt: skip

    def markdown(self, run: BenchRun) -> str:
        return render_markdown(self, run)

    def plot(self, path: Path) -> Path:
        fig, (left, right) = figure(2, width=6.0)
        points = [(seconds, mib) for seconds, mib in self.recorder.rss if mib is not None]
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        left.set(xlabel="seconds", ylabel="MiB", title="Server RSS during the soak")
        statuses = sorted({status for counter in self.recorder.statuses.values() for status in counter})
        series = {kind: [self.recorder.statuses[kind].get(s) for s in statuses] for kind in KINDS}
        draw_bars(right, Bars(statuses, series, "answers", "Answers by request kind"))
        return save_figure(path, fig)


def render_markdown(result: SoakResult, run: BenchRun) -> str:
    recorder, settings = result.recorder, result.settings
    latency = summarize_timings(recorder.valid_ms) if recorder.valid_ms else {}
    rows = []
    for kind in KINDS:
        counter = recorder.statuses[kind]
        answers = ", ".join(f"{status}: {count}" for status, count in sorted(counter.items())) or "–"
        expected = "/".join(sorted(EXPECTED[kind]))
        rows.append([kind, sum(counter.values()), expected, answers])
    rss = recorder.rss_summary()
    lines = [
        f"## Soak: {settings.soak_minutes:g} min at {settings.soak_rate:g} requests/s",
        "",
        f"`{run.command}`  ",
        f"{machine_line(run.machine, settings.threads)}; server: {result.server['label']}, model "
        f"{result.server['model']}; valid requests: {result.image['size'][0]}x{result.image['size'][1]} PNG",
        "",
        markdown_table(["kind", "sent", "expected", "answers"], rows),
        "",
        f"- valid requests: p50 {fmt(latency.get('p50'), 1)} ms, p99 {fmt(latency.get('p99'), 1)} ms "
        f"over {len(recorder.valid_ms)} answers",
        f"- server RSS: {fmt(rss['start_mib'], 0)} MiB at the start, peak {fmt(rss['peak_mib'], 0)}, "
        f"{fmt(rss['end_mib'], 0)} at the end ({len(recorder.rss)} samples every {settings.soak_sample_s:g} s)",
        f"- 5xx answers: {recorder.server_errors()} (the gate allows none: {result.targets()[0].verdict()}); "
        f"{result.duration_s:.1f} s from the first request to the last answer",
    ]
    if recorder.unexpected():
        lines.append(f"- unexpected answers: {recorder.unexpected()}")
    return "\n".join(lines)

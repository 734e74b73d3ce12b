"""Counters and histograms of the guard server, rendered in the Prometheus text exposition format (version 0.0.4).

Written by hand (a few dozen lines) rather than pulling in a client library. Thread-safe: one lock per metric.
"""

from __future__ import annotations

import math
import threading
from typing import Iterable

#: Seconds; spans a fake upstream (sub-millisecond) to a slow local model (minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Counter:
    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        key = tuple(str(v) for v in label_values)
        if len(key) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {key}")
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(tuple(str(v) for v in label_values), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, v in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.label_names, key)} {_num(v)}")
        return lines


class Gauge(Counter):
    def dec(self, *label_values: str) -> None:
        self.inc(*label_values, amount=-1.0)

    def render(self) -> list[str]:
        lines = super().render()
        lines[1] = f"# TYPE {self.name} gauge"
        if not self.label_names and len(lines) == 2:
            lines.append(f"{self.name} 0")
        return lines


class Histogram:
    def __init__(self, name: str, help: str, labels: Iterable[str] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple[str, ...], list] = {}  # key -> [bucket counts..., sum, count]
        self._lock = threading.Lock()

    def observe(self, value: float, *label_values: str) -> None:
        key = tuple(str(v) for v in label_values)
        if len(key) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {key}")
        with self._lock:
            d = self._data.setdefault(key, [0] * len(self.buckets) + [0.0, 0])
            for i, b in enumerate(self.buckets):
                if value <= b:
                    d[i] += 1
            d[-2] += value
            d[-1] += 1

    def count(self, *label_values: str) -> int:
        with self._lock:
            d = self._data.get(tuple(str(v) for v in label_values))
            return d[-1] if d else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for key, d in sorted(self._data.items()):
                for i, b in enumerate(self.buckets):
                    le = _labels(self.label_names, key, 'le="' + _num(b) + '"')
                    lines.append(f"{self.name}_bucket{le} {d[i]}")
                le = _labels(self.label_names, key, 'le="+Inf"')
                lines.append(f"{self.name}_bucket{le} {d[-1]}")
                lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(d[-2])}")
                lines.append(f"{self.name}_count{_labels(self.label_names, key)} {d[-1]}")
        return lines


class GuardMetrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.requests = Counter("cai_guard_requests_total", "Requests by endpoint and HTTP status.", ("endpoint", "status"))
        self.verdicts = Counter(
            "cai_guard_verdicts_total", "Principle verdicts by policy, principle and result.", ("policy", "principle", "violated")
        )
        self.actions = Counter("cai_guard_actions_total", "Guard outcomes (pass, revised, blocked, flagged) by policy.", ("policy", "action"))
        self.checker_errors = Counter(
            "cai_guard_checker_errors_total", "Checks whose checker failed, by policy and the fail mode applied.", ("policy", "mode")
        )
        self.upstream_errors = Counter("cai_guard_upstream_errors_total", "Upstream model failures by kind.", ("kind",))
        self.latency = Histogram("cai_guard_phase_latency_seconds", "Latency of each phase of a request.", ("phase",))
        self.in_flight = Gauge("cai_guard_requests_in_flight", "Guarded requests being handled now.")

    def render(self) -> str:
        out: list[str] = []
        for m in (self.requests, self.verdicts, self.actions, self.checker_errors, self.upstream_errors, self.latency, self.in_flight):
            out.extend(m.render())
        return "\n".join(out) + "\n"

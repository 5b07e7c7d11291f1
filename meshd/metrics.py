"""A small Prometheus text-format registry (exposition format 0.0.4).

meshd exports a few dozen series; a dependency on prometheus_client would bring a global
registry and thread locks for no gain in a single-threaded asyncio daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


@dataclass
class Metric:
    name: str
    help: str
    kind: str  # "counter" | "gauge"
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def clear(self) -> None:
        self.values.clear()


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def counter(self, name: str, help: str) -> Metric:
        return self._add(Metric(name, help, "counter"))

    def gauge(self, name: str, help: str) -> Metric:
        return self._add(Metric(name, help, "gauge"))

    def _add(self, metric: Metric) -> Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def on_collect(self, collector: Callable[[], None]) -> None:
        """`collector` refreshes gauges right before each scrape."""
        self._collectors.append(collector)

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        out: list[str] = []
        for m in self._metrics.values():
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            for labels, value in sorted(m.values.items()):
                text = repr(float(value)) if value != int(value) else str(int(value))
                out.append(f"{m.name}{_labels(labels)} {text}")
        return "\n".join(out) + "\n"

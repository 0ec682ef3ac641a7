"""Read a Prometheus /metrics page as a scraper would."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.threads import Repeater


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Every sample as `name{label="value",…}` -> value (labels sorted); each family served also
    appears as `#name` (0.0), with or without samples."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        samples[f"#{family.name}"] = 0.0
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.split("{")[0] == name and all(w in k for w in wanted))


class Scraper(Repeater):
    """Scrapes `url` every `interval` seconds on a thread while in its `with` block, as Prometheus
    would; keeps every answer (`seen`) and every failed scrape (`errors`)."""

    def __init__(self, url: str, interval: float = 0.15) -> None:
        self.url = url
        self.seen: list[dict[str, float]] = []
        super().__init__(interval, lambda _tick: self.seen.append(scrape(self.url)))

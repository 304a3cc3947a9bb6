"""Parses a Prometheus scrape with prometheus_client's own parsers (tests/metrics.rs).

Usage: parse_metrics.py text|openmetrics < scrape

Reads the exposition from stdin with `prometheus_client.parser.text_string_to_metric_families`
(the Prometheus text format 0.0.4) or `prometheus_client.openmetrics.parser` (OpenMetrics 1.0),
which raise on anything malformed, and prints one JSON array of samples:
{"family", "type", "unit", "name", "labels", "value"}.
"""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families


def main() -> None:
    parse = {"text": text_families, "openmetrics": openmetrics_families}[sys.argv[1]]
    samples = []
    for family in parse(sys.stdin.read()):
        for sample in family.samples:
            samples.append(
                {
                    "family": family.name,
                    "type": family.type,
                    "unit": family.unit,
                    "name": sample.name,
                    "labels": sample.labels,
                    "value": sample.value,
                }
            )
    print(json.dumps(samples))


if __name__ == "__main__":
    main()

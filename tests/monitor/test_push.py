"""The monitor's verdict as gauges, pushed to a real Pushgateway; a gateway that is down
is one line."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest

from pipeline.core.errors import PipelineError
from pipeline.monitor import push
from pipeline.testing import prometheus as prom
from pipeline.testing.project import free_port, require

OUT = {
    "model_name": "lenet5-mnist", "model_version": "4", "images": 500,
    "drift": {"detected": True, "share": 0.8},
    "accuracy": {"estimated": 0.61, "reference": 0.98, "labeled": None},
}  # fmt: skip


def test_the_verdict_as_gauges_named_by_prometheus_conventions():
    text = generate_latest(push.registry_of(OUT, max_drop_points=5, now=1234.0)).decode()
    labels = '{model="lenet5-mnist",version="4"}'
    for line in (
        f"monitor_drift_detected{labels} 1.0",
        f"monitor_drift_share_ratio{labels} 0.8",
        f"monitor_estimated_accuracy_ratio{labels} 0.61",
        f"monitor_reference_accuracy_ratio{labels} 0.98",
        f"monitor_accuracy_max_drop_ratio{labels} 0.05",
        f"monitor_images{labels} 500.0",
        f"monitor_last_run_timestamp_seconds{labels} 1234.0",
    ):
        assert line in text, line
    assert "monitor_labeled_accuracy_ratio" not in text  # no labels: no gauge, not a 0


@pytest.mark.slow
def test_a_push_replaces_the_models_last_verdict_on_a_real_pushgateway(tmp_path):
    require(*prom.BINARIES)
    with (gateway := prom.pushgateway(tmp_path)):
        push.push(gateway.url, OUT, 5)
        later = {**OUT, "model_version": "5", "drift": {"detected": False, "share": 0.1}}
        push.push(gateway.url, later, 5)
        with urllib.request.urlopen(f"{gateway.url}/metrics") as resp:
            text = resp.read().decode()
    drift = [line for line in text.splitlines() if line.startswith("monitor_drift_detected{")]
    assert len(drift) == 1 and 'version="5"' in drift[0] and drift[0].endswith(" 0")
    assert 'job="pipeline_monitor"' in drift[0] and 'model="lenet5-mnist"' in drift[0]


def test_a_pushgateway_that_is_down_is_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PipelineError) as e:
        push.push(url, OUT, 5)
    assert str(e.value).startswith(f"cannot push the verdict to the Pushgateway {url}: ")
    assert "\n" not in str(e.value)

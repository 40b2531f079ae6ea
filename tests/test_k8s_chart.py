"""The Helm chart: lint, offline schemas and a server-side dry run on a real kube-apiserver; each check
shown to fail on what it must catch; KEDA's trigger measures the lag `streams lag` reports.

The API server (etcd + kube-apiserver, no scheduler or kubelet) is started once for this module, in a
namespace that enforces the restricted Pod Security profile, with the KEDA CRDs applied.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streams.dev import kube
from streams.dev.process import ServiceError
from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
from tests.harness import ROOT, Isolated
from tests.helpers import run
from tests.reference import orders

FULL = ROOT / "k8s" / "ci" / "full-values.yaml"
pytestmark = pytest.mark.xdist_group("k8s")


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    server = kube.ApiServer(tmp_path_factory.mktemp("kube"))
    took = server.up()
    server.prepare()
    print(f"\n[kube-apiserver] https://127.0.0.1:{server.port} ready in {took:.1f}s")
    try:
        yield server
    finally:
        server.down()


def _dump(docs: list[dict]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def _find(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


@pytest.mark.parametrize("values", [[], [FULL]], ids=["defaults", "everything-on"])
def test_lint_schemas_and_server_dry_run_pass(api_server, values: list[Path]) -> None:
    lint = kube.lint(values)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = kube.render(values)
    assert kube.validate_offline(kube.documents(text)) == []
    dry = api_server.dry_run(text)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "StatefulSet" not in dry.stderr and "Warning" not in dry.stderr


def test_committed_manifests_are_the_chart_with_default_values() -> None:
    committed = (ROOT / "k8s" / "manifests" / "streams.yaml").read_text()
    assert committed.split("\n", 2)[2] == kube.render(), "run `make k8s-manifests` after changing the chart"


def test_a_value_that_breaks_the_schema_fails_with_its_path() -> None:
    with pytest.raises(ServiceError) as err:
        kube.render(sets=["relay.replicas=9", "worker.replicas=two", "settings.STREAMS_DATABASE_URL=postgresql://x"])
    text = str(err.value)
    assert "/relay/replicas" in text and "maximum: got 9, want 4" in text
    assert "/worker/replicas" in text and "invalid propertyName 'STREAMS_DATABASE_URL'" in text
    with pytest.raises(ServiceError, match=r"keda.maxReplicaCount \(13\) is above app.partitions \(12\)"):
        kube.render([FULL], sets=["keda.maxReplicaCount=13"])


def test_a_pod_running_as_root_is_refused_by_the_api_server(api_server) -> None:
    docs = kube.documents(kube.render())
    worker = _find(docs, "StatefulSet")
    pod = worker["spec"]["template"]["spec"]
    pod["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    pod["containers"][0]["securityContext"].update(runAsNonRoot=False, allowPrivilegeEscalation=True)
    assert kube.validate_offline(docs) == [], "valid Kubernetes: only the Pod Security profile forbids it"
    dry = api_server.dry_run(_dump(docs))
    assert dry.returncode != 0
    # for a workload (not a bare Pod) the profile answers with a warning, which --warnings-as-errors refuses
    assert 'would violate PodSecurity "restricted:latest"' in dry.stderr, dry.stderr
    assert "runAsUser=0" in dry.stderr and "allowPrivilegeEscalation != false" in dry.stderr


def test_a_scaled_object_with_an_unknown_field_fails_both_checks(api_server) -> None:
    docs = kube.documents(kube.render([FULL]))
    scaled = _find(docs, "ScaledObject")
    scaled["spec"]["triggers"][0]["lagTreshold"] = "10"  # a typo of a trigger field
    scaled["spec"]["maxReplicaCount"] = "12"
    errors = kube.validate_offline(docs)
    assert any("'lagTreshold' was unexpected" in e for e in errors), errors
    assert any("maxReplicaCount: '12' is not of type 'integer'" in e for e in errors), errors
    dry = api_server.dry_run(_dump(docs))
    assert dry.returncode != 0 and "lagTreshold" in dry.stderr, dry.stderr


def test_keda_scales_on_the_lag_streams_lag_reports_for_the_deployed_app(isolated: Isolated) -> None:
    """App id, prefix and topics come from the chart's values alone: the worker's ConfigMap and the
    ScaledObject's triggers are rendered from them, and both name the same group and topics."""
    prefix = isolated.settings.topic_prefix
    docs = kube.documents(kube.render(sets=[f"app.id={isolated.settings.app_id}", f"app.topicPrefix={prefix}",
                                            "keda.enabled=true"]))
    config = _find(docs, "ConfigMap")["data"]
    triggers = _find(docs, "ScaledObject")["spec"]["triggers"]
    groups = {t["metadata"]["consumerGroup"] for t in triggers}
    topics = [t["metadata"]["topic"] for t in triggers]
    assert groups == {config["STREAMS_APP_ID"]} and topics == [f"{prefix}orders.order-placed"]

    # the app the worker pods run, with the ConfigMap's settings, reads exactly those topics in that group
    env = {**os.environ, **{k: v for k, v in config.items() if k != "STREAMS_KAFKA_BOOTSTRAP"},
           "STREAMS_KAFKA_BOOTSTRAP": isolated.settings.bootstrap_servers, "STREAMS_HOME": isolated.env["STREAMS_HOME"]}
    env.pop("STREAMS_WORKER_DATA_DIR")
    probe = subprocess.run([sys.executable, "-c", (
        "import json; from streams.cli.base import load_app; import os\n"
        "app = load_app(os.environ['STREAMS_WORKER_APP'])\n"
        "print(json.dumps({'group': app.app_id, 'sources': sorted({h.topic.name for h in app.handlers.values()})}))")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen == {"group": config["STREAMS_APP_ID"], "sources": topics}

    # and the lag KEDA would read is the lag `streams lag` reports for that group and topic
    run(ensure_topics(isolated.settings, [TopicSpec(topics[0], 6)]))
    run(produce_envelopes(isolated.settings, topics[0], orders(37)))
    # a group that committed at the log start (as KEDA's offsetResetPolicy=earliest counts a new group)
    reset = subprocess.run([sys.executable, "-m", "streams.cli", "offsets", "reset", "--group", seen["group"],
                            "--topic", topics[0], "--to-earliest", "--execute"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    lag = subprocess.run([sys.executable, "-m", "streams.cli", "lag", "--group", seen["group"], "--topic", topics[0],
                          "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert lag.returncode == 0, lag.stderr
    report = json.loads(lag.stdout)
    assert report["total_lag"] == 37 and report["group"] == seen["group"]


def test_full_values_render_what_a_platform_team_expects() -> None:
    docs = kube.documents(kube.render([FULL]))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Secret", "ServiceAccount", "Service", "Service", "StatefulSet", "Deployment",
                            "PodDisruptionBudget", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication",
                            "NetworkPolicy"])
    config = _find(docs, "ConfigMap")["data"]
    secret = _find(docs, "Secret")["stringData"]
    assert "STREAMS_DATABASE_URL" in secret and "STREAMS_DATABASE_URL" not in config
    assert not any("secret" in str(v).lower() for v in config.values()), "no secret in the ConfigMap"
    worker = _find(docs, "StatefulSet")
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    assert worker["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    env = {e["name"]: e.get("value") for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STREAMS_WEB_ADVERTISED_HOST"] == "$(POD_NAME).streams-workers.$(POD_NAMESPACE).svc"
    scaled = _find(docs, "ScaledObject")["spec"]
    assert scaled["maxReplicaCount"] == 12 and [t["metadata"]["topic"] for t in scaled["triggers"]] == [
        "prod.orders.order-placed", "prod.points.grant-points"]
    auth = _find(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {a["parameter"] for a in auth} == {"sasl", "username", "password", "tls", "ca"}
    assert secret["keda-sasl"] == "scram_sha512"
    relay = _find(docs, "Deployment")["spec"]
    assert relay["replicas"] == 4
    assert copy.deepcopy(relay["template"]["spec"]["securityContext"])["runAsNonRoot"] is True

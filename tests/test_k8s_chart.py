"""The Helm chart: lint, offline schemas and a server-side dry run on a real kube-apiserver; each check
shown to fail on what it must catch; KEDA's trigger measures the lag `streams lag` reports; the web views
are closed by default (a generated token, a NetworkPolicy) and open only when asked, shown on a worker run
with the rendered environment.

The API server (etcd + kube-apiserver, no scheduler or kubelet) is started once for this module, in a
namespace that enforces the restricted Pod Security profile, with the KEDA CRDs applied.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

from streams.dev import kube
from streams.dev.process import ServiceError
from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
from streams.settings import Settings
from streams.web.http import PUBLIC_PATHS
from tests.harness import ROOT, Isolated
from tests.helpers import run, wait_for
from tests.reference import TOPIC, create_topics, orders, push_counts
from tests.web_helpers import http, web_worker

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
    assert committed.split("\n", 2)[2] == kube.manifests(), "run `make k8s-manifests` after changing the chart"


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
                            "NetworkPolicy", "ServiceMonitor"])
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


# --- the web views: closed by default, open only when asked -----------------------------------------------
POD = {"metadata.name": "streams-worker-0", "metadata.namespace": "streams"}
SECRET = "streams-secrets"
WORKER_LABELS = {"app.kubernetes.io/name": "streams", "app.kubernetes.io/instance": "streams",
                 "app.kubernetes.io/component": "worker"}


def _worker_env(docs: list[dict], also: list[dict] | None = None) -> dict[str, str]:
    return kube.container_env(docs, "StatefulSet", "worker", also=also, fields=POD)


def _worker(docs: list[dict]) -> dict:
    return _find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def _secret(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_default_values_close_the_web_views() -> None:
    """Defaults: the workers read a generated token from the chart's Secret through a required secretKeyRef,
    the probes use only paths the web layer answers without a token, and a NetworkPolicy admits only the
    workers themselves (table routing) and the monitoring namespace, on the web port only."""
    docs = kube.documents(kube.render())
    token = _worker_env(docs).get("STREAMS_WEB_TOKEN")
    assert token and re.fullmatch(r"[A-Za-z0-9]{40}", token), f"no generated web token: {token!r}"
    assert Settings(web_token=token).web_token is not None, "the worker accepts the token (auth on)"
    # `helm template` cannot read the Secret back (no cluster), so each rendering draws a new token: it is not a
    # constant of the chart (and is why k8s/manifests carries none)
    assert _worker_env(kube.documents(kube.render()))["STREAMS_WEB_TOKEN"] != token
    var = next(v for v in _worker(docs)["env"] if v["name"] == "STREAMS_WEB_TOKEN")
    assert var["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": "STREAMS_WEB_TOKEN"}}, \
        "required (not optional): a pod without the token does not start"

    worker = _worker(docs)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = worker[probe]["httpGet"]
        assert get["path"] in PUBLIC_PATHS and get["port"] == "web" and "httpHeaders" not in get, probe

    policy = _find(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == {k: v for k, v in WORKER_LABELS.items()
                                                    if k != "app.kubernetes.io/component"}
    assert policy["policyTypes"] == ["Ingress"]
    assert all(rule.get("from") for rule in policy["ingress"]), "a rule without `from` admits every pod"
    assert all(rule["ports"] == [{"port": 6066, "protocol": "TCP"}] for rule in policy["ingress"])
    peers = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert peers == [{"podSelector": {"matchLabels": WORKER_LABELS}},
                     {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_the_scraper_carries_the_token_the_workers_read() -> None:
    docs = kube.documents(kube.render(sets=["metrics.serviceMonitor.enabled=true"]))
    endpoint = _find(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics" and "/metrics" not in PUBLIC_PATHS
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": SECRET, "key": "STREAMS_WEB_TOKEN"}}
    assert "bearerTokenSecret" not in endpoint, "deprecated by the Prometheus Operator"
    secret = _find(docs, "Secret")["stringData"]
    assert secret["STREAMS_WEB_TOKEN"] == _worker_env(docs)["STREAMS_WEB_TOKEN"]
    # the ServiceMonitor is checked against the Prometheus Operator's CRD, strict like the others
    assert kube.validate_offline(docs) == []
    endpoint["authorization"]["credentails"] = endpoint["authorization"].pop("credentials")
    assert any("'credentails' was unexpected" in e for e in kube.validate_offline(docs))


def test_where_the_token_comes_from_and_opening_the_views_is_explicit() -> None:
    given = _worker_env(kube.documents(kube.render(sets=["secrets.webToken=a-token-from-values"])))
    assert given["STREAMS_WEB_TOKEN"] == "a-token-from-values"
    with pytest.raises(ServiceError, match="/secrets/webToken"):  # the worker would refuse it at start
        kube.render(sets=["secrets.webToken=short"])

    # an existing Secret: its key is required (no Secret rendered; a pod without the key does not start)
    docs = kube.documents(kube.render(sets=["secrets.existingSecret=shop-credentials"]))
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert _worker_env(docs, [_secret("shop-credentials", STREAMS_WEB_TOKEN="token-of-the-team")])[
        "STREAMS_WEB_TOKEN"] == "token-of-the-team"
    with pytest.raises(ServiceError, match="key 'STREAMS_WEB_TOKEN' not in Secret 'shop-credentials'"):
        _worker_env(docs, [_secret("shop-credentials", STREAMS_DATABASE_URL="postgresql://db/shop")])

    # the manifests for kubectl carry no token: the workers wait for it in the Secret
    manifests = kube.documents(kube.manifests())
    assert "STREAMS_WEB_TOKEN" not in (_find(manifests, "Secret").get("stringData") or {})
    with pytest.raises(ServiceError, match=f"key 'STREAMS_WEB_TOKEN' not in Secret '{SECRET}'"):
        _worker_env(manifests)
    assert _find(manifests, "NetworkPolicy")

    # opened: only by web.public=true, which sets an empty token (auth off even over a token in an existing Secret)
    docs = kube.documents(kube.render(sets=["web.public=true", "metrics.serviceMonitor.enabled=true",
                                            "secrets.existingSecret=shop-credentials"]))
    env = _worker_env(docs, [_secret("shop-credentials", STREAMS_WEB_TOKEN="token-of-the-team")])
    assert env["STREAMS_WEB_TOKEN"] == "" and Settings(web_token="").web_token is None
    assert "authorization" not in _find(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert _find(docs, "NetworkPolicy"), "who may connect is a separate choice (networkPolicy.enabled)"
    docs = kube.documents(kube.render(sets=["web.public=true"]))
    assert "STREAMS_WEB_TOKEN" not in (_find(docs, "Secret").get("stringData") or {})
    assert not [d for d in kube.documents(kube.render(sets=["networkPolicy.enabled=false"]))
                if d["kind"] == "NetworkPolicy"]
    with pytest.raises(ServiceError, match=r"web\.public=true serves the views without a token"):
        kube.render(sets=["web.public=true", "secrets.webToken=a-token-from-values"])


def test_the_generated_token_is_kept_across_upgrades(api_server) -> None:
    """`helm install` generates the token once; `helm upgrade` reads it back (lookup) instead of drawing anew."""
    ns = "streams-upgrade"
    api_server.namespace(ns)

    def installed_token() -> str:
        got = api_server.kubectl("get", "secret", "-n", ns, "shop-secrets", "-o", "json")
        assert got.returncode == 0, got.stderr
        return base64.b64decode(json.loads(got.stdout)["data"].get("STREAMS_WEB_TOKEN", "")).decode()

    got = api_server.helm("install", "shop", str(kube.CHART), "-n", ns)
    assert got.returncode == 0, got.stdout + got.stderr
    first = installed_token()
    assert re.fullmatch(r"[A-Za-z0-9]{40}", first), first
    got = api_server.helm("upgrade", "shop", str(kube.CHART), "-n", ns, "--set", "worker.replicas=3")
    assert got.returncode == 0, got.stdout + got.stderr
    replicas = api_server.kubectl("get", "statefulset", "-n", ns, "shop-worker", "-o", "jsonpath={.spec.replicas}")
    assert replicas.stdout == "3", "the upgrade was applied"
    assert installed_token() == first


def _run_rendered_worker(iso: Isolated, docs: list[dict], label: str) -> tuple[str, dict[str, str]]:
    """A reference-app worker run with the environment the chart gives a worker pod, over the harness's base
    (commit and session timings); where the servers are (broker, database, state folder) and where it listens
    (loopback, a free port) come from the test, nothing about the token."""
    rendered = _worker_env(docs)
    env = {**rendered, **{k: iso.env[k] for k in ("STREAMS_KAFKA_BOOTSTRAP", "STREAMS_DATABASE_URL", "STREAMS_HOME")}}
    env = {k: v for k, v in env.items() if k not in ("STREAMS_WEB_HOST", "STREAMS_WEB_PORT", "STREAMS_WORKER_DATA_DIR",
                                                    "STREAMS_WEB_ADVERTISED_HOST")}
    worker, url = web_worker(iso, label, **env)
    create_topics(iso)
    worker.start()
    worker.wait_ready()
    envelopes = orders(12)
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), envelopes))
    wait_for(lambda: push_counts(iso)[1] >= 12, 90, what="12 seller pushes")
    wait_for(lambda: http(f"{url}/health/ready").status == 200, 60, what="ready")
    return url, {"name": "order-push-status", "key": str(envelopes[0].key), "handler": "push_seller",
                 "message_id": str(envelopes[0].message_id), "topic": iso.topic(TOPIC)}


def _endpoints(url: str, token: str | None, args: dict[str, str]) -> list[str]:
    """Every endpoint the worker lists at /api, with its path arguments filled in."""
    listed = http(f"{url}/api", token=token)
    assert listed.status == 200, listed.text
    return [re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: urllib.parse.quote(args[m.group(1)], safe=""), path)
            for path in listed.json["endpoints"]]


def _render_for(iso: Isolated, *sets: str) -> list[dict]:
    return kube.documents(kube.render(sets=[f"app.id={iso.settings.app_id}", f"app.topicPrefix={iso.settings.topic_prefix}",
                                            "metrics.serviceMonitor.enabled=true", *sets]))


def test_a_worker_run_as_the_default_rendering_refuses_unauthenticated_views(isolated: Isolated) -> None:
    docs = _render_for(isolated)
    url, args = _run_rendered_worker(isolated, docs, "default-rendering")
    token = _worker_env(docs).get("STREAMS_WEB_TOKEN")
    probes = {_worker(docs)[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    for path in probes:  # what the kubelet asks, without a token
        assert http(url + path).status == 200, path
    refused = []
    for path in _endpoints(url, token, args):
        status = http(url + path).status
        if path in PUBLIC_PATHS:
            assert status == 200, path
        else:
            refused.append(path)
            assert status == 401, f"{path} answered {status} without a token"
    assert {"/api/tables/order-push-status/items", "/api/deadletters", "/metrics",
            f"/api/processed/push_seller/{args['message_id']}"} <= set(refused)
    # with the token the same views answer: the one the workers read, and the one the ServiceMonitor sends
    key = http(f"{url}/api/tables/order-push-status/keys/{args['key']}", token=token)
    assert key.status == 200 and key.json["value"]["message_id"] == args["message_id"], key.text
    processed = http(f"{url}/api/processed/push_seller/{args['message_id']}", token=token)
    assert processed.status == 200 and processed.json["outcome"] == "handled", processed.text
    credentials = _find(docs, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"]["credentials"]
    scrape_token = _find(docs, "Secret")["stringData"][credentials["key"]]
    scrape = http(f"{url}/metrics", token=scrape_token)
    assert scrape.status == 200 and "streams_handled_total" in scrape.text


def test_a_worker_run_as_the_opened_rendering_serves_the_views_without_a_token(isolated: Isolated) -> None:
    docs = _render_for(isolated, "web.public=true")
    url, args = _run_rendered_worker(isolated, docs, "public-rendering")
    items = http(f"{url}/api/tables/order-push-status/keys/{args['key']}")
    assert items.status == 200 and items.json["value"]["message_id"] == args["message_id"], items.text
    assert http(f"{url}/api/info").json["auth"] is False
    assert http(f"{url}/metrics").status == 200


def test_workers_are_static_members_named_by_their_pod_unless_turned_off() -> None:
    """Each worker pod joins its group under its own pod name (static membership, KIP-345): a pod restarted
    within the session timeout gets its partitions back without a rebalance (tests/test_static_membership.py)."""
    assert _worker_env(kube.documents(kube.render()))["STREAMS_GROUP_INSTANCE_ID"] == "streams-worker-0"
    off = _worker_env(kube.documents(kube.render(sets=["worker.staticMembership=false"])))
    assert "STREAMS_GROUP_INSTANCE_ID" not in off

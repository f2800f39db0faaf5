#!/usr/bin/env bash
# Validates what deploy/ ships: every manifest against the Kubernetes schemas in strict
# mode (PyPI kubernetes-validate; unknown fields are errors), `spoke inject` output of the
# example app (native form from 1.29, the first release with native sidecars; classic
# form on 1.27 too), and the Prometheus config with promtool.
# Usage: deploy/validate.sh   (SPOKE=path/to/spoke to choose the binary; default: cargo build)
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v kubernetes-validate >/dev/null 2>&1 || missing+=("kubernetes-validate (pip install kubernetes-validate)")
command -v promtool >/dev/null 2>&1 || missing+=("promtool (apt-get install prometheus)")
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=("python3 with PyYAML (comes with kubernetes-validate)")
if [ ${#missing[@]} -gt 0 ]; then
    printf 'validate.sh: missing: %s\n' "${missing[@]}" >&2
    exit 1
fi

if [ -z "${SPOKE:-}" ]; then
    (cd .. && cargo build -q)
    SPOKE=${CARGO_TARGET_DIR:-../target}/debug/spoke
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The latest schemas kubernetes-validate knows, and the oldest release Spoke supports.
versions=("" 1.29.0)
kv() {
    local v=$1; shift
    if [ -n "$v" ]; then
        kubernetes-validate --strict --quiet -k "$v" "$@"
    else
        kubernetes-validate --strict --quiet "$@"
    fi
}

manifests=(*.yaml example/*.yaml)
"$SPOKE" inject -f example/app.yaml > "$tmp/injected.yaml"
"$SPOKE" inject --classic -f example/app.yaml > "$tmp/injected-classic.yaml"
for v in "${versions[@]}"; do
    echo "kubernetes-validate --strict ${v:-(latest)}: ${manifests[*]}, the injected example app"
    kv "$v" "${manifests[@]}" "$tmp/injected.yaml" "$tmp/injected-classic.yaml"
done
echo "kubernetes-validate --strict 1.27.0: the example app injected with --classic"
kv 1.27.0 "$tmp/injected-classic.yaml"

# promtool. Debian's prometheus package is built without Kubernetes service discovery,
# so its promtool refuses every kubernetes_sd_configs block. Then the config is checked
# with those blocks swapped for static targets (relabelling, regexes and the rest are
# still checked by promtool), and the swapped blocks are checked here for their shape.
printf 'scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs: [ { role: pod } ]\n' > "$tmp/probe.yml"
if promtool check config "$tmp/probe.yml" >/dev/null 2>&1; then
    promtool check config prometheus/prometheus.yml
else
    echo "promtool here has no Kubernetes service discovery (Debian build): checking kubernetes_sd_configs by shape, the rest with promtool"
    python3 - prometheus/prometheus.yml "$tmp/prometheus.yml" <<'PY'
import sys, yaml
src, dst = sys.argv[1], sys.argv[2]
cfg = yaml.safe_load(open(src))
roles = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}
keys = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
        "tls_config", "authorization", "basic_auth", "oauth2", "follow_redirects", "enable_http2",
        "proxy_url", "no_proxy", "proxy_from_environment", "bearer_token", "bearer_token_file"}
for job in cfg.get("scrape_configs", []):
    sds = job.pop("kubernetes_sd_configs", None)
    if sds is None:
        continue
    for sd in sds:
        unknown = set(sd) - keys
        if unknown or sd.get("role") not in roles:
            sys.exit(f"{src}: job {job['job_name']}: bad kubernetes_sd_configs entry {sd}")
        ns = sd.get("namespaces", {})
        if set(ns) - {"names", "own_namespace"} or not isinstance(ns.get("names", []), list):
            sys.exit(f"{src}: job {job['job_name']}: bad namespaces {ns}")
    job["static_configs"] = [{"targets": ["placeholder.invalid:15020"]}]
yaml.safe_dump(cfg, open(dst, "w"))
PY
    promtool check config "$tmp/prometheus.yml"
fi
echo "deploy/validate.sh: ok"

//! What injection adds to a pod: the proxy container (as a native sidecar, or a classic
//! container), the `spoke redirect` init step that installs the capture rules, their
//! volumes, and the pod annotations (status, the proxy's config, Prometheus scraping).
//! `kinds` finds the pod template; this file only builds and places these parts.

use super::value::{obj, Value};
use super::Options;

/// The proxy's user id: the capture rules never redirect its own traffic.
pub const PROXY_UID: i64 = 1337;
pub const PROXY_NAME: &str = "spoke-proxy";
pub const INIT_NAME: &str = "spoke-init";
/// Marks an injected pod; an object carrying it is left alone, so injecting twice is a no-op.
pub const STATUS: &str = "spoke.dev/status";
/// The proxy's config file, read from this pod annotation through the downward API (so
/// every pod carries its own and nothing has to exist in its namespace beforehand).
pub const CONFIG_ANNOTATION: &str = "spoke.dev/proxy-config";
/// Extra ports for `spoke redirect` to leave alone (comma-separated), from the pod.
pub const EXCLUDE_INBOUND: &str = "spoke.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND: &str = "spoke.dev/exclude-outbound-ports";
/// The trust bundle: ConfigMap `spoke-root` (key `root.pem`) in the pod's namespace.
pub const ROOT_CONFIGMAP: &str = "spoke-root";
pub const TOKEN_AUDIENCE: &str = "spoke-control";
const CONFIG_DIR: &str = "/etc/spoke";
const TOKEN_DIR: &str = "/var/run/secrets/spoke";
const STATS_PORT: i64 = 15020;

/// The proxy config every injected pod gets (unless it brings its own annotation): the
/// capture listeners and stats address of the port table, everything else from `control`.
pub fn proxy_config(opts: &Options) -> String {
    format!(
        "admin: {{ address: \"127.0.0.1:15000\" }}\n\
         stats: {{ address: \"0.0.0.0:{STATS_PORT}\" }}\n\
         control:\n  address: \"{}\"\n  token_file: {TOKEN_DIR}/token\n  roots: {CONFIG_DIR}/root.pem\n\
         listeners:\n\
         \x20 - {{ name: outbound, address: \"127.0.0.1:15001\", capture: outbound }}\n\
         \x20 - {{ name: inbound, address: \"0.0.0.0:15006\", capture: inbound }}\n",
        opts.control
    )
}

fn s(v: &str) -> Value {
    Value::str(v)
}

fn strs(items: &[&str]) -> Value {
    Value::Seq(items.iter().map(|i| s(i)).collect())
}

fn field_env(name: &str, path: &str) -> Value {
    obj([
        ("name", s(name)),
        (
            "valueFrom",
            obj([("fieldRef", obj([("fieldPath", s(path))]))]),
        ),
    ])
}

fn probe(path: &str, period: i64, failures: i64) -> Value {
    obj([
        (
            "httpGet",
            obj([("path", s(path)), ("port", Value::Int(STATS_PORT))]),
        ),
        ("periodSeconds", Value::Int(period)),
        ("failureThreshold", Value::Int(failures)),
    ])
}

/// The proxy container. `native`: an init container with `restartPolicy: Always`
/// (Kubernetes 1.29+), which starts before the app and stops after it.
pub fn proxy_container(opts: &Options) -> Value {
    let mut c = obj([
        ("name", s(PROXY_NAME)),
        ("image", s(&opts.image)),
        (
            "args",
            // Kubernetes expands `$(VAR)` from the container's environment: each pod gets
            // its own node id from the one config.
            strs(&[
                "proxy",
                "--config",
                "/etc/spoke/proxy.yaml",
                "--node-id",
                "$(SPOKE_POD_NAME).$(SPOKE_POD_NAMESPACE)",
            ]),
        ),
    ]);
    if !opts.classic {
        c.set("restartPolicy", s("Always"));
    }
    let rest = [
        (
            "ports",
            Value::Seq(vec![obj([
                ("name", s("spoke-stats")),
                ("containerPort", Value::Int(STATS_PORT)),
                ("protocol", s("TCP")),
            ])]),
        ),
        (
            "env",
            Value::Seq(vec![
                field_env("SPOKE_POD_NAME", "metadata.name"),
                field_env("SPOKE_POD_NAMESPACE", "metadata.namespace"),
                field_env("SPOKE_SERVICE_ACCOUNT", "spec.serviceAccountName"),
                field_env("SPOKE_POD_IP", "status.podIP"),
            ]),
        ),
        // A native sidecar's startup probe holds the app's containers back until the proxy
        // is ready: before that, the capture rules would send the app's first connections
        // to a port nobody listens on yet.
        ("startupProbe", probe("/ready", 1, 600)),
        ("readinessProbe", probe("/ready", 2, 30)),
        ("livenessProbe", probe("/live", 10, 3)),
        (
            "resources",
            obj([
                ("requests", obj([("cpu", s("50m")), ("memory", s("32Mi"))])),
                ("limits", obj([("memory", s("256Mi"))])),
            ]),
        ),
        (
            "securityContext",
            obj([
                ("runAsUser", Value::Int(PROXY_UID)),
                ("runAsGroup", Value::Int(PROXY_UID)),
                ("runAsNonRoot", Value::Bool(true)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("capabilities", obj([("drop", strs(&["ALL"]))])),
            ]),
        ),
        (
            "volumeMounts",
            Value::Seq(vec![
                mount("spoke-config", CONFIG_DIR),
                mount("spoke-token", TOKEN_DIR),
            ]),
        ),
    ];
    for (k, v) in rest {
        c.set(k, v);
    }
    c
}

fn mount(name: &str, path: &str) -> Value {
    obj([
        ("name", s(name)),
        ("mountPath", s(path)),
        ("readOnly", Value::Bool(true)),
    ])
}

/// The init step: `spoke redirect` as root with NET_ADMIN and NET_RAW, the only part of an
/// injected pod with privileges; it exits once the rules are in. It runs the init image,
/// which has iptables (the proxy's distroless image has none).
pub fn init_container(opts: &Options, annotations: Option<&Value>) -> Value {
    let mut args = vec![
        "redirect".to_string(),
        "--inbound-capture-port".into(),
        "15006".into(),
        "--outbound-capture-port".into(),
        "15001".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
    ];
    // Kubelet probes and Prometheus reach the stats port directly, never through capture
    // (and the admin port stays out too); always given, so a pod's own list adds to these.
    let mut inbound = vec!["15000".to_string(), STATS_PORT.to_string()];
    let from = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    inbound.extend(from(EXCLUDE_INBOUND));
    args.extend(["--exclude-inbound-ports".into(), inbound.join(",")]);
    let outbound = from(EXCLUDE_OUTBOUND);
    if !outbound.is_empty() {
        args.extend(["--exclude-outbound-ports".into(), outbound.join(",")]);
    }
    obj([
        ("name", s(INIT_NAME)),
        ("image", s(&opts.init_image)),
        (
            "args",
            Value::Seq(args.into_iter().map(Value::String).collect()),
        ),
        (
            "resources",
            obj([
                ("requests", obj([("cpu", s("10m")), ("memory", s("16Mi"))])),
                ("limits", obj([("memory", s("64Mi"))])),
            ]),
        ),
        (
            "securityContext",
            obj([
                ("runAsUser", Value::Int(0)),
                ("runAsNonRoot", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                (
                    "capabilities",
                    obj([
                        ("add", strs(&["NET_ADMIN", "NET_RAW"])),
                        ("drop", strs(&["ALL"])),
                    ]),
                ),
            ]),
        ),
    ])
}

/// The proxy's volumes: its config (from the pod annotation) with the trust bundle, and a
/// projected ServiceAccount token for the control plane's audience.
pub fn volumes() -> [Value; 2] {
    let config = obj([
        ("name", s("spoke-config")),
        (
            "projected",
            obj([(
                "sources",
                Value::Seq(vec![
                    obj([(
                        "downwardAPI",
                        obj([(
                            "items",
                            Value::Seq(vec![obj([
                                ("path", s("proxy.yaml")),
                                (
                                    "fieldRef",
                                    obj([(
                                        "fieldPath",
                                        s(&format!("metadata.annotations['{CONFIG_ANNOTATION}']")),
                                    )]),
                                ),
                            ])]),
                        )]),
                    )]),
                    obj([(
                        "configMap",
                        obj([
                            ("name", s(ROOT_CONFIGMAP)),
                            (
                                "items",
                                Value::Seq(vec![obj([
                                    ("key", s("root.pem")),
                                    ("path", s("root.pem")),
                                ])]),
                            ),
                        ]),
                    )]),
                ]),
            )]),
        ),
    ]);
    let token = obj([
        ("name", s("spoke-token")),
        (
            "projected",
            obj([(
                "sources",
                Value::Seq(vec![obj([(
                    "serviceAccountToken",
                    obj([
                        ("audience", s(TOKEN_AUDIENCE)),
                        ("expirationSeconds", Value::Int(3600)),
                        ("path", s("token")),
                    ]),
                )])]),
            )]),
        ),
    ]);
    [config, token]
}

/// Annotations the pod template gets; existing values of the Prometheus and config keys
/// are kept (an app may scrape its own port; a pod may bring its own proxy config).
pub fn annotate(annotations: &mut Value, opts: &Options) {
    let defaults = [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", STATS_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
        (CONFIG_ANNOTATION, proxy_config(opts)),
    ];
    for (k, v) in defaults {
        if annotations.get(k).is_none() {
            annotations.set(k, Value::String(v));
        }
    }
    annotations.set(STATUS, s("injected"));
}

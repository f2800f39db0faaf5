//! `spoke inject` as a user runs it (the real binary, stdin or `-f`, stdout, exit codes):
//! the sidecar at the right pod template of every kind, native and classic forms, Lists
//! and multi-document streams, idempotence byte for byte, the opt-outs, pass-through of
//! everything else, key order, and bad input (document index, exit 2, empty stdout).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use serde_json::Value as Json;
use support::pki::TempDir;

const WORKLOADS: &str = include_str!("inject/workloads.yaml");

/// Runs `spoke inject ARGS` with `stdin`; (exit code, stdout, stderr).
fn inject(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut all = vec!["inject"];
    all.extend_from_slice(args);
    let out = support::spoke_with_stdin(&all, stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn ok(args: &[&str], stdin: &str) -> String {
    let (code, out, err) = inject(args, stdin);
    assert_eq!(code, 0, "{err}");
    out
}

fn docs(text: &str) -> Vec<Json> {
    serde_saphyr::from_multiple::<Json>(text)
        .unwrap()
        .into_iter()
        .collect()
}

fn names(list: &Json) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The pod template of an object, by kind.
fn template(obj: &Json) -> &Json {
    match obj["kind"].as_str().unwrap() {
        "Pod" => obj,
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"],
        _ => &obj["spec"]["template"],
    }
}

fn by_kind<'a>(all: &'a [Json], kind: &str) -> &'a Json {
    all.iter().find(|d| d["kind"] == kind).unwrap()
}

const KINDS: [&str; 7] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

#[test]
fn every_workload_kind_gets_a_native_sidecar_at_its_pod_template() {
    let before = docs(WORKLOADS);
    let after = docs(&ok(&[], WORKLOADS));
    assert_eq!(before.len(), after.len());
    for kind in KINDS {
        let (b, a) = (
            template(by_kind(&before, kind)),
            template(by_kind(&after, kind)),
        );
        let spec = &a["spec"];
        // The app's containers are untouched; the init step and the proxy come first
        // among the init containers, the pod's own init containers after them.
        assert_eq!(spec["containers"], b["spec"]["containers"], "{kind}");
        let mut want = vec!["spoke-init".to_string(), "spoke-proxy".to_string()];
        want.extend(names(&b["spec"]["initContainers"]));
        assert_eq!(names(&spec["initContainers"]), want, "{kind}");
        let proxy = &spec["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always", "{kind}");
        let ann = &a["metadata"]["annotations"];
        assert_eq!(ann["spoke.dev/status"], "injected", "{kind}");
        assert_eq!(ann["prometheus.io/scrape"], "true", "{kind}");
        assert_eq!(ann["prometheus.io/port"], "15020", "{kind}");
        assert_eq!(ann["prometheus.io/path"], "/metrics", "{kind}");
        assert_eq!(
            names(&spec["volumes"]),
            ["spoke-config", "spoke-token"],
            "{kind}"
        );
        // Nothing outside the pod template changed.
        let mut outside = by_kind(&after, kind).clone();
        let mut outside_before = by_kind(&before, kind).clone();
        for o in [&mut outside, &mut outside_before] {
            match kind {
                "Pod" => {
                    o["spec"] = Json::Null;
                    o["metadata"]["annotations"] = Json::Null;
                }
                "CronJob" => o["spec"]["jobTemplate"]["spec"]["template"] = Json::Null,
                _ => o["spec"]["template"] = Json::Null,
            }
        }
        assert_eq!(outside, outside_before, "{kind}");
    }
    // Annotations the template already had are kept.
    let dep = template(by_kind(&after, "Deployment"));
    assert_eq!(dep["metadata"]["annotations"]["team"], "payments");
}

#[test]
fn the_proxy_and_init_step_are_locked_down_as_specified() {
    let after = docs(&ok(&[], WORKLOADS));
    let spec = &template(by_kind(&after, "Deployment"))["spec"];
    let init = &spec["initContainers"][0];
    // The proxy runs the distroless image; the init step its -init sibling with iptables.
    assert_eq!(init["image"], "spoke-init:latest");
    assert_eq!(spec["initContainers"][1]["image"], "spoke:latest");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[..7],
        [
            "redirect",
            "--inbound-capture-port",
            "15006",
            "--outbound-capture-port",
            "15001",
            "--proxy-uid",
            "1337"
        ]
    );
    let isc = &init["securityContext"];
    assert_eq!(isc["runAsUser"], 0);
    assert_eq!(isc["runAsNonRoot"], false);
    assert_eq!(
        isc["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );

    let proxy = &spec["initContainers"][1];
    assert_eq!(
        proxy["args"],
        serde_json::json!([
            "proxy",
            "--config",
            "/etc/spoke/proxy.yaml",
            "--node-id",
            "$(SPOKE_POD_NAME).$(SPOKE_POD_NAMESPACE)"
        ])
    );
    let psc = &proxy["securityContext"];
    assert_eq!(psc["runAsUser"], 1337);
    assert_eq!(psc["runAsGroup"], 1337);
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["readOnlyRootFilesystem"], true);
    assert_eq!(psc["allowPrivilegeEscalation"], false);
    assert_eq!(psc["capabilities"], serde_json::json!({ "drop": ["ALL"] }));
    assert!(psc["capabilities"].get("add").is_none());
    assert_eq!(
        names(&proxy["env"]),
        [
            "SPOKE_POD_NAME",
            "SPOKE_POD_NAMESPACE",
            "SPOKE_SERVICE_ACCOUNT",
            "SPOKE_POD_IP"
        ]
    );
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15020);
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(proxy["ports"][0]["containerPort"], 15020);
    assert_eq!(proxy["ports"][0]["name"], "spoke-stats");
    assert!(proxy["resources"]["requests"]["memory"].is_string());
    assert!(proxy["resources"]["limits"]["memory"].is_string());
    // Only the init step runs as root.
    assert_eq!(spec["containers"][0].get("securityContext"), None);
    let token = &spec["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "spoke-control");
}

#[test]
fn the_proxy_config_it_carries_is_a_valid_spoke_config_with_the_capture_listeners() {
    let after = docs(&ok(&["--control-address", "cp.mesh.svc:15010"], WORKLOADS));
    let ann = &template(by_kind(&after, "Pod"))["metadata"]["annotations"];
    let text = ann["spoke.dev/proxy-config"].as_str().unwrap();
    let cfg = spoke::config::from_yaml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let dump = format!("{cfg:?}");
    assert!(
        dump.contains("127.0.0.1:15001") && dump.contains("0.0.0.0:15006"),
        "{dump}"
    );
    assert!(text.contains("address: \"cp.mesh.svc:15010\""), "{text}");
    assert!(
        text.contains("stats: { address: \"0.0.0.0:15020\" }"),
        "{text}"
    );
    assert!(
        text.contains("token_file: /var/run/secrets/spoke/token"),
        "{text}"
    );
}

#[test]
fn classic_form_puts_the_proxy_first_among_the_containers() {
    let before = docs(WORKLOADS);
    let after = docs(&ok(
        &["--classic", "--image", "reg.example/spoke:1.2"],
        WORKLOADS,
    ));
    for kind in KINDS {
        let (b, a) = (
            template(by_kind(&before, kind)),
            template(by_kind(&after, kind)),
        );
        let spec = &a["spec"];
        let mut want = vec!["spoke-proxy".to_string()];
        want.extend(names(&b["spec"]["containers"]));
        assert_eq!(names(&spec["containers"]), want, "{kind}");
        // The pod's own init containers run before any capture rule exists.
        let mut want_init = names(&b["spec"]["initContainers"]);
        want_init.push("spoke-init".into());
        assert_eq!(names(&spec["initContainers"]), want_init, "{kind}");
        assert!(
            spec["containers"][0].get("restartPolicy").is_none(),
            "{kind}"
        );
        assert_eq!(spec["containers"][0]["image"], "reg.example/spoke:1.2");
    }
}

#[test]
fn injecting_twice_changes_nothing_byte_for_byte() {
    for args in [&[][..], &["--classic"][..]] {
        let once = ok(args, WORKLOADS);
        assert_ne!(once, WORKLOADS);
        assert_eq!(ok(args, &once), once);
    }
}

#[test]
fn lists_and_streams_are_injected_item_by_item() {
    let list = "apiVersion: v1\nkind: List\nitems:\n\
        - apiVersion: v1\n  kind: Pod\n  metadata: { name: a }\n  spec: { containers: [ { name: a, image: x } ] }\n\
        - apiVersion: v1\n  kind: Service\n  metadata: { name: s }\n  spec: { ports: [ { port: 80 } ] }\n\
        - apiVersion: apps/v1\n  kind: Deployment\n  metadata: { name: d }\n  spec:\n    selector: { matchLabels: { a: b } }\n    template:\n      metadata: { labels: { a: b } }\n      spec: { containers: [ { name: d, image: x } ] }\n";
    let out = docs(&ok(&[], list));
    let items = out[0]["items"].as_array().unwrap();
    assert_eq!(
        names(&items[0]["spec"]["initContainers"]),
        ["spoke-init", "spoke-proxy"]
    );
    assert_eq!(items[1], docs(list)[0]["items"][1]);
    assert_eq!(
        names(&items[2]["spec"]["template"]["spec"]["initContainers"]),
        ["spoke-init", "spoke-proxy"]
    );
    // A stream: leading `---`, a blank document and a trailing comment are kept as they were.
    let stream = format!("---\n{list}---\n# nothing here\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: n }}\n");
    let out = ok(&[], &stream);
    assert!(
        out.starts_with("---\napiVersion: v1\nkind: List\n"),
        "{out}"
    );
    assert!(
        out.ends_with(
            "---\n# nothing here\n---\napiVersion: v1\nkind: Namespace\nmetadata: { name: n }\n"
        ),
        "{out}"
    );
    assert_eq!(docs(&out).len(), 2);
}

#[test]
fn opted_out_and_host_network_pods_pass_through_and_are_named_on_stderr() {
    let pod = |meta: &str, spec: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{ name: p{meta} }}\nspec: {{ {spec}containers: [ {{ name: a, image: x }} ] }}\n")
    };
    let deployment_template_off = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: d }\nspec:\n  selector: { matchLabels: { a: b } }\n  template:\n    metadata: { labels: { a: b }, annotations: { spoke.dev/inject: disabled } }\n    spec: { containers: [ { name: d, image: x } ] }\n";
    let cases = [
        (
            pod(", annotations: { spoke.dev/inject: disabled }", ""),
            "disabled",
        ),
        (
            pod(", labels: { spoke.dev/inject: disabled }", ""),
            "disabled",
        ),
        (pod("", "hostNetwork: true, "), "hostNetwork"),
        (deployment_template_off.to_string(), "disabled"),
    ];
    for (input, why) in cases {
        let (code, out, err) = inject(&[], &input);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, input);
        assert!(err.contains("document 1") && err.contains(why), "{err}");
    }
    // `hostNetwork: false` is injected as usual.
    let out = ok(&[], &pod("", "hostNetwork: false, "));
    assert!(out.contains("spoke-proxy"));
}

#[test]
fn other_kinds_pass_through_untouched() {
    let others = WORKLOADS
        .split("\n---\n")
        .skip(7)
        .collect::<Vec<_>>()
        .join("\n---\n");
    assert!(
        others.starts_with("apiVersion: v1\nkind: Service"),
        "{others}"
    );
    let (code, out, err) = inject(&[], &others);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, others);
    // In a mixed stream too: the Service text (with its comment) comes out as written.
    let out = ok(&[], WORKLOADS);
    assert!(out.contains("metadata:\n  name: web   # comments in untouched documents survive\n"));
}

#[test]
fn key_order_of_the_input_is_kept() {
    let input = "kind: Pod\napiVersion: v1\nspec:\n  containers: [ { image: x, name: a, ports: [ { protocol: TCP, containerPort: 80 } ] } ]\n  restartPolicy: Always\nmetadata:\n  name: p\n  labels: { z: \"1\", a: \"2\" }\n";
    let out = ok(&[], input);
    let v: spoke::inject::value::Value = serde_saphyr::from_str(&out).unwrap();
    let keys = |v: &spoke::inject::value::Value| match v {
        spoke::inject::value::Value::Map(p) => p.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        _ => vec![],
    };
    assert_eq!(keys(&v), ["kind", "apiVersion", "spec", "metadata"]);
    assert_eq!(
        keys(v.get("spec").unwrap())[..2],
        ["containers", "restartPolicy"]
    );
    let Some(spoke::inject::value::Value::Seq(c)) = v.at(&["spec", "containers"]) else {
        panic!("{out}")
    };
    assert_eq!(keys(&c[0]), ["image", "name", "ports"]);
    let meta = v.get("metadata").unwrap();
    assert_eq!(keys(meta), ["name", "labels", "annotations"]);
    assert_eq!(keys(meta.get("labels").unwrap()), ["z", "a"]);
    // Quoted strings that look like numbers stay strings.
    assert!(out.contains("z: \"1\""), "{out}");
}

#[test]
fn bad_input_names_the_document_exits_2_and_writes_nothing() {
    let good = "apiVersion: v1\nkind: Pod\nmetadata: { name: a }\nspec: { containers: [ { name: a, image: x } ] }\n";
    let cases = [
        (format!("{good}---\nkind: Pod\nspec: [ unclosed\n"), "document 2: line 7, column 7: invalid YAML: unclosed bracket"),
        (format!("{good}---\njust a string\n"), "document 2: not a Kubernetes object"),
        (format!("{good}---\n# blank\n---\n- a\n- b\n"), "document 2: not a Kubernetes object (a mapping with apiVersion and kind): found a list"),
        (format!("{good}---\nmetadata: {{ name: x }}\n"), "document 2: not a Kubernetes object: no `apiVersion`"),
        ("apiVersion: v1\nmetadata: {}\n".to_string(), "document 1: not a Kubernetes object: no `kind`"),
        ("apiVersion: v1\nkind: List\nitems: [ { apiVersion: v1, kind: Pod }, 3 ]\n".to_string(), "document 1: items[0]: Pod: no pod spec"),
        ("apiVersion: v1\nkind: List\nitems: [ 3 ]\n".to_string(), "document 1: items[0]: not a Kubernetes object"),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: d }\nspec: {}\n".to_string(), "document 1: Deployment d: no pod template at spec.template"),
        (format!("{good}---\na: 1\na: 2\nkind: X\napiVersion: v1\n"), "document 2: "),
    ];
    for (input, want) in cases {
        let (code, out, err) = inject(&[], &input);
        assert_eq!(code, 2, "{input}\n{err}");
        assert_eq!(out, "", "{input}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
}

#[test]
fn reads_stdin_dash_or_a_file() {
    let dir = TempDir::new("inject");
    let file = dir.0.join("app.yaml");
    std::fs::write(&file, WORKLOADS).unwrap();
    let from_stdin = ok(&[], WORKLOADS);
    assert_eq!(ok(&["-f", "-"], WORKLOADS), from_stdin);
    assert_eq!(ok(&["-f", file.to_str().unwrap()], ""), from_stdin);
    assert_eq!(ok(&["--filename", file.to_str().unwrap()], ""), from_stdin);
    let (code, out, err) = inject(&["-f", dir.0.join("missing.yaml").to_str().unwrap()], "");
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("cannot read"), "{err}");
    // SPOKE_IMAGE sets the image.
    let out = Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(["inject", "-f", file.to_str().unwrap()])
        .env("SPOKE_IMAGE", "reg.example/spoke:env")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("image: reg.example/spoke:env"));
}

/// The images of the injected proxy and init step of a one-Pod manifest.
fn images(args: &[&str], envs: &[(&str, &str)]) -> (String, String) {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: { name: p }\nspec: { containers: [ { name: a, image: x } ] }\n";
    let dir = TempDir::new("inject-images");
    let file = dir.0.join("pod.yaml");
    std::fs::write(&file, pod).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(["inject", "-f", file.to_str().unwrap()])
        .args(args)
        .env_remove("SPOKE_IMAGE")
        .env_remove("SPOKE_INIT_IMAGE")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {err}");
    let spec = &docs(&String::from_utf8(out.stdout).unwrap())[0]["spec"];
    let image = |c: &Json| c["image"].as_str().unwrap().to_string();
    let (init, proxy) = (&spec["initContainers"][0], &spec["initContainers"][1]);
    assert_eq!(
        (init["name"].as_str(), proxy["name"].as_str()),
        (Some("spoke-init"), Some("spoke-proxy"))
    );
    (image(proxy), image(init))
}

#[test]
fn the_init_step_runs_the_init_image_derived_from_the_proxy_image_by_default() {
    for (image, init) in [
        ("spoke:latest", "spoke-init:latest"),
        ("spoke", "spoke-init"),
        (
            "reg.example/mesh/spoke:1.2",
            "reg.example/mesh/spoke-init:1.2",
        ),
        ("reg.example:5000/spoke", "reg.example:5000/spoke-init"),
        (
            "reg.example:5000/mesh/spoke:1.2",
            "reg.example:5000/mesh/spoke-init:1.2",
        ),
    ] {
        assert_eq!(
            images(&["--image", image], &[]),
            (image.into(), init.into())
        );
        assert_eq!(
            images(&[], &[("SPOKE_IMAGE", image)]),
            (image.into(), init.into())
        );
    }
    // The classic form too: the init step is the same container.
    let (code, out, err) = inject(
        &["--classic", "--image", "reg.example:5000/spoke:2"],
        WORKLOADS,
    );
    assert_eq!(code, 0, "{err}");
    let all = docs(&out);
    for kind in KINDS {
        let spec = &template(by_kind(&all, kind))["spec"];
        let init = names(&spec["initContainers"])
            .iter()
            .position(|n| n == "spoke-init")
            .unwrap();
        assert_eq!(
            spec["initContainers"][init]["image"], "reg.example:5000/spoke-init:2",
            "{kind}"
        );
        assert_eq!(
            spec["containers"][0]["image"], "reg.example:5000/spoke:2",
            "{kind}"
        );
    }
}

#[test]
fn an_explicit_init_image_is_used_as_given() {
    let (pinned, init) = (
        "reg.example/spoke@sha256:0123456789abcdef",
        "other.example:5000/tools/redirect@sha256:fedcba9876543210",
    );
    assert_eq!(
        images(&["--image", pinned, "--init-image", init], &[]),
        (pinned.into(), init.into())
    );
    assert_eq!(
        images(
            &[],
            &[("SPOKE_IMAGE", "spoke:1"), ("SPOKE_INIT_IMAGE", "mine:7")]
        ),
        ("spoke:1".into(), "mine:7".into())
    );
    // Re-injecting with other images changes nothing: an injected object is left alone.
    let once = ok(&["--init-image", "a:1"], WORKLOADS);
    assert_eq!(ok(&["--init-image", "b:2", "--image", "c:3"], &once), once);
}

#[test]
fn a_digest_pinned_image_without_an_init_image_is_refused_and_nothing_written() {
    for image in [
        "spoke@sha256:0123456789abcdef",
        "reg.example:5000/spoke:1.2@sha256:0123456789abcdef",
    ] {
        let (code, out, err) = inject(&["--image", image], WORKLOADS);
        assert_eq!((code, out.as_str()), (2, ""), "{image}");
        assert!(
            err.contains("pinned by digest") && err.contains("--init-image"),
            "{err}"
        );
    }
}

#[test]
fn excluded_ports_come_from_the_pod_annotations() {
    let arg_after = |spec: &Json, flag: &str| -> Option<String> {
        let args = spec["initContainers"][0]["args"]
            .as_array()
            .unwrap()
            .clone();
        let i = args.iter().position(|a| a == flag)?;
        Some(args[i + 1].as_str().unwrap().to_string())
    };
    let plain = docs(&ok(&[], WORKLOADS));
    let spec = &template(by_kind(&plain, "Pod"))["spec"];
    assert_eq!(
        arg_after(spec, "--exclude-inbound-ports").as_deref(),
        Some("15000,15020")
    );
    assert_eq!(arg_after(spec, "--exclude-outbound-ports"), None);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    spoke.dev/exclude-inbound-ports: \"9090, 9091\"\n    spoke.dev/exclude-outbound-ports: \"5432\"\nspec: { containers: [ { name: a, image: x } ] }\n";
    let out = docs(&ok(&[], pod));
    assert_eq!(
        arg_after(&out[0]["spec"], "--exclude-inbound-ports").as_deref(),
        Some("15000,15020,9090,9091")
    );
    assert_eq!(
        arg_after(&out[0]["spec"], "--exclude-outbound-ports").as_deref(),
        Some("5432")
    );
}

#[test]
fn the_injected_node_id_flag_names_the_proxy() {
    let dir = TempDir::new("node-id");
    let (admin, stats) = (support::free_port(), support::free_port());
    let cfg = dir.0.join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "node: {{ id: from-file }}\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nstats: {{ address: \"127.0.0.1:{stats}\" }}\n\
             listeners: [ {{ name: l, address: \"127.0.0.1:0\", protocol: tcp, cluster: c }} ]\n\
             clusters: [ {{ name: c, endpoints: [ {{ address: \"127.0.0.1:9\" }} ] }} ]\n"
        ),
    )
    .unwrap();
    let _p = support::spawn_spoke(
        &[
            "proxy",
            "--config",
            cfg.to_str().unwrap(),
            "--node-id",
            "web-0.demo",
        ],
        false,
    );
    support::wait_ready(stats);
    let (code, body) = support::http_blocking(admin, "GET", "/server_info").unwrap();
    assert_eq!(code, 200);
    let info: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(info["node_id"], "web-0.demo", "{info}");
}

#[test]
fn a_changed_document_keeps_what_kubernetes_reads_in_it() {
    // Kubernetes reads YAML 1.1: `0644` is octal and `yes` a boolean. Their spelling may
    // change in a rewritten document, their value may not.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: { name: p }\nspec:\n  containers: [ { name: a, image: x, volumeMounts: [ { name: v, mountPath: /v, readOnly: yes } ] } ]\n  volumes: [ { name: v, secret: { secretName: s, defaultMode: 0644 } } ]\n  terminationGracePeriodSeconds: 0x1E\n";
    let out = docs(&ok(&[], pod));
    let spec = &out[0]["spec"];
    assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 0o644);
    assert_eq!(spec["containers"][0]["volumeMounts"][0]["readOnly"], true);
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
}

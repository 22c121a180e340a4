//! deploy/kubernetes/killpath.yaml: validated offline against the
//! Kubernetes schema (kubernetes-validate, strict: unknown fields refused),
//! then read back for what the issue asks of the DaemonSet, and its
//! commands parsed by the real binary.
use std::process::Command;

use serde_json::Value;

use super::{have, repo_file, run, text};
use crate::harness::BIN;

const MANIFEST: &str = "deploy/kubernetes/killpath.yaml";

/// `kubernetes-validate --strict FILE`.
fn validate(file: &std::path::Path) -> std::process::Output {
    run(Command::new("kubernetes-validate").args(["--strict", "--no-warn"]).arg(file))
}

/// The manifest's documents as JSON (PyYAML comes with kubernetes-validate).
fn documents(file: &std::path::Path) -> Vec<Value> {
    let prog = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = run(Command::new("python3").args(["-c", prog]).arg(file));
    assert!(out.status.success(), "reading {}: {}", file.display(), text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Whether `killpath ARGS --help` parses: clap refuses an unknown flag or
/// a bad value before it reaches --help.
fn parses(args: &[&str]) -> std::process::Output {
    run(Command::new(BIN).args(args).arg("--help"))
}

#[test]
fn service_daemonset_validates_against_the_kubernetes_schema() {
    if !have("kubernetes-validate", "--version") {
        return;
    }
    let file = repo_file(MANIFEST);
    let out = validate(&file);
    assert!(out.status.success(), "kubernetes-validate {MANIFEST}: {}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    for kind in ["namespace/killpath", "daemonset/killpath"] {
        assert!(said.contains(&format!("passed for resource {kind}")), "{kind} not validated: {}", text(&out));
    }
    // The validator is not vacuous: one misspelt field fails it.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let manifest = std::fs::read_to_string(&file).expect("manifest");
    std::fs::write(&bad, manifest.replacen("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:", 1)).expect("write");
    let out = validate(&bad);
    assert!(!out.status.success(), "a misspelt field passed: {}", text(&out));

    // What the issue asks of the DaemonSet.
    let docs = documents(&file);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "DaemonSet"]);
    let ds = &docs[1];
    assert_eq!(ds["metadata"]["namespace"], docs[0]["metadata"]["name"], "the DaemonSet is in the namespace");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "host pids: requests and self-protection name host pids");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(grace <= 10, "terminationGracePeriodSeconds {grace} is not short");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(c["livenessProbe"]["exec"]["command"].is_array(), "a liveness check: {c}");
    let host_path = |name: &str| {
        pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == name).and_then(|v| v["hostPath"]["path"].as_str()).map(str::to_owned)
    };
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mount_of = |host: &str| {
        mounts
            .iter()
            .find(|m| m["name"].as_str().and_then(host_path).as_deref() == Some(host))
            .unwrap_or_else(|| panic!("no mount of host path {host}: {mounts:?}"))
    };
    for host in ["/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel/btf", "/run/killpath", "/var/lib/killpath"] {
        assert_eq!(mount_of(host)["mountPath"], host, "{host} is mounted where the agent looks for it");
    }
    assert_eq!(mount_of("/sys/fs/bpf")["mountPropagation"], "Bidirectional", "bpffs pins must reach the host");
    assert_eq!(mount_of("/sys/kernel/btf")["readOnly"], true);

    // The agent's arguments and the probes' commands parse with the real binary.
    let strs = |v: &Value| v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_owned()).collect::<Vec<_>>();
    let args = strs(&c["args"]);
    assert_eq!(args[0], "agent");
    assert!(args.iter().any(|a| a == "--state-dir=/var/lib/killpath") && args.iter().any(|a| a == "--socket=/run/killpath/agent.sock"), "{args:?}");
    let out = parses(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "killpath {args:?}: {}", text(&out));
    for probe in ["livenessProbe", "startupProbe"] {
        let cmd = strs(&c[probe]["exec"]["command"]);
        assert_eq!(cmd[0], "/usr/local/bin/killpath", "{probe}");
        let out = parses(&cmd[1..].iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{probe} {cmd:?}: {}", text(&out));
    }
    assert!(!parses(&["agent", "--no-such-flag"]).status.success(), "the parse check is not vacuous");
}

/// The DaemonSet's liveness command, run against a real agent: it passes
/// while the agent serves and fails once the agent is dead.
#[test]
fn service_daemonset_liveness_probe_tracks_the_agent() {
    if !have("python3", "--version") {
        return;
    }
    let docs = documents(&repo_file(MANIFEST));
    let probe: Vec<String> = docs[1]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
        .as_array()
        .expect("liveness command")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect();
    let Some(mut agent) = crate::harness::Agent::start() else {
        return;
    };
    // The manifest's command with the test agent's socket in place of the node's.
    let socket = format!("--socket={}", agent.socket.display());
    let args: Vec<&str> = probe[1..].iter().map(|a| if a.starts_with("--socket=") { socket.as_str() } else { a.as_str() }).collect();
    assert!(args.iter().any(|a| *a == socket), "the liveness command names no --socket: {probe:?}");
    let live = |agent: &crate::harness::Agent| run(agent.cmd(&args).env_remove("KILLPATH_SOCKET"));
    let out = live(&agent);
    assert!(out.status.success(), "liveness against a serving agent: {}", text(&out));
    agent.kill9();
    let out = live(&agent);
    assert!(!out.status.success(), "liveness passed with the agent dead: {}", text(&out));
}

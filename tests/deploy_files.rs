//! The deployment files are valid and agree with the gateway (issue 7): `deploy/check.py`
//! parses every Kubernetes YAML document (PyYAML `safe_load_all`) and checks probes, security
//! context, volumes, Secrets and config paths, the systemd unit and the Dockerfile; the
//! ConfigMap's configuration is parsed by the gateway's own `Config`.
//! Needs python3 with PyYAML (`.ci/run` installs it); fails, does not skip, without them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn check_py(args: &[&str]) -> std::process::Output {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/check.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): these checks need python3 with PyYAML")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'yaml'"),
        "these checks need PyYAML: python3 -m pip install pyyaml"
    );
    out
}

#[test]
fn kubernetes_systemd_and_docker_files_pass_the_static_checks() {
    let out = check_py(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

/// Sections the lead's branch adds to `Config` ([admin] listener, [audit] writer). Before that
/// merge they are refused as unknown; the rest of the file must parse either way.
#[test]
fn the_configmap_configuration_parses_as_a_gateway_config() {
    let out = check_py(&["--print-config"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let config = ews_gateway::config::Config::parse(&text, "configmap.yaml").unwrap();
    assert_eq!(
        config.admin.address.map(|a| a.port()),
        Some(9090),
        "the probes' port"
    );
    assert!(
        config.audit.stdout,
        "audit lines go to the cluster's log pipeline"
    );
    assert_eq!(config.listen.address.port(), 8443);
    assert!(config.auth.lockout.redis_url_file.is_some());
    assert!(config.tenants[0].client_secret_file.is_some());
}

//! `ews-gateway check` against the simulator, with each misconfiguration injected: the real
//! binary must name the cause and the fix, and exit 0 only when everything works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use ews_gateway::sim::{self, SimConfig, SimHandle};

const BIN: &str = env!("CARGO_BIN_EXE_ews-gateway");

async fn start_sim() -> SimHandle {
    ews_gateway::tls::install_crypto_provider();
    sim::start(
        SimConfig::builtin().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

struct Run {
    ok_exit: bool,
    report: serde_json::Value,
    text: String,
}

async fn check(
    sim: &SimHandle,
    client_id: &str,
    secret: &str,
    tenant: &str,
    mailbox: Option<&str>,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[auth]\nusers_file = \"{users}\"\n[upstream]\news_url = \"{ews}\"\n[[tenant]]\ntenant_id = \"{tenant}\"\nclient_id = \"{client_id}\"\nclient_secret_file = \"{secret}\"\nauthority = \"{authority}\"\n",
            users = dir.path().join("users.toml").display(),
            ews = sim.ews_url(),
            secret = dir.path().join("secret").display(),
            authority = sim.authority_url(),
        ),
    )
    .unwrap();
    let mut args = vec![
        "check".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    if let Some(m) = mailbox {
        args.push("--mailbox".into());
        args.push(m.into());
    }
    let json = tokio::task::spawn_blocking({
        let args = args.clone();
        move || {
            Command::new(BIN)
                .args(&args)
                .arg("--json")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output().unwrap())
        .await
        .unwrap();
    Run {
        ok_exit: json.status.success(),
        report: serde_json::from_slice(&json.stdout).unwrap(),
        text: String::from_utf8_lossy(&text.stdout).into_owned(),
    }
}

const GW: &str = "11111111-2222-4333-8444-555555555555";
const GW_SECRET: &str = "sim-secret-gateway-app-0001";

#[tokio::test]
async fn a_working_setup_passes_and_prints_the_powershell() {
    let sim = start_sim().await;
    let run = check(
        &sim,
        GW,
        GW_SECRET,
        "contoso.example",
        Some("alice@contoso.example"),
    )
    .await;
    assert!(run.ok_exit, "{}", run.text);
    assert_eq!(run.report["ok"], true);
    assert_eq!(
        run.report["tenants"][0]["token"]["roles"][0],
        "full_access_as_app"
    );
    assert_eq!(run.report["mailbox"]["ok"], true);
    assert!(run.text.contains("EWSAllowedAppIDs"), "{}", run.text);
    assert!(run.text.contains(&format!(
        "Test-ServicePrincipalAuthorization -Identity {GW} -Resource alice@contoso.example"
    )));
    assert!(run.text.contains("RESULT: OK"));
}

#[tokio::test]
async fn each_misconfiguration_names_its_fix() {
    let sim = start_sim().await;
    let cases: [(&str, &str, &str, Option<&str>, &str); 6] = [
        (
            GW,
            "wrong-secret",
            "contoso.example",
            None,
            "not its Secret ID",
        ),
        (
            GW,
            GW_SECRET,
            "nosuch.example",
            None,
            "tenant was not found",
        ),
        (
            "99999999-2222-4333-8444-555555555555",
            GW_SECRET,
            "contoso.example",
            None,
            "not registered in this tenant",
        ),
        (
            "22222222-2222-4333-8444-555555555555",
            "sim-secret-not-allowlisted-0002",
            "contoso.example",
            Some("alice@contoso.example"),
            "allow-listed apps",
        ),
        (
            "33333333-2222-4333-8444-555555555555",
            "sim-secret-no-consent-0003",
            "contoso.example",
            Some("alice@contoso.example"),
            "grant admin consent",
        ),
        (
            "44444444-2222-4333-8444-555555555555",
            "sim-secret-rbac-scoped-0004",
            "contoso.example",
            Some("carol@contoso.example"),
            "management scope",
        ),
    ];
    for (client, secret, tenant, mailbox, fix) in cases {
        let run = check(&sim, client, secret, tenant, mailbox).await;
        assert!(!run.ok_exit, "{client}: must fail\n{}", run.text);
        assert_eq!(run.report["ok"], false);
        assert!(
            run.text.contains(fix),
            "{client}: expected fix {fix:?} in\n{}",
            run.text
        );
        assert!(run.text.contains("RESULT: FAILED"));
    }
}

#[tokio::test]
async fn an_unknown_mailbox_is_explained() {
    let sim = start_sim().await;
    let run = check(
        &sim,
        GW,
        GW_SECRET,
        "contoso.example",
        Some("ghost@contoso.example"),
    )
    .await;
    assert!(!run.ok_exit);
    assert_eq!(
        run.report["tenants"][0]["ok"], true,
        "the token itself is fine"
    );
    assert!(
        run.report["mailbox"]["detail"]
            .as_str()
            .unwrap()
            .contains("ErrorNonExistentMailbox")
    );
    assert!(
        run.text.contains("No mailbox has that address"),
        "{}",
        run.text
    );
}

#[tokio::test]
async fn the_rbac_only_token_is_explained_not_failed() {
    let sim = start_sim().await;
    let run = check(
        &sim,
        "44444444-2222-4333-8444-555555555555",
        "sim-secret-rbac-scoped-0004",
        "contoso.example",
        Some("alice@contoso.example"),
    )
    .await;
    assert!(run.ok_exit, "{}", run.text);
    assert!(run.text.contains("RBAC for Applications"), "{}", run.text);
}

#[tokio::test]
async fn a_certificate_only_organisation_is_explained() {
    let sim = start_sim().await;
    sim.set_faults(sim::faults::Faults {
        ews_require_certificate_auth: true,
        ..Default::default()
    });
    let run = check(
        &sim,
        GW,
        GW_SECRET,
        "contoso.example",
        Some("alice@contoso.example"),
    )
    .await;
    assert!(!run.ok_exit);
    assert!(run.text.contains("2000010"), "{}", run.text);
    assert!(
        run.text.contains("use a certificate credential"),
        "{}",
        run.text
    );
}

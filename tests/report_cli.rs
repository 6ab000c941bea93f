//! `ews-gateway report` through the real binary (issue 7): a synthetic audit file in the
//! documented JSON Lines format, with the expected figures computed here independently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ews-gateway");

/// (principal, mailbox, operation) -> (requests, errors, first ts, last ts)
type Groups = BTreeMap<(String, String, String), (u64, u64, String, String)>;

struct Expected {
    groups: Groups,
    malformed: u64,
}

/// Writes `n` request lines spread over principals/mailboxes/operations in November 2026,
/// mixed with lockout events, malformed lines and unauthenticated requests.
fn synthetic(path: &std::path::Path, n: u64) -> Expected {
    use std::io::Write;
    let principals = [
        "scanner@contoso.example",
        "archiver@contoso.example",
        "davmail-alice@contoso.example",
    ];
    let mailboxes = [
        "alice@contoso.example",
        "bob@contoso.example",
        "sales@contoso.example",
    ];
    let operations = ["FindItem", "GetItem", "CreateItem", "SyncFolderItems"];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut groups = Groups::new();
    let mut malformed = 0;
    for i in 0..n {
        let p = principals[(i % 3) as usize];
        let m = mailboxes[((i / 3) % 3) as usize];
        let o = operations[((i / 7) % 4) as usize];
        // Seconds into November, increasing with i: first/last are the first/last written.
        let secs = i * 60;
        let (d, h, min, s) = (
            1 + secs / 86_400,
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
        );
        let ts = format!("2026-11-{d:02}T{h:02}:{min:02}:{s:02}.000Z");
        let status = if i % 11 == 0 { 500 } else { 200 };
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "event": "request", "ts": ts, "principal": p, "peer": "192.0.2.10",
                "tenant": "contoso.example", "mailbox": m, "operation": o,
                "method": "POST", "path": "/EWS/Exchange.asmx", "status": status,
                "outcome": if status == 200 { "forwarded" } else { "upstream_error" },
                "bytes_in": 1000, "bytes_out": 5000, "duration_ms": 40,
                "client_request_id": null, "upstream_request_id": "abc"
            })
        )
        .unwrap();
        let g = groups
            .entry((p.to_owned(), m.to_owned(), o.to_owned()))
            .or_insert((0, 0, ts.clone(), ts.clone()));
        g.0 += 1;
        g.1 += u64::from(status == 500);
        g.3 = ts;
        if i % 1000 == 0 {
            writeln!(out, "{{\"event\":\"lockout\",\"ts\":\"2026-11-02T00:00:00.000Z\",\"key_kind\":\"user\",\"key\":\"user:x\",\"until\":\"2026-11-02T00:01:00.000Z\"}}").unwrap();
            writeln!(out, "{{\"event\":\"request\",\"ts\":\"2026-11-02T00:00:00.000Z\",\"principal\":null,\"peer\":\"198.51.100.1\",\"tenant\":null,\"mailbox\":null,\"operation\":null,\"method\":\"POST\",\"path\":\"/EWS/Exchange.asmx\",\"status\":401,\"outcome\":\"unauthenticated\",\"bytes_in\":0,\"bytes_out\":0,\"duration_ms\":1,\"client_request_id\":null,\"upstream_request_id\":null}}").unwrap();
            writeln!(out, "truncated {{\"event\":\"requ").unwrap();
            malformed += 1;
        }
    }
    out.flush().unwrap();
    Expected { groups, malformed }
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("report").args(args).output().unwrap()
}

#[test]
fn report_json_matches_the_synthetic_audit_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let n = 20_000;
    let expected = synthetic(&path, n);
    let out = run(&["--audit", path.to_str().unwrap(), "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("skipped {} malformed line(s)", expected.malformed)),
        "{stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["lines"]["malformed"], expected.malformed);
    assert_eq!(json["lines"]["other_events"], expected.malformed);
    assert_eq!(json["lines"]["unauthenticated"], expected.malformed);
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), expected.groups.len());
    for (g, ((p, m, o), (requests, errors, first, last))) in groups.iter().zip(&expected.groups) {
        assert_eq!(g["principal"], p.as_str());
        assert_eq!(g["mailbox"], m.as_str());
        assert_eq!(g["operation"], o.as_str());
        assert_eq!(g["requests"], *requests, "{g}");
        assert_eq!(g["errors"], *errors, "{g}");
        assert_eq!(g["first_seen"].as_str().unwrap(), first.replace(".000", ""));
        assert_eq!(g["last_seen"].as_str().unwrap(), last.replace(".000", ""));
        assert_eq!(g["bytes_in"], requests * 1000);
    }
    let principals = json["principals"].as_array().unwrap();
    assert_eq!(principals.len(), 3);
    let total: u64 = principals
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, n);
    assert_eq!(principals[0]["principal"], "archiver@contoso.example");
    assert_eq!(principals[0]["mailboxes"].as_array().unwrap().len(), 3);
    assert_eq!(principals[0]["sources"], serde_json::json!(["192.0.2.10"]));
}

#[test]
fn report_text_csv_since_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let expected = synthetic(&path, 3_000);
    let file = path.to_str().unwrap();

    let text = run(&["--audit", file]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("2027-04-01"), "{text}");
    let ((p, m, o), (requests, errors, ..)) = expected.groups.iter().next().unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with(p.as_str()) && l.contains(m.as_str()) && l.contains(o.as_str()))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[3], requests.to_string());
    assert_eq!(cells[4], errors.to_string());

    let csv = run(&["--audit", file, "--format", "csv"]);
    assert!(csv.status.success());
    let csv = String::from_utf8(csv.stdout).unwrap();
    let rows: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(rows.len(), 1 + expected.groups.len());
    assert!(rows[0].starts_with("principal,mailbox,operation,requests,errors,first_seen"));
    let summary = run(&["--audit", file, "--format", "csv", "--principals"]);
    assert_eq!(
        String::from_utf8(summary.stdout)
            .unwrap()
            .split_terminator("\r\n")
            .count(),
        4
    );

    // --since: 3000 minutes from 2026-11-01 end on 2026-11-03 02:00; keep the last day only.
    let since = run(&[
        "--audit",
        file,
        "--since",
        "2026-11-03T00:00:00Z",
        "--format",
        "json",
    ]);
    assert!(since.status.success());
    let json: serde_json::Value = serde_json::from_slice(&since.stdout).unwrap();
    let kept: u64 = json["principals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(kept, 3_000 - 2 * 24 * 60);
    assert!(String::from_utf8_lossy(&since.stderr).contains("before --since"));
    // A relative --since far in the past keeps everything.
    let all = run(&["--audit", file, "--since", "36500d", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(json["lines"]["before_since"], 0);

    let bad = run(&["--audit", file, "--since", "last tuesday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
    let missing = run(&["--audit", dir.path().join("nope.jsonl").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.jsonl"));
}

#[test]
fn report_reads_standard_input_and_help_names_the_deadline() {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["report", "--audit", "-", "--format", "csv"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"event\":\"request\",\"ts\":\"2026-11-01T00:00:00.000Z\",\"principal\":\"a@x\",\"peer\":\"::1\",\"tenant\":null,\"mailbox\":\"a@x\",\"operation\":\"GetFolder\",\"method\":\"POST\",\"path\":\"/EWS/Exchange.asmx\",\"status\":200,\"outcome\":\"forwarded\",\"bytes_in\":1,\"bytes_out\":2,\"duration_ms\":3,\"client_request_id\":null,\"upstream_request_id\":null}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator("\r\n")
            .nth(1),
        Some("a@x,a@x,GetFolder,1,0,2026-11-01T00:00:00Z,2026-11-01T00:00:00Z,1,2,")
    );
    let help = Command::new(BIN)
        .args(["report", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("2027-04-01"));
}

//! `ews-gateway report`: who still uses EWS, read from the gateway's audit JSON Lines.
//!
//! Groups the `"event": "request"` lines by principal, mailbox and operation (count, errors,
//! first and last seen, bytes) and sums them per principal: the list of workloads an admin has
//! to migrate before Exchange Online switches EWS off on 2027-04-01. Files of months are read
//! line by line; memory grows with the number of groups, not of lines (an overlong line is
//! skipped without being held). Lines of other kinds are ignored; lines that are not JSON or
//! lack a required field are skipped and counted.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest audit line read; longer ones are skipped as malformed.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Distinct source addresses kept per principal (the rest are only counted).
const MAX_SOURCES: usize = 32;

/// Errors of the report command.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// `--since` is neither RFC 3339 nor a relative duration.
    #[error(
        "--since {0:?}: expected an RFC 3339 time (2026-11-01T00:00:00Z) or a duration like 30d, 12h, 45m, 2w"
    )]
    Since(String),
    /// An audit file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables for a terminal.
    Text,
    /// Comma-separated values (RFC 4180 quoting).
    Csv,
    /// One JSON object.
    Json,
}

/// Parses `--since`: an RFC 3339 time, or a duration before `now` (`30d`, `12h`, `45m`, `90s`,
/// `2w`).
pub fn parse_since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ReportError> {
    let bad = || ReportError::Since(text.to_owned());
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .filter(|i| *i > 0)
        .ok_or_else(bad)?;
    let (digits, unit) = text.split_at(unit_at);
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let seconds = n.checked_mul(seconds_per).ok_or_else(bad)?;
    now.checked_sub(time::Duration::seconds(seconds))
        .ok_or_else(bad)
}

/// Counters of one (principal, mailbox, operation).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Requests.
    pub requests: u64,
    /// Requests answered with an HTTP status of 400 or more.
    pub errors: u64,
    /// First request.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// Last request.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Requests per outcome other than `forwarded` (refusals, upstream failures).
    pub outcomes: BTreeMap<String, u64>,
}

/// Per-principal sums.
#[derive(Debug, Clone)]
struct PrincipalStats {
    requests: u64,
    errors: u64,
    first_seen: OffsetDateTime,
    last_seen: OffsetDateTime,
    bytes_in: u64,
    bytes_out: u64,
    sources: BTreeSet<String>,
    more_sources: bool,
}

/// How the input lines were used.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LineCounts {
    /// Lines read.
    pub total: u64,
    /// Request lines counted in the report.
    pub requests: u64,
    /// Request lines without a principal (failed logins, challenges): counted here only.
    pub unauthenticated: u64,
    /// Request lines before `--since`.
    pub before_since: u64,
    /// Lines of other kinds (lockout events and the like).
    pub other_events: u64,
    /// Lines that are not JSON objects or lack a required field.
    pub malformed: u64,
}

/// The report being built.
#[derive(Debug, Default)]
pub struct Report {
    since: Option<OffsetDateTime>,
    groups: BTreeMap<(String, String, String), Group>,
    principals: BTreeMap<String, PrincipalStats>,
    /// Line counts.
    pub lines: LineCounts,
    /// Where the first malformed line was (`file:line`).
    pub first_malformed: Option<String>,
}

/// Shown where a field is null.
const NONE: &str = "-";

/// The fields of a request line the report needs.
struct RequestLine {
    ts: OffsetDateTime,
    principal: Option<String>,
    mailbox: Option<String>,
    operation: Option<String>,
    peer: Option<String>,
    status: u64,
    outcome: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
}

enum Parsed {
    Request(RequestLine),
    Other,
    Malformed,
}

/// The kind of a line, read without building the rest.
#[derive(serde::Deserialize)]
struct Kind<'a> {
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
}

/// A field that must be present but may be null.
#[derive(Default)]
enum Nullable<'a> {
    #[default]
    Missing,
    Null,
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Nullable<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match <Option<Cow<'a, str>> as serde::Deserialize>::deserialize(d)? {
                None => Self::Null,
                Some(s) => Self::Text(s),
            },
        )
    }
}

impl Nullable<'_> {
    /// `Err` when missing.
    fn required(self) -> Result<Option<String>, ()> {
        match self {
            Self::Missing => Err(()),
            Self::Null => Ok(None),
            Self::Text(s) => Ok(Some(s.into_owned())),
        }
    }

    fn optional(self) -> Option<String> {
        self.required().ok().flatten()
    }
}

/// The fields of a request line the report reads; others are skipped unparsed.
#[derive(serde::Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    status: u64,
    #[serde(borrow, default)]
    principal: Nullable<'a>,
    #[serde(borrow, default)]
    mailbox: Nullable<'a>,
    #[serde(borrow, default)]
    operation: Nullable<'a>,
    #[serde(borrow, default)]
    peer: Nullable<'a>,
    #[serde(borrow, default)]
    outcome: Nullable<'a>,
    #[serde(default)]
    bytes_in: Option<u64>,
    #[serde(default)]
    bytes_out: Option<u64>,
}

fn parse_line(line: &[u8]) -> Parsed {
    let Ok(kind) = serde_json::from_slice::<Kind<'_>>(line) else {
        return Parsed::Malformed;
    };
    match kind.event.as_deref() {
        Some("request") => {}
        Some(_) => return Parsed::Other,
        None => return Parsed::Malformed,
    }
    let request = (|| {
        let raw: RawRequest<'_> = serde_json::from_slice(line).map_err(|_| ())?;
        let ts = OffsetDateTime::parse(&raw.ts, &Rfc3339).map_err(|_| ())?;
        Ok::<_, ()>(RequestLine {
            ts,
            principal: raw.principal.required()?,
            mailbox: raw.mailbox.required()?,
            operation: raw.operation.required()?,
            peer: raw.peer.optional(),
            status: raw.status,
            outcome: raw.outcome.optional(),
            bytes_in: raw.bytes_in.unwrap_or(0),
            bytes_out: raw.bytes_out.unwrap_or(0),
        })
    })();
    match request {
        Ok(r) => Parsed::Request(r),
        Err(()) => Parsed::Malformed,
    }
}

/// Reads one line into `buf` (without its newline), holding at most `max` bytes of it.
/// `Ok(None)` at the end; `Ok(Some(false))` when the line was longer than `max`.
fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut fits = true;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if fits && buf.len() + part.len() <= max {
            buf.extend_from_slice(part);
        } else {
            fits = false;
            buf.clear();
        }
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(fits));
        }
    }
}

impl Report {
    /// An empty report keeping requests at or after `since`.
    pub fn new(since: Option<OffsetDateTime>) -> Self {
        Self {
            since,
            ..Self::default()
        }
    }

    /// Reads every line of `reader`; `origin` names it in messages.
    pub fn read(&mut self, reader: impl std::io::Read, origin: &str) -> std::io::Result<()> {
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, reader);
        let mut buf = Vec::with_capacity(4096);
        let mut number = 0u64;
        while let Some(fits) = read_bounded_line(&mut reader, &mut buf, MAX_LINE_BYTES)? {
            number += 1;
            if !fits {
                self.lines.total += 1;
                self.malformed(origin, number);
                continue;
            }
            let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if !self.add_line(line) {
                self.malformed(origin, number);
            }
        }
        Ok(())
    }

    fn malformed(&mut self, origin: &str, number: u64) {
        self.lines.malformed += 1;
        if self.first_malformed.is_none() {
            self.first_malformed = Some(format!("{origin}:{number}"));
        }
    }

    /// Counts one line; false when it is malformed.
    pub fn add_line(&mut self, line: &[u8]) -> bool {
        self.lines.total += 1;
        let r = match parse_line(line) {
            Parsed::Request(r) => r,
            Parsed::Other => {
                self.lines.other_events += 1;
                return true;
            }
            Parsed::Malformed => return false,
        };
        if self.since.is_some_and(|since| r.ts < since) {
            self.lines.before_since += 1;
            return true;
        }
        self.lines.requests += 1;
        let Some(principal) = r.principal else {
            self.lines.unauthenticated += 1;
            return true;
        };
        let error = u64::from(r.status >= 400);
        let key = (
            principal.clone(),
            r.mailbox.unwrap_or_else(|| NONE.to_owned()),
            r.operation.unwrap_or_else(|| NONE.to_owned()),
        );
        let g = self.groups.entry(key).or_insert_with(|| Group {
            requests: 0,
            errors: 0,
            first_seen: r.ts,
            last_seen: r.ts,
            bytes_in: 0,
            bytes_out: 0,
            outcomes: BTreeMap::new(),
        });
        g.requests += 1;
        g.errors += error;
        g.first_seen = g.first_seen.min(r.ts);
        g.last_seen = g.last_seen.max(r.ts);
        g.bytes_in = g.bytes_in.saturating_add(r.bytes_in);
        g.bytes_out = g.bytes_out.saturating_add(r.bytes_out);
        if let Some(outcome) = r.outcome
            && outcome != "forwarded"
        {
            // Bounded: the gateway writes a small fixed vocabulary of outcomes.
            if g.outcomes.len() < 32 || g.outcomes.contains_key(&outcome) {
                *g.outcomes.entry(outcome).or_insert(0) += 1;
            }
        }
        let p = self
            .principals
            .entry(principal)
            .or_insert_with(|| PrincipalStats {
                requests: 0,
                errors: 0,
                first_seen: r.ts,
                last_seen: r.ts,
                bytes_in: 0,
                bytes_out: 0,
                sources: BTreeSet::new(),
                more_sources: false,
            });
        p.requests += 1;
        p.errors += error;
        p.first_seen = p.first_seen.min(r.ts);
        p.last_seen = p.last_seen.max(r.ts);
        p.bytes_in = p.bytes_in.saturating_add(r.bytes_in);
        p.bytes_out = p.bytes_out.saturating_add(r.bytes_out);
        if let Some(peer) = r.peer
            && !p.sources.contains(&peer)
        {
            if p.sources.len() < MAX_SOURCES {
                p.sources.insert(peer);
            } else {
                p.more_sources = true;
            }
        }
        true
    }

    /// The groups, ordered by principal, mailbox, operation.
    pub fn groups(&self) -> impl Iterator<Item = (&str, &str, &str, &Group)> {
        self.groups
            .iter()
            .map(|((p, m, o), g)| (p.as_str(), m.as_str(), o.as_str(), g))
    }

    /// The per-principal summary rows, ordered by principal.
    pub fn principals(&self) -> Vec<PrincipalSummary> {
        self.principals
            .iter()
            .map(|(name, p)| {
                let mut mailboxes = BTreeSet::new();
                let mut operations = BTreeSet::new();
                for ((_, m, o), _) in self
                    .groups
                    .range((name.clone(), String::new(), String::new())..)
                    .take_while(|((gp, _, _), _)| gp == name)
                {
                    mailboxes.insert(m.clone());
                    operations.insert(o.clone());
                }
                PrincipalSummary {
                    principal: name.clone(),
                    requests: p.requests,
                    errors: p.errors,
                    first_seen: p.first_seen,
                    last_seen: p.last_seen,
                    bytes_in: p.bytes_in,
                    bytes_out: p.bytes_out,
                    mailboxes: mailboxes.into_iter().collect(),
                    operations: operations.into_iter().collect(),
                    sources: p.sources.iter().cloned().collect(),
                    more_sources: p.more_sources,
                }
            })
            .collect()
    }

    /// Text tables: the per-principal summary, then the groups.
    pub fn to_text(&self) -> String {
        let principals = self.principals();
        let mut out = String::new();
        let span = match (
            principals.iter().map(|p| p.first_seen).min(),
            principals.iter().map(|p| p.last_seen).max(),
        ) {
            (Some(a), Some(b)) => format!("from {} to {}", rfc3339(a), rfc3339(b)),
            _ => "no authenticated requests".to_owned(),
        };
        out.push_str(&format!(
            "EWS use through the gateway, {span}: {} principal(s), {} request(s), {} unauthenticated\n",
            principals.len(),
            self.lines.requests - self.lines.unauthenticated,
            self.lines.unauthenticated
        ));
        out.push_str(
            "Every principal below still uses EWS: migrate it before Exchange Online switches EWS off on 2027-04-01.\n\n",
        );
        out.push_str("Per principal\n");
        let rows: Vec<Vec<String>> = principals
            .iter()
            .map(|p| {
                let mut sources = p.sources.join(" ");
                if p.more_sources {
                    sources.push_str(" ...");
                }
                vec![
                    p.principal.clone(),
                    p.requests.to_string(),
                    p.errors.to_string(),
                    p.mailboxes.len().to_string(),
                    p.operations.len().to_string(),
                    rfc3339(p.first_seen),
                    rfc3339(p.last_seen),
                    sources,
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "PRINCIPAL",
                "REQUESTS",
                "ERRORS",
                "MAILBOXES",
                "OPERATIONS",
                "FIRST SEEN",
                "LAST SEEN",
                "SOURCES",
            ],
            &rows,
        );
        out.push_str("\nBy principal, mailbox and operation\n");
        let rows: Vec<Vec<String>> = self
            .groups()
            .map(|(p, m, o, g)| {
                vec![
                    p.to_owned(),
                    m.to_owned(),
                    o.to_owned(),
                    g.requests.to_string(),
                    g.errors.to_string(),
                    rfc3339(g.first_seen),
                    rfc3339(g.last_seen),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "PRINCIPAL",
                "MAILBOX",
                "OPERATION",
                "REQUESTS",
                "ERRORS",
                "FIRST SEEN",
                "LAST SEEN",
            ],
            &rows,
        );
        out
    }

    /// CSV with a header row: the groups, or the per-principal summary.
    pub fn to_csv(&self, principals: bool) -> String {
        if principals {
            let rows = self.principals().into_iter().map(|p| {
                vec![
                    p.principal.clone(),
                    p.requests.to_string(),
                    p.errors.to_string(),
                    p.mailboxes.join(" "),
                    p.operations.join(" "),
                    rfc3339(p.first_seen),
                    rfc3339(p.last_seen),
                    p.bytes_in.to_string(),
                    p.bytes_out.to_string(),
                    p.sources.join(" "),
                ]
            });
            return csv_table(
                &[
                    "principal",
                    "requests",
                    "errors",
                    "mailboxes",
                    "operations",
                    "first_seen",
                    "last_seen",
                    "bytes_in",
                    "bytes_out",
                    "sources",
                ],
                rows,
            );
        }
        let none_empty = |s: &str| {
            if s == NONE {
                String::new()
            } else {
                s.to_owned()
            }
        };
        let rows = self.groups().map(|(p, m, o, g)| {
            let outcomes = g
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                p.to_owned(),
                none_empty(m),
                none_empty(o),
                g.requests.to_string(),
                g.errors.to_string(),
                rfc3339(g.first_seen),
                rfc3339(g.last_seen),
                g.bytes_in.to_string(),
                g.bytes_out.to_string(),
                outcomes,
            ]
        });
        csv_table(
            &[
                "principal",
                "mailbox",
                "operation",
                "requests",
                "errors",
                "first_seen",
                "last_seen",
                "bytes_in",
                "bytes_out",
                "outcomes",
            ],
            rows,
        )
    }

    /// One JSON object: line counts, the per-principal summary and the groups.
    pub fn to_json(&self) -> serde_json::Value {
        let groups: Vec<serde_json::Value> = self
            .groups()
            .map(|(p, m, o, g)| {
                let null_if_none = |s: &str| {
                    if s == NONE {
                        serde_json::Value::Null
                    } else {
                        s.into()
                    }
                };
                let mut v = serde_json::json!({
                    "principal": p,
                    "mailbox": null_if_none(m),
                    "operation": null_if_none(o),
                });
                if let (Some(obj), Ok(serde_json::Value::Object(stats))) =
                    (v.as_object_mut(), serde_json::to_value(g))
                {
                    obj.extend(stats);
                }
                v
            })
            .collect();
        serde_json::json!({
            "since": self.since.map(rfc3339),
            "lines": self.lines,
            "principals": self.principals(),
            "groups": groups,
        })
    }
}

/// One row of the per-principal summary.
#[derive(Debug, Clone, Serialize)]
pub struct PrincipalSummary {
    /// The login.
    pub principal: String,
    /// Requests.
    pub requests: u64,
    /// Requests answered with 400 or more.
    pub errors: u64,
    /// First request.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// Last request.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Mailboxes acted as (`-`: none decided).
    pub mailboxes: Vec<String>,
    /// Operations used (`-`: none named).
    pub operations: Vec<String>,
    /// Source addresses (at most 32).
    pub sources: Vec<String>,
    /// Whether more source addresses were seen than listed.
    pub more_sources: bool,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A cell for a terminal: control characters escaped (values come from clients' logins).
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// An aligned text table (comfy-table, no borders, two spaces between columns) with cells made
/// printable; `(none)` under the header when there are no rows.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row.iter().map(|c| printable(c)).collect::<Vec<_>>());
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
}

/// CSV (RFC 4180, CRLF, written by the csv crate) of `header` and `rows`; a field a spreadsheet
/// would run as a formula gets a leading apostrophe (values come from clients' logins).
fn csv_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let defused = |field: String| {
        if field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{field}")
        } else {
            field
        }
    };
    let written = writer.write_record(header).and_then(|()| {
        let mut rows = rows;
        rows.try_for_each(|row| writer.write_record(row.into_iter().map(defused)))
    });
    match (written, writer.into_inner()) {
        (Ok(()), Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        // Writing to memory fails only if a record cannot be written at all; say so in the output.
        _ => "error: the CSV could not be written\r\n".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn line(
        ts: &str,
        principal: Option<&str>,
        mailbox: Option<&str>,
        op: &str,
        status: u16,
    ) -> String {
        serde_json::json!({
            "event": "request", "ts": ts, "principal": principal, "peer": "10.0.0.7",
            "tenant": "contoso.example", "mailbox": mailbox, "operation": op,
            "method": "POST", "path": "/EWS/Exchange.asmx", "status": status,
            "outcome": if status < 400 { "forwarded" } else { "refused" },
            "bytes_in": 100, "bytes_out": 2000, "duration_ms": 12,
            "client_request_id": null, "upstream_request_id": null
        })
        .to_string()
    }

    fn sample() -> String {
        [
            line("2026-11-01T08:00:00.000Z", Some("scanner@contoso.example"), Some("scanner@contoso.example"), "CreateItem", 200),
            line("2026-11-03T09:00:00.500Z", Some("scanner@contoso.example"), Some("scanner@contoso.example"), "CreateItem", 200),
            line("2026-11-02T10:00:00.000Z", Some("scanner@contoso.example"), Some("scanner@contoso.example"), "CreateItem", 500),
            line("2026-11-05T10:00:00.000Z", Some("archiver@contoso.example"), Some("alice@contoso.example"), "FindItem", 200),
            line("2026-11-06T10:00:00.000Z", Some("archiver@contoso.example"), Some("bob@contoso.example"), "FindItem", 200),
            line("2026-11-06T11:00:00.000Z", Some("archiver@contoso.example"), Some("bob@contoso.example"), "GetItem", 403),
            line("2026-11-06T12:00:00.000Z", None, None, "FindItem", 401),
            r#"{"event":"lockout","ts":"2026-11-06T12:00:00.000Z","key_kind":"user","key":"user:x","until":"2026-11-06T12:01:00.000Z"}"#.to_owned(),
            "not json at all".to_owned(),
            r#"{"event":"request","ts":"yesterday","principal":"a","mailbox":null,"operation":null,"status":200}"#.to_owned(),
            r#"{"event":"request","ts":"2026-11-06T12:00:00Z","principal":"a","mailbox":null,"operation":null}"#.to_owned(),
            "[1,2,3]".to_owned(),
            String::new(),
        ]
        .join("\n")
    }

    fn report(since: Option<OffsetDateTime>) -> Report {
        let mut r = Report::new(since);
        r.read(sample().as_bytes(), "audit.jsonl").unwrap();
        r
    }

    #[test]
    fn groups_count_errors_and_first_last_seen_out_of_order() {
        let r = report(None);
        let groups: Vec<_> = r.groups().collect();
        assert_eq!(groups.len(), 4);
        let (p, m, o, g) = groups[3];
        assert_eq!(
            (p, m, o),
            (
                "scanner@contoso.example",
                "scanner@contoso.example",
                "CreateItem"
            )
        );
        assert_eq!(g.requests, 3);
        assert_eq!(g.errors, 1);
        assert_eq!(g.first_seen, datetime!(2026-11-01 08:00:00 UTC));
        assert_eq!(g.last_seen, datetime!(2026-11-03 09:00:00.5 UTC));
        assert_eq!(g.bytes_in, 300);
        assert_eq!(g.outcomes.get("refused"), Some(&1));
        assert_eq!(r.lines.total, 12, "the trailing empty line is not a line");
        assert_eq!(r.lines.requests, 7);
        assert_eq!(r.lines.unauthenticated, 1);
        assert_eq!(r.lines.other_events, 1);
        assert_eq!(r.lines.malformed, 4);
        assert_eq!(r.first_malformed.as_deref(), Some("audit.jsonl:9"));
        let principals = r.principals();
        assert_eq!(principals.len(), 2);
        assert_eq!(principals[0].principal, "archiver@contoso.example");
        assert_eq!(principals[0].requests, 3);
        assert_eq!(principals[0].errors, 1);
        assert_eq!(
            principals[0].mailboxes,
            ["alice@contoso.example", "bob@contoso.example"]
        );
        assert_eq!(principals[0].operations, ["FindItem", "GetItem"]);
        assert_eq!(principals[0].sources, ["10.0.0.7"]);
    }

    #[test]
    fn since_drops_earlier_requests() {
        let r = report(Some(datetime!(2026-11-03 00:00:00 UTC)));
        let scanner = r
            .groups()
            .find(|(p, ..)| p.starts_with("scanner"))
            .unwrap()
            .3;
        assert_eq!(scanner.requests, 1);
        assert_eq!(r.lines.before_since, 2);
        let now = datetime!(2026-12-01 12:00:00 UTC);
        assert_eq!(
            parse_since("30d", now).unwrap(),
            datetime!(2026-11-01 12:00:00 UTC)
        );
        assert_eq!(
            parse_since("12h", now).unwrap(),
            datetime!(2026-12-01 00:00:00 UTC)
        );
        assert_eq!(
            parse_since("2w", now).unwrap(),
            datetime!(2026-11-17 12:00:00 UTC)
        );
        assert_eq!(
            parse_since("90m", now).unwrap(),
            datetime!(2026-12-01 10:30:00 UTC)
        );
        assert_eq!(
            parse_since("2026-11-15T00:00:00+01:00", now).unwrap(),
            datetime!(2026-11-14 23:00:00 UTC)
        );
        for bad in ["", "d", "30", "30y", "-3d", "1.5h", "99999999999999999999d"] {
            assert!(parse_since(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let mut r = Report::new(None);
        assert!(
            r.add_line(
                line(
                    "2026-11-01T08:00:00Z",
                    Some("=cmd|x"),
                    Some("a,\"b\"@x"),
                    "FindItem",
                    200
                )
                .as_bytes()
            )
        );
        let csv = r.to_csv(false);
        let mut rows = csv.split("\r\n");
        assert_eq!(
            rows.next(),
            Some(
                "principal,mailbox,operation,requests,errors,first_seen,last_seen,bytes_in,bytes_out,outcomes"
            )
        );
        assert_eq!(
            rows.next(),
            Some(
                "'=cmd|x,\"a,\"\"b\"\"@x\",FindItem,1,0,2026-11-01T08:00:00Z,2026-11-01T08:00:00Z,100,2000,"
            )
        );
        let summary = r.to_csv(true);
        assert!(
            summary.starts_with("principal,requests,errors,mailboxes,"),
            "{summary}"
        );
        assert!(summary.contains("'=cmd|x,1,0,"), "{summary}");
    }

    #[test]
    fn text_and_json_carry_both_tables() {
        let r = report(None);
        let text = r.to_text();
        assert!(text.contains("2027-04-01"));
        assert!(text.contains("Per principal"));
        let archiver = text
            .lines()
            .find(|l| l.starts_with("archiver@contoso.example") && l.contains("GetItem"))
            .unwrap();
        let cells: Vec<&str> = archiver.split_whitespace().collect();
        assert_eq!(cells[1..5], ["bob@contoso.example", "GetItem", "1", "1"]);
        let json = r.to_json();
        assert_eq!(json["lines"]["malformed"], 4);
        assert_eq!(
            json["principals"][1]["principal"],
            "scanner@contoso.example"
        );
        assert_eq!(json["groups"][0]["mailbox"], "alice@contoso.example");
        assert_eq!(json["groups"][0]["first_seen"], "2026-11-05T10:00:00Z");
        assert_eq!(json["groups"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn required_fields_must_be_present_even_when_null() {
        let mut r = Report::new(None);
        let full = line("2026-11-01T08:00:00Z", Some("a@x"), None, "GetFolder", 200);
        assert!(r.add_line(full.as_bytes()));
        for key in ["principal", "mailbox", "operation", "status", "ts"] {
            let mut v: serde_json::Value = serde_json::from_str(&full).unwrap();
            v.as_object_mut().unwrap().remove(key);
            assert!(!r.add_line(v.to_string().as_bytes()), "without {key}");
        }
        let mut v: serde_json::Value = serde_json::from_str(&full).unwrap();
        v["status"] = "200".into();
        assert!(!r.add_line(v.to_string().as_bytes()), "status as a string");
        assert_eq!(r.lines.requests, 1);
    }

    #[test]
    fn control_characters_are_escaped_in_text() {
        let mut r = Report::new(None);
        r.add_line(
            line(
                "2026-11-01T08:00:00Z",
                Some("evil\u{1b}[2Jx"),
                None,
                "FindItem",
                200,
            )
            .as_bytes(),
        );
        let text = r.to_text();
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("evil\\u{1b}[2Jx"), "{text}");
    }

    #[test]
    fn overlong_lines_are_skipped_without_being_held() {
        let long = format!(
            "{{\"event\":\"request\",\"pad\":\"{}\"}}",
            "x".repeat(MAX_LINE_BYTES)
        );
        let input = format!(
            "{long}\n{}\n",
            line("2026-11-01T08:00:00Z", Some("a@x"), None, "GetFolder", 200)
        );
        let mut reader = std::io::BufReader::with_capacity(1024, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_bounded_line(&mut reader, &mut buf, MAX_LINE_BYTES).unwrap(),
            Some(false)
        );
        assert!(
            buf.capacity() <= MAX_LINE_BYTES + 1024,
            "{}",
            buf.capacity()
        );
        let mut r = Report::new(None);
        r.read(input.as_bytes(), "f").unwrap();
        assert_eq!(r.lines.malformed, 1);
        assert_eq!(r.lines.requests, 1);
        assert_eq!(r.first_malformed.as_deref(), Some("f:1"));
    }
}

//! The audit trail: one JSON line per request (who, from where, as which mailbox, which EWS
//! operation, status, bytes each way, duration, request ids), never a secret.
//!
//! Lines go to a file (appended; reopened on reload, so logrotate can move it) and/or stdout
//! through a dedicated writer thread, so a slow disk never holds up a request. If the writer
//! falls behind by more than [`QUEUE_LINES`] lines, lines are dropped and counted rather than
//! letting memory grow. `ews-gateway report` reads this format. [`RequestAudit`] is the
//! request context the pipeline fills in; its `finish` writes the line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Lines the writer may lag behind before new ones are dropped.
pub const QUEUE_LINES: usize = 65_536;

/// `[audit]`: where the audit lines go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File the JSON lines are appended to (created if missing).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Also write the JSON lines to standard output.
    #[serde(default)]
    pub stdout: bool,
}

/// One request, as the audit trail records it (JSON Lines; see README "Audit trail").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Always `request`; other kinds of lines may share the file.
    pub event: String,
    /// Request start, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// The authenticated login.
    pub principal: Option<String>,
    /// Client source address.
    pub peer: String,
    /// Entra tenant used.
    pub tenant: Option<String>,
    /// The mailbox acted as.
    pub mailbox: Option<String>,
    /// EWS operation (or `AutodiscoverPox`/`AutodiscoverSoap`/`AutodiscoverJson`).
    pub operation: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path (no query string).
    pub path: String,
    /// HTTP status sent.
    pub status: u16,
    /// `forwarded`, or the error kind (`unauthenticated`, `refused`, `unavailable`, ...).
    pub outcome: String,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the request's arrival to the end of its response body.
    pub duration_ms: u64,
    /// The client's `client-request-id` header.
    pub client_request_id: Option<String>,
    /// Exchange's `request-id` response header.
    pub upstream_request_id: Option<String>,
}

/// Errors opening the audit file.
#[derive(Debug, thiserror::Error)]
#[error("audit file {path}: {source}")]
pub struct AuditError {
    /// The file.
    pub path: String,
    /// The OS error.
    pub source: std::io::Error,
}

enum Message {
    Line(Vec<u8>),
    Reopen,
}

/// The audit sink shared by all requests.
#[derive(Debug)]
pub struct AuditLog {
    config: AuditConfig,
    tx: Option<SyncSender<Message>>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Opens the sink (the file is opened now, so a bad path is refused before serving).
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let tx = if config.file.is_some() || config.stdout {
            let file = config.file.as_ref().map(open_append).transpose()?;
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
            let writer = Writer {
                path: config.file.clone(),
                file: file.map(std::io::BufWriter::new),
                stdout: config.stdout,
            };
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|source| AuditError {
                    path: "(writer thread)".into(),
                    source,
                })?;
            Some(tx)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// The configuration this sink was opened with.
    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// Whether lines go anywhere (callers skip building a record otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Records one request; never blocks.
    pub fn record(&self, record: &AuditRecord) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        match tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ews_gateway_audit_dropped_total").increment(1);
            }
        }
    }

    /// Reopens the file (after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Message::Reopen);
        }
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn open_append(path: &PathBuf) -> Result<std::fs::File, AuditError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AuditError {
            path: path.display().to_string(),
            source,
        })
}

struct Writer {
    path: Option<PathBuf>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    stdout: bool,
}

impl Writer {
    /// Writes lines as they come and flushes whenever the queue runs dry, so a line is on disk
    /// within a moment of its request ending without a write per line under load.
    fn run(mut self, rx: Receiver<Message>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(message) => {
                    self.handle(message);
                    while let Ok(queued) = rx.try_recv() {
                        self.handle(queued);
                    }
                    self.flush();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Line(line) => self.write(&line),
            Message::Reopen => self.reopen(),
        }
    }

    fn write(&mut self, line: &[u8]) {
        if let Some(file) = self.file.as_mut()
            && let Err(err) = file.write_all(line)
        {
            tracing::error!(error = %err, "cannot write the audit file");
        }
        if self.stdout {
            let _ = std::io::stdout().lock().write_all(line);
        }
    }

    fn flush(&mut self) {
        if let Some(file) = self.file.as_mut() {
            let _ = file.flush();
        }
        if self.stdout {
            let _ = std::io::stdout().lock().flush();
        }
    }

    fn reopen(&mut self) {
        self.flush();
        if let Some(path) = &self.path {
            match open_append(path) {
                Ok(file) => self.file = Some(std::io::BufWriter::new(file)),
                Err(err) => tracing::error!(error = %err, "cannot reopen the audit file"),
            }
        }
    }
}

/// Now, as the audit trail writes times: RFC 3339 UTC with milliseconds.
pub fn timestamp(at: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// One request as the pipeline learns about it: who, as which mailbox, for which tenant and
/// operation, how it ended. [`RequestAudit::finish`] turns it into metrics, the `audit` log event
/// and the audit line once the response body has ended.
pub struct RequestAudit {
    started: tokio::time::Instant,
    wall: std::time::SystemTime,
    method: http::Method,
    path: String,
    peer: String,
    client_request_id: Option<String>,
    /// The authenticated login.
    pub principal: Option<String>,
    /// The mailbox acted as.
    pub mailbox: Option<String>,
    /// The tenant whose app acted.
    pub tenant: Option<String>,
    /// The EWS operation (or the Autodiscover flavour).
    pub operation: Option<String>,
    /// The upstream's request id.
    pub upstream_request_id: Option<String>,
    /// `forwarded`, or the error kind; empty until known.
    pub outcome: &'static str,
    /// Request body bytes read before the backend was called.
    pub bytes_in: u64,
    /// Request body bytes streamed to the backend after the head.
    pub streamed_in: Option<Arc<AtomicU64>>,
    /// The mailbox's concurrency slot, held until the response body ends.
    pub slot: Option<crate::limits::MailboxSlot>,
    /// A long-lived streaming response.
    pub streaming: bool,
    in_flight: metrics::Gauge,
}

impl RequestAudit {
    /// Starts the record of a request (and counts it in flight until [`Self::finish`]).
    pub fn start(
        method: http::Method,
        path: String,
        peer: std::net::IpAddr,
        client_request_id: Option<String>,
    ) -> Self {
        let in_flight = metrics::gauge!(crate::telemetry::IN_FLIGHT);
        in_flight.increment(1.0);
        Self {
            started: tokio::time::Instant::now(),
            wall: std::time::SystemTime::now(),
            method,
            path,
            peer: peer.to_string(),
            client_request_id,
            principal: None,
            mailbox: None,
            tenant: None,
            operation: None,
            upstream_request_id: None,
            outcome: "",
            bytes_in: 0,
            streamed_in: None,
            slot: None,
            streaming: false,
            in_flight,
        }
    }

    /// The request is over: `bytes_out` sent with `status`, `completed` when the body reached its
    /// end (else the client went away). Frees the mailbox slot, records metrics, logs the audit
    /// event and writes the audit line to `sink`.
    pub fn finish(self, sink: &AuditLog, status: u16, bytes_out: u64, completed: bool) {
        use crate::telemetry;
        let Self {
            started,
            wall,
            method,
            path,
            peer,
            client_request_id,
            principal,
            mailbox,
            tenant,
            operation,
            upstream_request_id,
            outcome,
            bytes_in,
            streamed_in,
            slot,
            streaming,
            in_flight,
        } = self;
        drop(slot);
        let bytes_in = bytes_in + streamed_in.map_or(0, |n| n.load(Ordering::Relaxed));
        let duration = started.elapsed();
        let outcome = if completed || outcome != "forwarded" {
            outcome
        } else {
            "client_gone"
        };
        let op_label = telemetry::operation_label(operation.as_deref());
        metrics::counter!(telemetry::REQUESTS, "operation" => op_label, "status" => status.to_string(), "outcome" => outcome).increment(1);
        metrics::histogram!(telemetry::REQUEST_DURATION, "operation" => op_label)
            .record(duration.as_secs_f64());
        metrics::counter!(telemetry::BYTES, "direction" => "in").increment(bytes_in);
        metrics::counter!(telemetry::BYTES, "direction" => "out").increment(bytes_out);
        in_flight.decrement(1.0);
        if streaming {
            metrics::gauge!(telemetry::STREAMING).decrement(1.0);
        }
        tracing::info!(
            target: "audit",
            peer = %peer,
            method = %method,
            principal = principal.as_deref().unwrap_or("-"),
            mailbox = mailbox.as_deref().unwrap_or("-"),
            tenant = tenant.as_deref().unwrap_or("-"),
            operation = operation.as_deref().unwrap_or("-"),
            status,
            outcome,
            bytes_in,
            bytes_out,
            duration_ms = duration.as_millis() as u64,
            client_request_id = client_request_id.as_deref().unwrap_or("-"),
            upstream_request_id = upstream_request_id.as_deref().unwrap_or("-"),
            "request"
        );
        if !sink.enabled() {
            return;
        }
        sink.record(&AuditRecord {
            event: "request".to_owned(),
            ts: timestamp(wall),
            principal,
            peer,
            tenant,
            mailbox,
            operation,
            method: method.to_string(),
            path,
            status,
            outcome: outcome.to_owned(),
            bytes_in,
            bytes_out,
            duration_ms: duration.as_millis() as u64,
            client_request_id,
            upstream_request_id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(principal: &str) -> AuditRecord {
        AuditRecord {
            event: "request".into(),
            ts: timestamp(std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            principal: Some(principal.into()),
            peer: "127.0.0.1".into(),
            tenant: None,
            mailbox: Some(principal.into()),
            operation: Some("FindItem".into()),
            method: "POST".into(),
            path: "/EWS/Exchange.asmx".into(),
            status: 200,
            outcome: "forwarded".into(),
            bytes_in: 10,
            bytes_out: 20,
            duration_ms: 3,
            client_request_id: None,
            upstream_request_id: Some("r-1".into()),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            timestamp(std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            "1970-01-01T00:00:01.500Z"
        );
    }

    #[test]
    fn lines_reach_the_file_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditConfig {
            file: Some(path.clone()),
            stdout: false,
        })
        .unwrap();
        log.record(&record("a@x.example"));
        let rotated = dir.path().join("audit.jsonl.1");
        wait_for(|| std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 1));
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.record(&record("b@x.example"));
        wait_for(|| std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 1));
        let old: AuditRecord =
            serde_json::from_str(std::fs::read_to_string(&rotated).unwrap().trim()).unwrap();
        let new: AuditRecord =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(old, record("a@x.example"));
        assert_eq!(new.principal.as_deref(), Some("b@x.example"));
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn no_line_is_lost_in_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditConfig {
            file: Some(path.clone()),
            stdout: false,
        })
        .unwrap();
        for i in 0..5_000 {
            log.record(&record(&format!("u{i}@x.example")));
        }
        wait_for(|| std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 5_000));
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let r: AuditRecord = serde_json::from_str(line).unwrap();
            assert_eq!(
                r.principal,
                Some(format!("u{i}@x.example")),
                "in order, none lost"
            );
        }
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn an_unwritable_file_is_refused_at_open() {
        let err = AuditLog::open(&AuditConfig {
            file: Some("/nonexistent-dir/audit.jsonl".into()),
            stdout: false,
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/audit.jsonl"),
            "{err}"
        );
    }

    fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..3000 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("condition not met in 30 s");
    }
}

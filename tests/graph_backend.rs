//! The Graph backend's request path with a streaming client body: a CreateItem whose 100 MB
//! attachment arrives as 133 MB of base64 is parsed as it streams, decoded into a spool, and
//! uploaded in upload-session chunks that reassemble byte-exact, while the process's peak
//! memory grows by less than 32 MB. (nextest runs each test in its own process, so the peak
//! resident size, VmHWM, is this test's.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;

use base64::Engine as _;
use bytes::Bytes;
use ews_gateway::auth::Principal;
use ews_gateway::graph::backend::GraphTranslator;
use ews_gateway::graph::{GraphError, GraphPort, GraphRequest, GraphResponse, UploadChunk};
use ews_gateway::translate::xml::XmlLimits;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

const SIZE: u64 = 100 * 1024 * 1024;

fn byte(i: u64) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

#[derive(Default)]
struct Port {
    calls: Mutex<Vec<String>>,
    received: Mutex<u64>,
}

impl GraphPort for Port {
    async fn call(&self, mailbox: &str, req: GraphRequest) -> Result<GraphResponse, GraphError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{} {mailbox} {}", req.method.as_str(), req.path));
        let json = if req.path.ends_with("/createUploadSession") {
            let item = match &req.body {
                ews_gateway::graph::GraphBody::Json(v) => v["AttachmentItem"].clone(),
                _ => panic!("JSON body"),
            };
            assert_eq!(item["size"], SIZE);
            Some(serde_json::json!({"uploadUrl": "http://graph.test/up/1"}))
        } else if req.path == "/messages" {
            Some(
                serde_json::json!({"id": "AAMkAGExMWNlMDAwLTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwMDAwMQcATTk=", "changeKey": "CQ"}),
            )
        } else {
            None
        };
        Ok(GraphResponse {
            status: 201,
            json,
            location: None,
        })
    }

    async fn upload(
        &self,
        _mailbox: &str,
        _url: &str,
        chunk: UploadChunk,
    ) -> Result<GraphResponse, GraphError> {
        let mut received = self.received.lock().unwrap();
        assert_eq!(chunk.start, *received, "chunks in order, no gap");
        assert!(chunk.bytes.len() <= 4 * 1024 * 1024);
        for (k, b) in chunk.bytes.iter().enumerate() {
            assert_eq!(
                *b,
                byte(chunk.start + k as u64),
                "byte {}",
                chunk.start + k as u64
            );
        }
        *received += chunk.bytes.len() as u64;
        Ok(GraphResponse {
            status: if *received == chunk.total { 201 } else { 200 },
            json: None,
            location: None,
        })
    }
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_attachment_streams_through_with_bounded_memory() {
    let head = String::from(
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><soap:Header><t:RequestServerVersion Version="Exchange2013_SP1"/></soap:Header><soap:Body><m:CreateItem MessageDisposition="SendAndSaveCopy"><m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId><m:Items><t:Message><t:Subject>big</t:Subject><t:ToRecipients><t:Mailbox><t:EmailAddress>bob@contoso.example</t:EmailAddress></t:Mailbox></t:ToRecipients><t:Attachments><t:FileAttachment><t:Name>big.bin</t:Name><t:Content>"#,
    );
    let tail = "</t:Content></t:FileAttachment></t:Attachments></t:Message></m:Items></m:CreateItem></soap:Body></soap:Envelope>";
    // The base64 is produced piece by piece (a multiple of 3 bytes per piece), never whole.
    const PIECE: u64 = 3 * 64 * 1024;
    let pieces = futures_util::stream::unfold(0u64, |at| async move {
        if at >= SIZE {
            return None;
        }
        let n = PIECE.min(SIZE - at);
        let raw: Vec<u8> = (at..at + n).map(byte).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(raw);
        Some((Bytes::from(text), at + n))
    });
    let body = futures_util::stream::iter([Bytes::from(head.clone())])
        .chain(pieces)
        .chain(futures_util::stream::iter([Bytes::from_static(
            tail.as_bytes(),
        )]))
        .map(|b| Ok::<_, ews_gateway::http_util::BoxError>(Frame::data(b)));
    let body = StreamBody::new(body).boxed_unsync();

    let principal = Principal {
        name: "alice@contoso.example".into(),
        mailbox: "alice@contoso.example".into(),
        ..Default::default()
    };
    let translator = GraphTranslator::new(Port::default(), XmlLimits::default());
    let before = peak_rss_kb();
    let (resp, t) = translator
        .handle(
            &principal,
            "alice@contoso.example",
            Bytes::new(),
            Some(body),
            200 * 1024 * 1024,
        )
        .await;
    let growth_mb = (peak_rss_kb() - before) / 1024;
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(t.status, 200, "{text}");
    assert!(text.contains("NoError"), "{text}");
    let calls = t.graph_calls;
    eprintln!("peak RSS growth {growth_mb} MB, {calls} Graph calls");
    // draft, session, 32 chunks of 3,276,800 bytes (the last one shorter), send.
    assert_eq!(calls, 1 + 1 + SIZE.div_ceil(3_276_800) as u32 + 1);
    let log = translator.port().calls.lock().unwrap().clone();
    assert_eq!(
        log.first().map(String::as_str),
        Some("POST alice@contoso.example /messages")
    );
    assert!(log.last().unwrap().ends_with("/send"));
    assert!(growth_mb < 32, "peak RSS grew by {growth_mb} MB");
}

//! TLS on the client side of the gateway: TLS 1.2 and 1.3 only, forward-secret AEAD suites only.
//! rustls has no TLS 1.0/1.1, CBC, RC4 or static-RSA code at all; these tests show the listener
//! refusing such hellos (written byte for byte) and serving modern clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TLS12: [u8; 2] = [0x03, 0x03];
const TLS11: [u8; 2] = [0x03, 0x02];
const TLS10: [u8; 2] = [0x03, 0x01];
const ECDHE_ECDSA_AES128_GCM: u16 = 0xc02b;
const ECDHE_RSA_AES128_GCM: u16 = 0xc02f;

/// A ClientHello with x25519, uncompressed points and ECDSA-P256/RSA-PSS signatures offered.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    let ext: &[u8] = &[
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d, // supported_groups: x25519
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature_algorithms
    ];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// The first record the server answers with: (content type, first two payload bytes).
async fn first_record(addr: std::net::SocketAddr, hello: &[u8]) -> (u8, [u8; 2]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut head = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("no answer within 10 s")
        .expect("the server closed without a TLS record");
    (head[0], [head[5], head[6]])
}

async fn tls_gateway() -> (ews_gateway::demo::Demo, String) {
    let pki = ews_gateway::tls::generate_pki(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("tls.crt"), &pki.server_cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &pki.server_key_pem).unwrap();
    let demo = start_demo_tuned(
        |c| {
            c.listen.tls_cert = Some(dir.join("tls.crt"));
            c.listen.tls_key = Some(dir.join("tls.key"));
        },
        "",
    )
    .await;
    assert!(demo.gateway.tls);
    (demo, pki.ca_cert_pem)
}

const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;

#[tokio::test]
async fn old_protocol_versions_and_weak_suites_are_refused() {
    let (demo, _) = tls_gateway().await;
    let addr = demo.gateway.addr;
    // Control: the same hello as TLS 1.2 with an ECDHE-ECDSA-AES-GCM suite gets a ServerHello.
    let (kind, payload) = first_record(addr, &client_hello(TLS12, &[ECDHE_ECDSA_AES128_GCM])).await;
    assert_eq!(kind, HANDSHAKE);
    assert_eq!(payload[0], 0x02, "ServerHello");

    for (name, version) in [("TLS 1.1", TLS11), ("TLS 1.0", TLS10)] {
        let (kind, payload) = first_record(
            addr,
            &client_hello(
                version,
                &[ECDHE_ECDSA_AES128_GCM, ECDHE_RSA_AES128_GCM, 0xc009, 0x002f],
            ),
        )
        .await;
        assert_eq!(kind, ALERT, "{name} must get an alert");
        assert_eq!(payload, [2, 70], "{name}: fatal protocol_version");
    }
    // TLS 1.2 offering only CBC, RC4, 3DES and static-RSA suites: no common suite.
    let weak = [
        0x002f, 0x0035, 0x003c, 0xc009, 0xc013, 0x0005, 0x000a, 0x009c,
    ];
    let (kind, payload) = first_record(addr, &client_hello(TLS12, &weak)).await;
    assert_eq!(kind, ALERT);
    assert_eq!(payload, [2, 40], "fatal handshake_failure");
    assert!(demo.sim.ews_requests().is_empty());
    demo.stop().await;
}

#[tokio::test]
async fn tls12_and_tls13_clients_are_served() {
    let (demo, ca) = tls_gateway().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in ews_gateway::tls::certs_from_pem(ca.as_bytes(), "ca").unwrap() {
        roots.add(cert).unwrap();
    }
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(demo.gateway.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        tls.write_all(
            b"GET /EWS/Exchange.asmx HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 401"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    demo.stop().await;
}

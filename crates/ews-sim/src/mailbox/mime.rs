//! RFC 5322 / MIME rendering and parsing of stored messages.
//!
//! Rendering serves `t:MimeContent` (DavMail's IMAP FETCH); parsing serves CreateItem from
//! `t:MimeContent` (DavMail's IMAP APPEND). Both cover what mail clients produce in practice:
//! single-part text/HTML, multipart with file attachments, base64 / quoted-printable transfer
//! encodings and RFC 2047 encoded words in headers. It is not a general MIME library.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::{Address, Attachment, BodyType, Message};

/// The MIME of a message: the original bytes if it was created from MIME and unchanged since,
/// otherwise a rendering.
pub fn render(msg: &Message) -> Vec<u8> {
    if let Some(original) = &msg.mime {
        return original.clone();
    }
    let mut out = String::new();
    let date = msg.sent.unwrap_or(msg.received);
    if let Ok(d) = date.format(&Rfc2822) {
        header(&mut out, "Date", &d);
    }
    if let Some(from) = &msg.from {
        header(&mut out, "From", &address_list(std::slice::from_ref(from)));
    }
    if !msg.to.is_empty() {
        header(&mut out, "To", &address_list(&msg.to));
    }
    if !msg.cc.is_empty() {
        header(&mut out, "Cc", &address_list(&msg.cc));
    }
    header(&mut out, "Subject", &encode_word(&msg.subject));
    if !msg.internet_message_id.is_empty() {
        header(&mut out, "Message-ID", &msg.internet_message_id);
    }
    if msg.importance != "Normal" {
        header(&mut out, "Importance", &msg.importance);
    }
    header(&mut out, "MIME-Version", "1.0");
    let subtype = match msg.body_type {
        BodyType::Text => "plain",
        BodyType::Html => "html",
    };
    if msg.attachments.is_empty() {
        text_part(&mut out, subtype, &msg.body);
    } else {
        let digest = Sha256::digest(format!("{}{}", msg.internet_message_id, msg.subject));
        let boundary = format!("_sim_{}_", hex::encode(&digest[..10]));
        header(
            &mut out,
            "Content-Type",
            &format!("multipart/mixed; boundary=\"{boundary}\""),
        );
        out.push_str("\r\n");
        out.push_str(&format!("--{boundary}\r\n"));
        text_part(&mut out, subtype, &msg.body);
        for att in &msg.attachments {
            out.push_str(&format!("\r\n--{boundary}\r\n"));
            let name = encode_word(&att.name).replace('"', "");
            header(
                &mut out,
                "Content-Type",
                &format!("{}; name=\"{name}\"", att.content_type),
            );
            let disposition = if att.is_inline {
                "inline"
            } else {
                "attachment"
            };
            header(
                &mut out,
                "Content-Disposition",
                &format!("{disposition}; filename=\"{name}\""),
            );
            if let Some(cid) = &att.content_id {
                header(&mut out, "Content-ID", &format!("<{cid}>"));
            }
            header(&mut out, "Content-Transfer-Encoding", "base64");
            out.push_str("\r\n");
            out.push_str(&wrap_base64(&att.content));
        }
        out.push_str(&format!("\r\n--{boundary}--\r\n"));
    }
    out.into_bytes()
}

fn header(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

fn text_part(out: &mut String, subtype: &str, body: &str) {
    header(
        out,
        "Content-Type",
        &format!("text/{subtype}; charset=\"utf-8\""),
    );
    let simple = body.is_ascii() && body.lines().all(|l| l.len() <= 900);
    if simple {
        header(out, "Content-Transfer-Encoding", "7bit");
        out.push_str("\r\n");
        let normalized = body.replace("\r\n", "\n").replace('\n', "\r\n");
        out.push_str(&normalized);
        if !normalized.ends_with("\r\n") {
            out.push_str("\r\n");
        }
    } else {
        header(out, "Content-Transfer-Encoding", "base64");
        out.push_str("\r\n");
        out.push_str(&wrap_base64(body.as_bytes()));
    }
}

fn wrap_base64(bytes: &[u8]) -> String {
    let encoded = STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out
}

/// An RFC 2047 encoded word when the text is not plain ASCII.
fn encode_word(text: &str) -> String {
    if text.is_ascii() && !text.contains("=?") {
        text.to_owned()
    } else {
        format!("=?UTF-8?B?{}?=", STANDARD.encode(text.as_bytes()))
    }
}

fn address_list(list: &[Address]) -> String {
    list.iter()
        .map(|a| {
            if a.name.is_empty() || a.name == a.email {
                format!("<{}>", a.email)
            } else if a.name.is_ascii() {
                let name = a.name.replace('\\', "\\\\").replace('"', "\\\"");
                format!("\"{name}\" <{}>", a.email)
            } else {
                format!("{} <{}>", encode_word(&a.name), a.email)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What CreateItem takes from a MIME message.
#[derive(Debug, Default)]
pub struct Parsed {
    /// `Subject`.
    pub subject: String,
    /// `From`.
    pub from: Option<Address>,
    /// `To`.
    pub to: Vec<Address>,
    /// `Cc`.
    pub cc: Vec<Address>,
    /// `Bcc`.
    pub bcc: Vec<Address>,
    /// `Date`.
    pub date: Option<OffsetDateTime>,
    /// `Message-ID`.
    pub message_id: Option<String>,
    /// The first text body found (plain preferred).
    pub body: Option<(String, BodyType)>,
    /// File parts.
    pub attachments: Vec<Attachment>,
}

/// Parses a message; tolerant, as the server side of an IMAP APPEND must be.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let (headers, body) = split_entity(bytes);
    for (name, value) in &headers {
        match name.as_str() {
            "subject" => parsed.subject = decode_words(value),
            "from" => parsed.from = parse_addresses(value).into_iter().next(),
            "to" => parsed.to = parse_addresses(value),
            "cc" => parsed.cc = parse_addresses(value),
            "bcc" => parsed.bcc = parse_addresses(value),
            "date" => parsed.date = OffsetDateTime::parse(value.trim(), &Rfc2822).ok(),
            "message-id" => parsed.message_id = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    walk(&headers, body, &mut parsed, 0);
    parsed
}

type Headers = Vec<(String, String)>;

fn split_entity(bytes: &[u8]) -> (Headers, &[u8]) {
    let (head, body) = match find(bytes, b"\r\n\r\n") {
        Some(i) => (&bytes[..i], &bytes[i + 4..]),
        None => match find(bytes, b"\n\n") {
            Some(i) => (&bytes[..i], &bytes[i + 2..]),
            None => (bytes, &[][..]),
        },
    };
    let text = String::from_utf8_lossy(head);
    let mut headers: Headers = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    (headers, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `type/subtype` (lower case) and parameters of a Content-Type-like header.
fn params(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = split_outside_quotes(value, ';').into_iter();
    let main = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mut out = Vec::new();
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            let v = v.trim().trim_matches('"').to_owned();
            out.push((k.trim().to_ascii_lowercase(), v));
        }
    }
    (main, out)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name || k.strip_suffix('*').is_some_and(|k| k == name))
        .map(|(_, v)| v.as_str())
}

fn walk(headers: &Headers, body: &[u8], parsed: &mut Parsed, depth: usize) {
    let (ctype, cparams) = params(get(headers, "content-type").unwrap_or("text/plain"));
    let (disposition, dparams) = params(get(headers, "content-disposition").unwrap_or(""));
    if let Some(boundary) = param(&cparams, "boundary").filter(|_| ctype.starts_with("multipart/"))
    {
        if depth > 8 {
            return;
        }
        for part in split_multipart(body, boundary) {
            let (h, b) = split_entity(part);
            walk(&h, b, parsed, depth + 1);
        }
        return;
    }
    let decoded = decode_transfer(
        get(headers, "content-transfer-encoding").unwrap_or("7bit"),
        body,
    );
    let filename = param(&dparams, "filename").or_else(|| param(&cparams, "name"));
    let is_text = ctype == "text/plain" || ctype == "text/html";
    if is_text && disposition != "attachment" && filename.is_none() {
        let text = charset_decode(param(&cparams, "charset").unwrap_or("utf-8"), &decoded);
        let kind = if ctype == "text/html" {
            BodyType::Html
        } else {
            BodyType::Text
        };
        // Prefer plain text when both alternatives exist; the first of a kind wins.
        let replace = match &parsed.body {
            None => true,
            Some((_, BodyType::Html)) => kind == BodyType::Text,
            Some(_) => false,
        };
        if replace {
            parsed.body = Some((text, kind));
        }
        return;
    }
    parsed.attachments.push(Attachment {
        id: String::new(),
        name: filename
            .map(decode_words)
            .unwrap_or_else(|| "attachment".to_owned()),
        content_type: if ctype.is_empty() {
            "application/octet-stream".to_owned()
        } else {
            ctype
        },
        content_id: get(headers, "content-id").map(|c| {
            c.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        }),
        is_inline: disposition == "inline",
        content: decoded,
        modified: OffsetDateTime::now_utc(),
    });
}

fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    // Skip the preamble.
    let Some(start) = find(rest, delim.as_bytes()) else {
        return parts;
    };
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        let skip = if rest.starts_with(b"\r\n") {
            2
        } else if rest.starts_with(b"\n") {
            1
        } else {
            0
        };
        rest = &rest[skip..];
        match find(rest, delim.as_bytes()) {
            Some(end) => {
                let mut part = &rest[..end];
                if part.ends_with(b"\r\n") {
                    part = &part[..part.len() - 2];
                } else if part.ends_with(b"\n") {
                    part = &part[..part.len() - 1];
                }
                parts.push(part);
                rest = &rest[end + delim.len()..];
            }
            None => {
                parts.push(rest);
                break;
            }
        }
    }
    parts
}

fn decode_transfer(encoding: &str, body: &[u8]) -> Vec<u8> {
    match encoding.trim().to_ascii_lowercase().as_str() {
        "base64" => {
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            STANDARD.decode(&clean).unwrap_or_else(|_| body.to_vec())
        }
        "quoted-printable" => decode_qp(body, false),
        _ => body.to_vec(),
    }
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn decode_qp(body: &[u8], underscore_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'=' {
            if body.get(i + 1) == Some(&b'\r') && body.get(i + 2) == Some(&b'\n') {
                i += 3;
                continue;
            }
            if body.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (
                body.get(i + 1).and_then(|c| hex_val(*c)),
                body.get(i + 2).and_then(|c| hex_val(*c)),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(if underscore_space && b == b'_' {
            b' '
        } else {
            b
        });
        i += 1;
    }
    out
}

fn charset_decode(charset: &str, bytes: &[u8]) -> String {
    let cs = charset.to_ascii_lowercase();
    if cs == "iso-8859-1" || cs == "latin1" || cs == "windows-1252" {
        bytes.iter().map(|&b| char::from(b)).collect()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`).
pub fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, after) = rest.split_at(start);
        let decoded = decode_one_word(&after[2..]);
        match decoded {
            Some((text, consumed)) => {
                // Whitespace between adjacent encoded words is dropped (RFC 2047 §6.2).
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&text);
                rest = &after[2 + consumed..];
                last_was_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &after[2..];
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_one_word(s: &str) -> Option<(String, usize)> {
    let mut it = s.splitn(3, '?');
    let charset = it.next()?;
    let enc = it.next()?;
    let tail = it.next()?;
    let end = tail.find("?=")?;
    let text = &tail[..end];
    let bytes = match enc.to_ascii_uppercase().as_str() {
        "B" => STANDARD.decode(text.trim()).ok()?,
        "Q" => decode_qp(text.as_bytes(), true),
        _ => return None,
    };
    let consumed = charset.len() + 1 + enc.len() + 1 + end + 2;
    Some((charset_decode(charset, &bytes), consumed))
}

fn split_outside_quotes(value: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut angle = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                escaped = true;
                cur.push(c);
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '<' if !quoted => {
                angle = true;
                cur.push(c);
            }
            '>' if !quoted => {
                angle = false;
                cur.push(c);
            }
            c if c == sep && !quoted && !angle => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parses an address list header (`"Name" <a@b>, c@d`).
pub fn parse_addresses(value: &str) -> Vec<Address> {
    split_outside_quotes(value, ',')
        .into_iter()
        .filter_map(|entry| {
            let entry = entry.trim();
            if entry.is_empty() {
                return None;
            }
            if let (Some(lt), Some(gt)) = (entry.rfind('<'), entry.rfind('>'))
                && lt < gt
            {
                let email = entry[lt + 1..gt].trim().to_owned();
                let raw = entry[..lt].trim().trim_matches('"').replace("\\\"", "\"");
                let name = decode_words(&raw);
                return Some(Address {
                    name: if name.is_empty() { email.clone() } else { name },
                    email,
                });
            }
            let email = entry.split_whitespace().next()?.to_owned();
            email.contains('@').then(|| Address {
                name: email.clone(),
                email,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut msg = Message::new(OffsetDateTime::UNIX_EPOCH);
        msg.subject = "Grüße & more".to_owned();
        msg.body = "line one\nline two".to_owned();
        msg.from = Some(Address {
            name: "Alice \"A\" Anders".to_owned(),
            email: "alice@contoso.example".to_owned(),
        });
        msg.to = vec![Address {
            name: "Bob".to_owned(),
            email: "bob@contoso.example".to_owned(),
        }];
        msg.internet_message_id = "<x@contoso.example>".to_owned();
        msg.attachments.push(Attachment {
            id: String::new(),
            name: "a.bin".to_owned(),
            content_type: "application/octet-stream".to_owned(),
            content_id: None,
            is_inline: false,
            content: vec![0, 1, 2, 255],
            modified: OffsetDateTime::UNIX_EPOCH,
        });
        msg
    }

    #[test]
    fn render_then_parse_round_trips() {
        let msg = sample();
        let bytes = render(&msg);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("Subject: =?UTF-8?B?"));
        assert!(text.contains("\r\n"));
        let p = parse(&bytes);
        assert_eq!(p.subject, msg.subject);
        assert_eq!(p.from.unwrap(), msg.from.unwrap());
        assert_eq!(p.to, msg.to);
        assert_eq!(p.body.unwrap().0, "line one\r\nline two\r\n");
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].content, vec![0, 1, 2, 255]);
        assert_eq!(p.message_id.as_deref(), Some("<x@contoso.example>"));
    }

    #[test]
    fn parses_qp_and_encoded_words() {
        let raw = b"Subject: =?iso-8859-1?Q?caf=E9_au?= =?UTF-8?B?bGFpdA==?=\nFrom: x@y.example\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nsoft=\nbreak =C3=A9\n";
        let p = parse(raw);
        assert_eq!(p.subject, "café aulait");
        assert_eq!(p.from.unwrap().email, "x@y.example");
        assert_eq!(p.body.unwrap().0, "softbreak é\n");
    }
}

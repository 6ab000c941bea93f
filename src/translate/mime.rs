//! MIME for the Graph backend, read with the `mail-parser` crate: the sender check on a
//! `t:MimeContent` send, and the split of a MIME message too large for one Graph request into a
//! JSON draft plus attachments (uploaded through upload sessions when large).
//!
//! mail-parser reads a message from one byte slice (it does not stream), so a large MIME send
//! is read into memory once, up to [`MAX_SPLIT_MIME`]; attachments then become spools of their
//! own. This is the one place the translator holds a whole payload in memory.

use mail_parser::{MessageParser, MimeHeaders as _};

use super::errors::EwsFailure;
use super::request::{BodyType, FileAttachment, MessageSpec, Recipient};
use super::spool::SpoolData;

/// Largest MIME message the translator splits (it is held in memory while split).
pub const MAX_SPLIT_MIME: u64 = 64 * 1024 * 1024;

fn invalid() -> EwsFailure {
    EwsFailure::item(
        "ErrorMimeContentInvalid",
        "The MIME content of the message could not be read.",
    )
}

fn addresses(addr: Option<&mail_parser::Address<'_>>) -> Vec<Recipient> {
    addr.map(|a| {
        a.iter()
            .filter_map(|x| {
                x.address().map(|address| Recipient {
                    name: x.name().map(str::to_owned),
                    address: address.to_owned(),
                })
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The `From` and `Sender` addresses of a MIME message (for the send-as check).
pub fn senders(raw: &[u8]) -> Result<Vec<String>, EwsFailure> {
    let msg = MessageParser::default().parse(raw).ok_or_else(invalid)?;
    let mut out: Vec<String> = addresses(msg.from())
        .into_iter()
        .chain(addresses(msg.sender()))
        .map(|r| r.address)
        .collect();
    out.dedup();
    Ok(out)
}

/// Splits a MIME message into a JSON-able message and its attachments.
pub fn split(raw: &[u8]) -> Result<MessageSpec, EwsFailure> {
    let msg = MessageParser::default().parse(raw).ok_or_else(invalid)?;
    // mail-parser lists a text part as the HTML body too when there is no HTML: ask the part.
    let body = if msg.html_part(0).is_some_and(|p| p.is_text_html()) {
        msg.body_html(0).map(|b| (BodyType::Html, b.into_owned()))
    } else {
        msg.body_text(0).map(|b| (BodyType::Text, b.into_owned()))
    };
    let attachments = msg
        .attachments()
        .map(|part| {
            let content_type = part.content_type().map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            });
            FileAttachment {
                name: part.attachment_name().unwrap_or("attachment").to_owned(),
                content_type,
                content_id: part.content_id().map(str::to_owned),
                is_inline: part
                    .content_disposition()
                    .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline")),
                content: SpoolData::from_bytes(part.contents().to_vec()),
            }
        })
        .collect();
    let mut from = addresses(msg.from());
    let mut sender = addresses(msg.sender());
    Ok(MessageSpec {
        subject: msg.subject().map(str::to_owned),
        body,
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        bcc: addresses(msg.bcc()),
        reply_to: addresses(msg.reply_to()),
        from: (!from.is_empty()).then(|| from.remove(0)),
        sender: (!sender.is_empty()).then(|| sender.remove(0)),
        attachments,
        ..MessageSpec::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIME: &str = "From: Alice <alice@contoso.example>\r\nSender: sales@contoso.example\r\nTo: bob@contoso.example, Carol <carol@contoso.example>\r\nSubject: hello\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody text\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";

    #[test]
    fn senders_and_split() {
        assert_eq!(
            senders(MIME.as_bytes()).unwrap(),
            vec!["alice@contoso.example", "sales@contoso.example"]
        );
        let m = split(MIME.as_bytes()).unwrap();
        assert_eq!(m.subject.as_deref(), Some("hello"));
        assert_eq!(m.to.len(), 2);
        assert_eq!(m.to[1].name.as_deref(), Some("Carol"));
        assert_eq!(m.body.as_ref().map(|b| b.0), Some(BodyType::Text));
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.attachments[0].name, "a.pdf");
        assert_eq!(
            m.attachments[0].content_type.as_deref(),
            Some("application/pdf")
        );
        assert_eq!(
            m.attachments[0].content.read_all_blocking().unwrap(),
            &b"%PDF-"[..]
        );
    }
}

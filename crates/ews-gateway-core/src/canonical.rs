//! The canonical outbound form of what the gateway decided, and the checks that the client's
//! HTTP framing says nothing else.
//!
//! The gateway reads the body as UTF-8 XML and decides on the operation it finds there. What goes
//! upstream must make Exchange read exactly that: the client's `Content-Type` (media type,
//! charset, parameters, MTOM) is checked and replaced by the canonical one, and a `SOAPAction`
//! (or SOAP 1.2 `action=` parameter) must name the Body's operation and is then dropped, so no
//! dispatcher can act on another operation than the one the policy allowed. Pure functions over
//! header values; no hyper types.

use crate::rewrite::SoapVersion;
use crate::soap::NS_MESSAGES;

/// The Content-Type sent upstream for a SOAP 1.1 envelope.
pub const CONTENT_TYPE_SOAP11: &str = "text/xml; charset=utf-8";
/// The Content-Type sent upstream for a SOAP 1.2 envelope.
pub const CONTENT_TYPE_SOAP12: &str = "application/soap+xml; charset=utf-8";

/// Why the client's HTTP framing of the envelope was refused; each message is a sentence for a
/// SOAP fault (`ErrorInvalidRequest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// More than one Content-Type header field.
    #[error("The request has more than one Content-Type header; send exactly one.")]
    DuplicateContentType,
    /// The Content-Type does not parse as `type/subtype *(; name=value)`.
    #[error("The request's Content-Type could not be read: {0}.")]
    MalformedContentType(String),
    /// A media type other than the one for the envelope's SOAP version (MTOM included).
    #[error(
        "The request's media type '{got}' is not accepted; a SOAP {version} envelope must be sent as {want} (MTOM and other media types are not accepted)."
    )]
    MediaType {
        /// The client's media type.
        got: String,
        /// `1.1` or `1.2`.
        version: &'static str,
        /// The media type expected.
        want: &'static str,
    },
    /// A charset other than UTF-8.
    #[error("The request declares the charset '{0}'; only utf-8 is accepted.")]
    Charset(String),
    /// A parameter given twice or one the media type does not define.
    #[error("The request's Content-Type parameter '{0}' is not accepted (duplicated or unknown).")]
    Parameter(String),
    /// A compressed or otherwise encoded request body.
    #[error("The request body has the Content-Encoding '{0}'; send it unencoded.")]
    ContentEncoding(String),
    /// The SOAPAction or `action` names something other than the Body's operation.
    #[error(
        "The request's SOAP action '{got}' does not match its operation {operation}; send none or \"{NS_MESSAGES}/{operation}\"."
    )]
    ActionMismatch {
        /// The client's action (bounded, printable).
        got: String,
        /// The Body's operation.
        operation: String,
    },
    /// More than one SOAPAction header field.
    #[error("The request has more than one SOAPAction header; send at most one.")]
    DuplicateSoapAction,
}

/// The media type of a SOAP version and its canonical Content-Type.
fn expected(version: SoapVersion) -> (&'static str, &'static str, &'static str) {
    match version {
        SoapVersion::Soap11 => ("text/xml", "1.1", CONTENT_TYPE_SOAP11),
        SoapVersion::Soap12 => ("application/soap+xml", "1.2", CONTENT_TYPE_SOAP12),
    }
}

fn printable(text: &str) -> String {
    text.chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A parameter value: a token or a quoted string (RFC 9110 5.6.6), unquoted.
fn param_value(raw: &str) -> Result<String, FramingError> {
    let bad =
        || FramingError::MalformedContentType(format!("bad parameter value {}", printable(raw)));
    if let Some(inner) = raw.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or_else(bad)?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next().ok_or_else(bad)?),
                '"' => return Err(bad()),
                c => out.push(c),
            }
        }
        Ok(out)
    } else if is_token(raw) {
        Ok(raw.to_owned())
    } else {
        Err(bad())
    }
}

/// Whether `action` names `operation`: the EWS action URI, quoted or not, or empty (SOAP 1.1
/// `SOAPAction: ""` means "the request URI", no operation).
fn action_matches(action: &str, operation: &str) -> bool {
    let action = action.trim();
    let action = action
        .strip_prefix('"')
        .and_then(|a| a.strip_suffix('"'))
        .unwrap_or(action);
    action.is_empty()
        || action
            .strip_prefix(NS_MESSAGES)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|op| op == operation)
}

/// Checks the client's `Content-Type`, `Content-Encoding` and `SOAPAction` header values
/// against the envelope the gateway read (`version`, `operation`), and returns the one
/// Content-Type to send upstream. No Content-Type at all is accepted (the body was read as
/// UTF-8 and is labelled so upstream); SOAPAction is never forwarded.
pub fn check_framing(
    content_types: &[&[u8]],
    content_encodings: &[&[u8]],
    soap_actions: &[&[u8]],
    version: SoapVersion,
    operation: &str,
) -> Result<&'static str, FramingError> {
    let (want_media, version_name, canonical) = expected(version);
    for enc in content_encodings {
        let enc = String::from_utf8_lossy(enc);
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(FramingError::ContentEncoding(printable(enc.trim())));
        }
    }
    let mut action_param = None;
    match content_types {
        [] => {}
        [one] => {
            let text = std::str::from_utf8(one)
                .map_err(|_| FramingError::MalformedContentType("it is not ASCII".to_owned()))?;
            let mut parts = text.split(';');
            let media = parts.next().unwrap_or_default().trim();
            let (kind, sub) = media.split_once('/').unwrap_or((media, ""));
            if !is_token(kind) || !is_token(sub) {
                return Err(FramingError::MalformedContentType(format!(
                    "'{}' is not a media type",
                    printable(media)
                )));
            }
            if !media.eq_ignore_ascii_case(want_media) {
                return Err(FramingError::MediaType {
                    got: printable(media),
                    version: version_name,
                    want: want_media,
                });
            }
            let mut charset = None;
            for param in parts {
                let param = param.trim();
                let (name, value) = param.split_once('=').ok_or_else(|| {
                    FramingError::MalformedContentType(format!(
                        "the parameter '{}' has no value",
                        printable(param)
                    ))
                })?;
                let name = name.trim().to_ascii_lowercase();
                let value = param_value(value.trim())?;
                let slot = match name.as_str() {
                    "charset" => &mut charset,
                    "action" if version == SoapVersion::Soap12 => &mut action_param,
                    _ => return Err(FramingError::Parameter(printable(&name))),
                };
                if slot.replace(value).is_some() {
                    return Err(FramingError::Parameter(name));
                }
            }
            if let Some(charset) = charset
                && !charset.eq_ignore_ascii_case("utf-8")
            {
                return Err(FramingError::Charset(printable(&charset)));
            }
        }
        _ => return Err(FramingError::DuplicateContentType),
    }
    let soap_action = match soap_actions {
        [] => None,
        [one] => Some(String::from_utf8_lossy(one).into_owned()),
        _ => return Err(FramingError::DuplicateSoapAction),
    };
    for action in [soap_action, action_param].into_iter().flatten() {
        if !action_matches(&action, operation) {
            return Err(FramingError::ActionMismatch {
                got: printable(&action),
                operation: operation.to_owned(),
            });
        }
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ct: &[&str], action: &[&str], v: SoapVersion) -> Result<&'static str, FramingError> {
        let ct: Vec<&[u8]> = ct.iter().map(|s| s.as_bytes()).collect();
        let action: Vec<&[u8]> = action.iter().map(|s| s.as_bytes()).collect();
        check_framing(&ct, &[], &action, v, "FindItem")
    }

    #[test]
    fn what_clients_send_is_accepted_and_canonicalised() {
        use SoapVersion::*;
        for ct in [
            "text/xml; charset=utf-8",
            "text/xml; charset=UTF-8",
            "text/xml",
            "Text/XML;charset=\"utf-8\"",
        ] {
            assert_eq!(check(&[ct], &[], Soap11), Ok(CONTENT_TYPE_SOAP11), "{ct}");
        }
        assert_eq!(check(&[], &[], Soap11), Ok(CONTENT_TYPE_SOAP11));
        let action = format!("\"{NS_MESSAGES}/FindItem\"");
        assert_eq!(
            check(&["text/xml"], &[&action], Soap11),
            Ok(CONTENT_TYPE_SOAP11)
        );
        assert_eq!(
            check(&["text/xml"], &["\"\""], Soap11),
            Ok(CONTENT_TYPE_SOAP11)
        );
        let ct12 =
            format!("application/soap+xml; charset=utf-8; action=\"{NS_MESSAGES}/FindItem\"");
        assert_eq!(check(&[&ct12], &[], Soap12), Ok(CONTENT_TYPE_SOAP12));
    }

    #[test]
    fn anything_else_is_refused() {
        use SoapVersion::*;
        let refused = |ct: &[&str], action: &[&str], v| check(ct, action, v).unwrap_err();
        assert!(matches!(
            refused(&["text/xml; charset=utf-7"], &[], Soap11),
            FramingError::Charset(_)
        ));
        assert!(matches!(
            refused(&["text/xml; charset=utf-16"], &[], Soap11),
            FramingError::Charset(_)
        ));
        assert!(matches!(
            refused(&["text/xml; charset=utf-8; charset=utf-7"], &[], Soap11),
            FramingError::Parameter(_)
        ));
        assert!(matches!(
            refused(
                &["text/xml; charset=utf-8", "text/xml; charset=utf-7"],
                &[],
                Soap11
            ),
            FramingError::DuplicateContentType
        ));
        assert!(matches!(
            refused(
                &["multipart/related; type=\"application/xop+xml\"; boundary=x"],
                &[],
                Soap11
            ),
            FramingError::MediaType { .. }
        ));
        assert!(matches!(
            refused(&["application/soap+xml"], &[], Soap11),
            FramingError::MediaType { .. }
        ));
        assert!(matches!(
            refused(&["text/xml"], &[], Soap12),
            FramingError::MediaType { .. }
        ));
        assert!(matches!(
            refused(&["text/xml; boundary=x"], &[], Soap11),
            FramingError::Parameter(_)
        ));
        assert!(matches!(
            refused(&["text/xml, text/html"], &[], Soap11),
            FramingError::MalformedContentType(_)
        ));
        let other = format!("{NS_MESSAGES}/DeleteItem");
        assert!(matches!(
            refused(&["text/xml"], &[&other], Soap11),
            FramingError::ActionMismatch { .. }
        ));
        assert!(matches!(
            refused(&["text/xml"], &["FindItem"], Soap11),
            FramingError::ActionMismatch { .. }
        ));
        assert!(matches!(
            refused(&["text/xml"], &["\"\"", "\"\""], Soap11),
            FramingError::DuplicateSoapAction
        ));
        let ct12 = format!("application/soap+xml; action=\"{other}\"");
        assert!(matches!(
            refused(&[&ct12], &[], Soap12),
            FramingError::ActionMismatch { .. }
        ));
        let gz = check_framing(&[], &[b"gzip"], &[], Soap11, "FindItem");
        assert!(matches!(gz, Err(FramingError::ContentEncoding(_))));
    }
}

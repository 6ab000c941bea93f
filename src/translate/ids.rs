//! Item and folder ids: the EWS form (standard base64, `AAMk…`) and the Graph REST form (the same
//! bytes in the URL-safe alphabet), and the mailbox GUID both embed.
//!
//! Layout (as Exchange Online's ids decode): byte 0 the id storage type (0), byte 1 a version,
//! byte 2 the length of the mailbox GUID text (0x24 = 36), byte 3 zero, then the GUID as 36
//! ASCII characters, then the store's own part. The translator never trusts an id it has not
//! decoded: the GUID is what ties an id to a mailbox.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use uuid::Uuid;

/// Why an id is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not base64, or not the mailbox-GUID layout.
    #[error("Id is malformed.")]
    Malformed,
}

/// A decoded EWS/Graph item or folder id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedId {
    /// The EWS form (standard base64).
    pub ews: String,
    /// The mailbox GUID embedded in the id.
    pub mailbox_guid: Uuid,
}

impl ParsedId {
    /// The Graph REST form, for URLs.
    pub fn rest(&self) -> String {
        ews_to_rest(&self.ews)
    }
}

/// EWS alphabet → Graph REST alphabet (`+`→`-`, `/`→`_`).
pub fn ews_to_rest(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// Graph REST alphabet → EWS alphabet.
pub fn rest_to_ews(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect()
}

/// Longest id accepted (real ids are under 200 characters).
const MAX_ID_LEN: usize = 512;

/// Decodes an id in either alphabet and extracts its mailbox GUID.
pub fn parse(id: &str) -> Result<ParsedId, IdError> {
    let id = id.trim();
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(IdError::Malformed);
    }
    let ews = rest_to_ews(id);
    let bytes = STANDARD.decode(&ews).map_err(|_| IdError::Malformed)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[3] != 0 {
        return Err(IdError::Malformed);
    }
    let guid_len = bytes[2] as usize;
    if guid_len != 36 || bytes.len() < 4 + guid_len {
        return Err(IdError::Malformed);
    }
    let text = std::str::from_utf8(&bytes[4..4 + guid_len]).map_err(|_| IdError::Malformed)?;
    let mailbox_guid = Uuid::try_parse(text).map_err(|_| IdError::Malformed)?;
    Ok(ParsedId { ews, mailbox_guid })
}

/// The mailbox GUID of a Graph id (REST alphabet), e.g. the Inbox id that teaches a mailbox's GUID.
pub fn guid_of_rest(id: &str) -> Result<Uuid, IdError> {
    parse(id).map(|p| p.mailbox_guid)
}

#[cfg(test)]
pub(crate) fn make_id(guid: &str, rest: &[u8]) -> String {
    let mut bytes = vec![0u8, 3, 0x24, 0];
    bytes.extend_from_slice(guid.as_bytes());
    bytes.extend_from_slice(rest);
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";

    #[test]
    fn both_alphabets_decode_to_the_same_guid() {
        // Bytes chosen so the base64 contains both '+' and '/'.
        let ews = make_id(G, &[0xfb, 0xff, 0xbf, 1, 2, 3]);
        assert!(ews.starts_with("AAMk"));
        assert!(ews.contains('+') || ews.contains('/'), "{ews}");
        let rest = ews_to_rest(&ews);
        assert!(!rest.contains('+') && !rest.contains('/'));
        let a = parse(&ews).unwrap();
        let b = parse(&rest).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.mailbox_guid.to_string(), G);
        assert_eq!(a.rest(), rest);
        assert_eq!(rest_to_ews(&rest), ews);
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            "",
            "DUMMY",
            "AAMk",
            "!!!!",
            &STANDARD.encode(b"\x00\x03\x24\x00not-a-guid-not-a-guid-not-a-guid-xxxx"),
            &STANDARD.encode(b"\x01\x03\x24\x000f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"),
            &"A".repeat(1000),
        ] {
            assert_eq!(parse(bad), Err(IdError::Malformed), "{bad}");
        }
    }
}

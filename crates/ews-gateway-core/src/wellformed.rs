//! XML 1.0 (fifth edition) and Namespaces in XML 1.0 well-formedness rules that quick-xml does
//! not enforce by itself: the character set, names, start-tag syntax, the XML declaration,
//! processing-instruction targets, `]]>` in text and namespace declarations.
//!
//! The envelope scanner ([`crate::rewrite`]) applies these to everything it reads (the head) so
//! that a strict parser such as Exchange's .NET `XmlReader` never reads that part differently or
//! refuses what the gateway accepted. Pure functions over text; each returns the sentence for
//! the refusal.

/// The XML namespace, bound to `xml` and only to it.
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
/// The namespace of namespace declarations, never bindable.
pub const NS_XMLNS: &str = "http://www.w3.org/2000/xmlns/";

/// `Char` (production 2): what an XML 1.0 document may contain at all. Surrogates cannot occur
/// in a Rust `char`.
pub fn is_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The first character of valid UTF-8 `text` that is not an XML `Char`: its byte offset and
/// the character. Bytes only: C0 controls other than tab/LF/CR, and U+FFFE/U+FFFF
/// (`EF BF BE`/`EF BF BF`).
pub fn first_forbidden_char(text: &[u8]) -> Option<(usize, char)> {
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') {
            return Some((i, char::from(b)));
        }
        if b == 0xEF && text.get(i + 1) == Some(&0xBF) {
            match text.get(i + 2) {
                Some(0xBE) => return Some((i, '\u{FFFE}')),
                Some(0xBF) => return Some((i, '\u{FFFF}')),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// `Name` (production 5).
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

/// `NCName`: a `Name` without a colon.
pub fn is_ncname(name: &str) -> bool {
    !name.contains(':') && is_name(name)
}

/// `QName` (Namespaces production 7): `NCName` or `NCName:NCName`.
pub fn check_qname(name: &str) -> Result<(), String> {
    let ok = match name.split_once(':') {
        Some((prefix, local)) => is_ncname(prefix) && is_ncname(local),
        None => is_ncname(name),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("'{}' is not a valid XML name", printable(name)))
    }
}

/// Bounded, control-free rendering of untrusted text for a fault message.
fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Checks the syntax of a start or empty-element tag's content (between `<` and `>`, without
/// the empty tag's `/`): a QName, then attributes each preceded by whitespace, `Eq` with
/// optional whitespace, a quoted value without `<`. Entity and namespace checks are separate.
pub fn check_start_tag(content: &str) -> Result<(), String> {
    let bytes = content.as_bytes();
    let name_end = bytes
        .iter()
        .position(|&b| is_space(b))
        .unwrap_or(bytes.len());
    check_qname(&content[..name_end])?;
    let mut i = name_end;
    loop {
        let ws_start = i;
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        if i == bytes.len() {
            return Ok(());
        }
        if i == ws_start {
            return Err("attributes must be separated by whitespace".to_owned());
        }
        let name_start = i;
        while i < bytes.len() && !is_space(bytes[i]) && bytes[i] != b'=' {
            i += 1;
        }
        let name = &content[name_start..i];
        check_qname(name)?;
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            return Err(format!("the attribute '{}' has no value", printable(name)));
        }
        i += 1;
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        let quote = match bytes.get(i) {
            Some(&q @ (b'"' | b'\'')) => q,
            _ => return Err(format!("the value of '{}' is not quoted", printable(name))),
        };
        i += 1;
        let Some(len) = bytes[i..].iter().position(|&b| b == quote) else {
            return Err(format!("the value of '{}' is not closed", printable(name)));
        };
        if bytes[i..i + len].contains(&b'<') {
            return Err(format!("the value of '{}' contains '<'", printable(name)));
        }
        i += len + 1;
    }
}

/// Checks an end tag's content (after `</`, before `>`): a QName and optional whitespace.
pub fn check_end_tag(content: &str) -> Result<(), String> {
    check_qname(content.trim_end_matches([' ', '\t', '\r', '\n']))
}

/// Checks a namespace declaration (`xmlns` or `xmlns:prefix`, `prefix` being `None` for the
/// default namespace) against Namespaces in XML 1.0 section 3.
pub fn check_namespace_binding(prefix: Option<&str>, uri: &str) -> Result<(), String> {
    match prefix {
        Some("xmlns") => Err("the prefix 'xmlns' cannot be declared".to_owned()),
        Some("xml") if uri != NS_XML => {
            Err("the prefix 'xml' can only be bound to the XML namespace".to_owned())
        }
        Some("xml") => Ok(()),
        Some(p) if uri.is_empty() => Err(format!(
            "the prefix '{}' is declared with an empty namespace name (XML 1.0 cannot undeclare a prefix)",
            printable(p)
        )),
        _ if uri == NS_XML || uri == NS_XMLNS => Err(format!(
            "the namespace name '{uri}' is reserved and cannot be bound here"
        )),
        _ => Ok(()),
    }
}

/// Checks a processing instruction's content (after `<?`, before `?>`): its target is a Name
/// other than `xml` in any letter case, followed by whitespace or nothing.
pub fn check_pi(content: &str) -> Result<(), String> {
    let end = content.bytes().position(is_space).unwrap_or(content.len());
    let target = &content[..end];
    if !is_name(target) {
        return Err(format!(
            "'{}' is not a valid processing instruction target",
            printable(target)
        ));
    }
    if target.eq_ignore_ascii_case("xml") {
        return Err(
            "the processing instruction target 'xml' is reserved (an XML declaration is only allowed at the start of the document)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Checks an XML declaration's content (after `<?`, before `?>`, starting with `xml`) against
/// production 23 exactly: `version` first, then optional `encoding` and `standalone` in that
/// order, each preceded by whitespace. Returns the encoding name, if declared.
pub fn check_xml_decl(content: &str) -> Result<Option<&str>, String> {
    let bad = |why: &str| Err(format!("the XML declaration is invalid: {why}"));
    let Some(mut rest) = content.strip_prefix("xml") else {
        return bad("it does not start with 'xml'");
    };
    let mut seen = Vec::new();
    let mut encoding = None;
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.len() == rest.len() {
            return bad("pseudo-attributes must be separated by whitespace");
        }
        let Some(eq) = trimmed.find('=') else {
            return bad("a pseudo-attribute has no value");
        };
        let name = trimmed[..eq].trim_end_matches([' ', '\t', '\r', '\n']);
        let after = trimmed[eq + 1..].trim_start_matches([' ', '\t', '\r', '\n']);
        let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            return bad("a pseudo-attribute value is not quoted");
        };
        let Some(len) = after[1..].find(quote) else {
            return bad("a pseudo-attribute value is not closed");
        };
        let value = &after[1..1 + len];
        rest = &after[1 + len + 1..];
        let order = match name {
            "version" => 0,
            "encoding" => 1,
            "standalone" => 2,
            _ => return bad("only version, encoding and standalone are allowed"),
        };
        if seen.last().is_some_and(|&last| last >= order) || (seen.is_empty() && order != 0) {
            return bad("version must come first, then encoding, then standalone, each once");
        }
        seen.push(order);
        match order {
            0 if value != "1.0" => {
                return Err(format!(
                    "XML version '{}' is not supported, only 1.0",
                    printable(value)
                ));
            }
            1 => {
                let mut chars = value.chars();
                let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                    && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !valid {
                    return bad("the encoding name is invalid");
                }
                encoding = Some(value);
            }
            2 if value != "yes" && value != "no" => return bad("standalone must be yes or no"),
            _ => {}
        }
    }
    if seen.is_empty() {
        return bad("it has no version");
    }
    Ok(encoding)
}

/// Checks raw character data (as written, before references are resolved): `]]>` may not
/// appear in it.
pub fn check_text(raw: &str) -> Result<(), String> {
    if raw.contains("]]>") {
        Err("the text contains ']]>', which is only allowed to end a CDATA section".to_owned())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters() {
        assert_eq!(first_forbidden_char(b"ab\tc\r\n"), None);
        assert_eq!(first_forbidden_char(b"ab\x01"), Some((2, '\u{1}')));
        assert_eq!(
            first_forbidden_char("x\u{FFFE}".as_bytes()),
            Some((1, '\u{FFFE}'))
        );
        assert_eq!(first_forbidden_char("\u{FFFD}\u{10000}".as_bytes()), None);
        assert!(!is_char('\u{FFFF}') && !is_char('\0') && is_char('\u{E000}'));
    }

    #[test]
    fn names_and_tags() {
        assert!(check_qname("t:ExchangeImpersonation").is_ok());
        for bad in ["a:b:c", ":a", "a:", "1a", "a&#x3A;b", "a&b", ""] {
            assert!(check_qname(bad).is_err(), "{bad}");
        }
        assert!(check_start_tag("a x=\"1\" y = '2' ").is_ok());
        assert!(check_start_tag("a x=\"1\"y=\"2\"").is_err());
        assert!(check_start_tag("a x=\"<\"").is_err());
        assert!(check_start_tag("a x").is_err());
        assert!(check_start_tag("a x=1").is_err());
        assert!(check_end_tag("a:b  ").is_ok());
        assert!(check_end_tag("a b").is_err());
    }

    #[test]
    fn declarations_and_pis() {
        assert_eq!(
            check_xml_decl("xml version=\"1.0\" encoding='utf-8' standalone=\"yes\" "),
            Ok(Some("utf-8"))
        );
        for bad in [
            "xml",
            "xml encoding=\"utf-8\" version=\"1.0\"",
            "xml version=\"1.1\"",
            "xml version=\"1.0\"encoding=\"utf-8\"",
            "xml version=\"1.0\" standalone=\"maybe\"",
            "xml version=\"1.0\" foo=\"x\"",
        ] {
            assert!(check_xml_decl(bad).is_err(), "{bad}");
        }
        assert!(check_pi("xml-stylesheet href='a'").is_ok());
        assert!(check_pi("XML x").is_err());
        assert!(check_pi("xMl").is_err());
        assert!(check_pi("1x").is_err());
    }

    #[test]
    fn namespace_bindings() {
        assert!(check_namespace_binding(Some("p"), "").is_err());
        assert!(check_namespace_binding(None, "").is_ok());
        assert!(check_namespace_binding(Some("xml"), NS_XML).is_ok());
        assert!(check_namespace_binding(Some("xml"), "urn:x").is_err());
        assert!(check_namespace_binding(Some("x"), NS_XML).is_err());
        assert!(check_namespace_binding(Some("xmlns"), NS_XMLNS).is_err());
        assert!(check_namespace_binding(None, NS_XMLNS).is_err());
    }

    #[test]
    fn text() {
        assert!(check_text("a]]b>").is_ok());
        assert!(check_text("a]]>b").is_err());
    }
}

//! EWS response writer: the envelope with `ServerVersionInfo`, `ResponseMessages` and their
//! children in the order messages.xsd requires (`MessageText`, `ResponseCode`,
//! `DescriptiveLinkKey`, `MessageXml`, then the payload). Output is deterministic (fixed `s`,
//! `m`, `t` prefixes), which keeps golden tests byte-stable.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::errors::EwsFailure;
use crate::soap::{NS_MESSAGES, NS_SOAP, NS_TYPES};

/// Builds one EWS response document.
pub struct EwsWriter {
    w: Writer<Vec<u8>>,
}

/// `ResponseClass` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Success.
    Success,
    /// Warning.
    Warning,
    /// Error.
    Error,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Warning => "Warning",
            Self::Error => "Error",
        }
    }
}

impl Default for EwsWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EwsWriter {
    /// Starts the envelope: declaration, `s:Header/h:ServerVersionInfo`, `s:Body`.
    pub fn new() -> Self {
        let mut this = Self {
            w: Writer::new(Vec::with_capacity(1024)),
        };
        this.event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)));
        this.start("s:Envelope", &[("xmlns:s", NS_SOAP)]);
        this.start("s:Header", &[]);
        // As Exchange Online answers (ews-protocol.md A3); clients read Version from it.
        this.empty(
            "h:ServerVersionInfo",
            &[
                ("MajorVersion", "15"),
                ("MinorVersion", "20"),
                ("MajorBuildNumber", "8769"),
                ("MinorBuildNumber", "21"),
                ("Version", "V2018_01_08"),
                ("xmlns:h", NS_TYPES),
                ("xmlns", NS_TYPES),
                ("xmlns:xsd", "http://www.w3.org/2001/XMLSchema"),
                ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
            ],
        );
        this.end("s:Header");
        this.start("s:Body", &[]);
        this
    }

    fn event(&mut self, event: Event<'_>) {
        // Writing into a Vec cannot fail.
        let _ = self.w.write_event(event);
    }

    /// `<name attrs…>`.
    pub fn start(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut el = BytesStart::new(name);
        for (k, v) in attrs {
            el.push_attribute((*k, *v));
        }
        self.event(Event::Start(el));
    }

    /// `</name>`.
    pub fn end(&mut self, name: &str) {
        self.event(Event::End(BytesEnd::new(name)));
    }

    /// `<name attrs…/>`.
    pub fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut el = BytesStart::new(name);
        for (k, v) in attrs {
            el.push_attribute((*k, *v));
        }
        self.event(Event::Empty(el));
    }

    /// `<name>text</name>` (escaped).
    pub fn text_element(&mut self, name: &str, text: &str) {
        self.start(name, &[]);
        self.event(Event::Text(BytesText::new(text)));
        self.end(name);
    }

    /// Opens `m:{op}Response` and `m:ResponseMessages`.
    pub fn open_response(&mut self, op: &str) {
        self.start(
            &format!("m:{op}Response"),
            &[("xmlns:m", NS_MESSAGES), ("xmlns:t", NS_TYPES)],
        );
        self.start("m:ResponseMessages", &[]);
    }

    /// Closes what [`open_response`](Self::open_response) opened.
    pub fn close_response(&mut self, op: &str) {
        self.end("m:ResponseMessages");
        self.end(&format!("m:{op}Response"));
    }

    /// Opens `m:{message}` with its class, message text and code, in schema order.
    pub fn open_message(&mut self, message: &str, class: Class, code: &str, text: Option<&str>) {
        self.start(
            &format!("m:{message}"),
            &[("ResponseClass", class.as_str())],
        );
        if let Some(text) = text {
            self.text_element("m:MessageText", text);
        }
        self.text_element("m:ResponseCode", code);
    }

    /// A whole success message: `NoError`, then `payload`.
    pub fn success(&mut self, message: &str, payload: impl FnOnce(&mut Self)) {
        self.open_message(message, Class::Success, "NoError", None);
        payload(self);
        self.end(&format!("m:{message}"));
    }

    /// A whole error message (per-item failure), with `DescriptiveLinkKey` 0 as Exchange sends.
    pub fn failure(&mut self, message: &str, failure: &EwsFailure) {
        self.open_message(message, Class::Error, failure.code, Some(&failure.message));
        self.text_element("m:DescriptiveLinkKey", "0");
        self.end(&format!("m:{message}"));
    }

    /// Ends the envelope and returns the document.
    pub fn finish(mut self) -> Vec<u8> {
        self.end("s:Body");
        self.end("s:Envelope");
        self.w.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_header_and_schema_order() {
        let mut w = EwsWriter::new();
        w.open_response("GetFolder");
        w.failure(
            "GetFolderResponseMessage",
            &EwsFailure::item("ErrorItemNotFound", "a < b"),
        );
        w.success("GetFolderResponseMessage", |w| {
            w.start("m:Folders", &[]);
            w.end("m:Folders");
        });
        w.close_response("GetFolder");
        let xml = String::from_utf8(w.finish()).unwrap();
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope"));
        assert!(xml.contains("<h:ServerVersionInfo MajorVersion=\"15\" MinorVersion=\"20\""));
        let order = [
            "<m:MessageText>a &lt; b</m:MessageText>",
            "<m:ResponseCode>ErrorItemNotFound</m:ResponseCode>",
            "<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>",
            "ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:Folders>",
        ];
        let mut at = 0;
        for part in order {
            let pos = xml[at..]
                .find(part)
                .unwrap_or_else(|| panic!("{part} in order: {xml}"));
            at += pos;
        }
        assert!(xml.ends_with("</m:GetFolderResponse></s:Body></s:Envelope>"));
    }
}

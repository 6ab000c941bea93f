//! SOAP constants and fault envelopes shared by the gateway and the simulator.
//!
//! EWS clients (exchangelib, the EWS Managed API, ews-javascript-api, DavMail) read faults from
//! `s:Fault/detail/e:ResponseCode` and `e:Message`; the shape here is the one Exchange Online sends.

/// SOAP 1.1 envelope namespace.
pub const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2 envelope namespace.
pub const NS_SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
/// EWS messages namespace.
pub const NS_MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
/// EWS types namespace.
pub const NS_TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
/// EWS errors namespace (fault detail).
pub const NS_ERRORS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// Content type EWS answers with; DavMail ignores bodies with any other value.
pub const CONTENT_TYPE_XML: &str = "text/xml; charset=utf-8";

/// Escapes text for use inside XML element content or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// Builds an EWS SOAP fault envelope, as Exchange Online sends it (HTTP 500).
///
/// `message_xml` holds `(Name, Value)` pairs rendered as `t:MessageXml/t:Value`.
pub fn fault_envelope(code: &str, message: &str, message_xml: &[(&str, &str)]) -> String {
    let code = escape(code);
    let message = escape(message);
    let mut detail_extra = String::new();
    if !message_xml.is_empty() {
        detail_extra.push_str(&format!("<t:MessageXml xmlns:t=\"{NS_TYPES}\">"));
        for (name, value) in message_xml {
            detail_extra.push_str(&format!(
                "<t:Value Name=\"{}\">{}</t:Value>",
                escape(name),
                escape(value)
            ));
        }
        detail_extra.push_str("</t:MessageXml>");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<s:Envelope xmlns:s=\"{NS_SOAP}\"><s:Body><s:Fault>\
<faultcode xmlns:a=\"{NS_TYPES}\">a:{code}</faultcode>\
<faultstring xml:lang=\"en-US\">{message}</faultstring>\
<detail><e:ResponseCode xmlns:e=\"{NS_ERRORS}\">{code}</e:ResponseCode>\
<e:Message xmlns:e=\"{NS_ERRORS}\">{message}</e:Message>{detail_extra}</detail>\
</s:Fault></s:Body></s:Envelope>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_carries_code_message_and_escaped_values() {
        let xml = fault_envelope(
            "ErrorServerBusy",
            "a < b",
            &[("BackOffMilliseconds", "5000")],
        );
        assert!(xml.contains("<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">a:ErrorServerBusy</faultcode>"));
        assert!(xml.contains("<e:Message xmlns:e=\"http://schemas.microsoft.com/exchange/services/2006/errors\">a &lt; b</e:Message>"));
        assert!(xml.contains("<t:Value Name=\"BackOffMilliseconds\">5000</t:Value>"));
    }
}

/// How an `ExchangeImpersonation/ConnectingSID` names the mailbox to act as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectingSidKind {
    /// `t:PrincipalName` (UPN).
    PrincipalName,
    /// `t:SID` (SDDL form).
    Sid,
    /// `t:PrimarySmtpAddress`.
    PrimarySmtpAddress,
    /// `t:SmtpAddress` (any proxy address).
    SmtpAddress,
}

impl ConnectingSidKind {
    /// The element local name in the EWS types namespace.
    pub fn element_name(self) -> &'static str {
        match self {
            Self::PrincipalName => "PrincipalName",
            Self::Sid => "SID",
            Self::PrimarySmtpAddress => "PrimarySmtpAddress",
            Self::SmtpAddress => "SmtpAddress",
        }
    }

    /// The kind for an element local name, if it is one of the four.
    pub fn from_element_name(local: &str) -> Option<Self> {
        match local {
            "PrincipalName" => Some(Self::PrincipalName),
            "SID" => Some(Self::Sid),
            "PrimarySmtpAddress" => Some(Self::PrimarySmtpAddress),
            "SmtpAddress" => Some(Self::SmtpAddress),
            _ => None,
        }
    }
}

/// The identity inside an `ExchangeImpersonation` header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectingSid {
    /// Which of the four forms.
    pub kind: ConnectingSidKind,
    /// The value (address, UPN or SID), trimmed.
    pub value: String,
}

impl ConnectingSid {
    /// The header element, self-contained (declares its own `t` prefix) so that it can be
    /// placed under any `Header` whatever prefixes the client bound.
    pub fn to_header_xml(&self) -> String {
        let name = self.kind.element_name();
        format!(
            "<t:ExchangeImpersonation xmlns:t=\"{NS_TYPES}\"><t:ConnectingSID><t:{name}>{}</t:{name}></t:ConnectingSID></t:ExchangeImpersonation>",
            escape(&self.value)
        )
    }
}

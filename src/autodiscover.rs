//! Autodiscover answered by the gateway itself, so clients that discover their EWS URL stay on
//! the gateway instead of going to Exchange: POX (`/autodiscover/autodiscover.xml`), SOAP
//! (`/autodiscover/autodiscover.svc`, GetUserSettings) and v2 JSON
//! (`/autodiscover/autodiscover.json/v1.0/{address}?Protocol=EWS`).
//!
//! POX and SOAP need Basic credentials and answer only for mailboxes the caller may act as; v2
//! is unauthenticated and answers the same for every address, so it reveals nothing about which
//! mailboxes exist. Nothing here goes upstream. Free of hyper types.

use crate::auth::Principal;
use crate::policy;
use crate::soap::escape;
use ews_gateway_core::xml::{self, Element};

const POX_REQUEST: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006";
const POX_RESPONSE: &str = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";
const POX_OUTLOOK: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";
const AUTODISCOVER: &str = "http://schemas.microsoft.com/exchange/2010/Autodiscover";
const SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// Which Autodiscover flavour a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// POX.
    Pox,
    /// SOAP GetUserSettings.
    Soap,
    /// v2 JSON.
    Json,
}

/// The flavour for a request path (case-insensitive), if it is an Autodiscover path.
pub fn flavor(path: &str) -> Option<Flavor> {
    let lower = path.to_ascii_lowercase();
    match lower.as_str() {
        "/autodiscover/autodiscover.xml" => Some(Flavor::Pox),
        "/autodiscover/autodiscover.svc" => Some(Flavor::Soap),
        p if p == "/autodiscover/autodiscover.json"
            || p.starts_with("/autodiscover/autodiscover.json/v1.0/") =>
        {
            Some(Flavor::Json)
        }
        _ => None,
    }
}

/// A POX answer for `principal` (the body is the client's request).
pub fn pox(principal: &Principal, body: &[u8], ews_url: &str) -> String {
    let email = xml::parse(body)
        .ok()
        .and_then(|root| {
            root.path(&[(POX_REQUEST, "Request"), (POX_REQUEST, "EMailAddress")])
                .map(Element::text)
        })
        .unwrap_or_else(|| principal.mailbox.clone());
    if !policy::may_act_as(principal, &email) {
        return format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"{POX_RESPONSE}\"><Response><Error Time=\"00:00:00\" Id=\"1\"><ErrorCode>500</ErrorCode><Message>The email address can't be found.</Message><DebugData /></Error></Response></Autodiscover>"
        );
    }
    let email = escape(&email);
    let url = escape(ews_url);
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"{POX_RESPONSE}\"><Response xmlns=\"{POX_OUTLOOK}\"><User><DisplayName>{email}</DisplayName><AutoDiscoverSMTPAddress>{email}</AutoDiscoverSMTPAddress></User><Account><AccountType>email</AccountType><Action>settings</Action><MicrosoftOnline>False</MicrosoftOnline><Protocol><Type>EXCH</Type><EwsUrl>{url}</EwsUrl></Protocol><Protocol><Type>EXPR</Type><EwsUrl>{url}</EwsUrl></Protocol></Account></Response></Autodiscover>"
    )
}

/// A SOAP GetUserSettings answer for `principal`, or `None` when the request is not one.
pub fn soap(principal: &Principal, body: &[u8], ews_url: &str) -> Option<String> {
    let root = xml::parse(body).ok()?;
    let request = root.path(&[
        (SOAP, "Body"),
        (AUTODISCOVER, "GetUserSettingsRequestMessage"),
        (AUTODISCOVER, "Request"),
    ])?;
    let mailboxes: Vec<String> = request
        .child(AUTODISCOVER, "Users")?
        .children_named(AUTODISCOVER, "User")
        .filter_map(|u| u.child(AUTODISCOVER, "Mailbox").map(Element::text))
        .collect();
    let settings: Vec<String> = request
        .child(AUTODISCOVER, "RequestedSettings")
        .map(|s| {
            s.children_named(AUTODISCOVER, "Setting")
                .map(Element::text)
                .collect()
        })
        .unwrap_or_default();
    let mut responses = String::new();
    for mailbox in &mailboxes {
        if !policy::may_act_as(principal, mailbox) {
            responses.push_str(&format!(
                "<UserResponse><ErrorCode>InvalidUser</ErrorCode><ErrorMessage>Invalid user: '{}'</ErrorMessage><RedirectTarget i:nil=\"true\" /><UserSettingErrors /><UserSettings /></UserResponse>",
                escape(mailbox)
            ));
            continue;
        }
        let mut found = String::new();
        let mut missing = String::new();
        for name in &settings {
            let value = match name.as_str() {
                "ExternalEwsUrl" | "InternalEwsUrl" => Some(ews_url.to_owned()),
                "AutoDiscoverSMTPAddress" | "UserDisplayName" => Some(mailbox.clone()),
                "EwsSupportedSchemas" => Some("Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, Exchange2013, Exchange2013_SP1, Exchange2016".to_owned()),
                "ExternalEwsVersion" | "CasVersion" => Some("15.20.7452.28".to_owned()),
                _ => None,
            };
            match value {
                Some(v) => found.push_str(&format!(
                    "<UserSetting i:type=\"StringSetting\"><Name>{}</Name><Value>{}</Value></UserSetting>",
                    escape(name),
                    escape(&v)
                )),
                None => missing.push_str(&format!(
                    "<UserSettingError><ErrorCode>SettingIsNotAvailable</ErrorCode><ErrorMessage>User setting '{0}' is not available. </ErrorMessage><SettingName>{0}</SettingName></UserSettingError>",
                    escape(name)
                )),
            }
        }
        responses.push_str(&format!(
            "<UserResponse><ErrorCode>NoError</ErrorCode><ErrorMessage>No error.</ErrorMessage><RedirectTarget i:nil=\"true\" /><UserSettingErrors>{missing}</UserSettingErrors><UserSettings>{found}</UserSettings></UserResponse>"
        ));
    }
    Some(format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{SOAP}\" xmlns:a=\"http://www.w3.org/2005/08/addressing\"><s:Header><a:Action s:mustUnderstand=\"1\">http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettingsResponse</a:Action><h:ServerVersionInfo xmlns:h=\"{AUTODISCOVER}\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><h:MajorVersion>15</h:MajorVersion><h:MinorVersion>20</h:MinorVersion><h:MajorBuildNumber>7452</h:MajorBuildNumber><h:MinorBuildNumber>28</h:MinorBuildNumber><h:Version>Exchange2015</h:Version></h:ServerVersionInfo></s:Header><s:Body><GetUserSettingsResponseMessage xmlns=\"{AUTODISCOVER}\"><Response xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><ErrorCode>NoError</ErrorCode><ErrorMessage /><UserResponses>{responses}</UserResponses></Response></GetUserSettingsResponseMessage></s:Body></s:Envelope>"
    ))
}

/// A v2 JSON answer: `Ok(body)` for Protocol=EWS (any casing), `Err(body)` (HTTP 400) otherwise.
pub fn json(query: Option<&str>, ews_url: &str) -> Result<String, String> {
    let params: Vec<(String, String)> = query
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let protocol = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("protocol"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if protocol.eq_ignore_ascii_case("ews") {
        Ok(serde_json::json!({ "Protocol": protocol, "Url": ews_url }).to_string())
    } else {
        Err(serde_json::json!({
            "ErrorCode": "InvalidProtocol",
            "ErrorMessage": format!("The given protocol value '{protocol}' is invalid. Supported values are 'EWS'"),
        })
        .to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MailboxPattern;

    fn alice() -> Principal {
        Principal {
            name: "alice@c.example".into(),
            mailbox: "alice@c.example".into(),
            may_impersonate: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn paths() {
        assert_eq!(flavor("/Autodiscover/Autodiscover.xml"), Some(Flavor::Pox));
        assert_eq!(flavor("/autodiscover/autodiscover.svc"), Some(Flavor::Soap));
        assert_eq!(
            flavor("/autodiscover/autodiscover.json/v1.0/a@b.example"),
            Some(Flavor::Json)
        );
        assert_eq!(flavor("/autodiscover/autodiscover.svc/wssecurity"), None);
    }

    #[test]
    fn pox_answers_only_for_mailboxes_the_caller_may_act_as() {
        let req = |e: &str| {
            format!(
                "<Autodiscover xmlns=\"{POX_REQUEST}\"><Request><EMailAddress>{e}</EMailAddress><AcceptableResponseSchema>{POX_OUTLOOK}</AcceptableResponseSchema></Request></Autodiscover>"
            )
        };
        let ok = pox(
            &alice(),
            req("alice@c.example").as_bytes(),
            "https://gw/EWS/Exchange.asmx",
        );
        assert!(ok.contains("<EwsUrl>https://gw/EWS/Exchange.asmx</EwsUrl>"));
        let no = pox(
            &alice(),
            req("bob@c.example").as_bytes(),
            "https://gw/EWS/Exchange.asmx",
        );
        assert!(!no.contains("EwsUrl") && no.contains("<ErrorCode>500</ErrorCode>"));
        let mut svc = alice();
        svc.may_impersonate = vec![MailboxPattern::parse("*@c.example").unwrap()];
        assert!(pox(&svc, req("bob@c.example").as_bytes(), "u").contains("<EwsUrl>u</EwsUrl>"));
    }

    #[test]
    fn json_needs_the_ews_protocol() {
        assert_eq!(
            json(Some("Protocol=EWS"), "u").unwrap(),
            r#"{"Protocol":"EWS","Url":"u"}"#
        );
        assert!(
            json(Some("Protocol=ActiveSync"), "u")
                .unwrap_err()
                .contains("InvalidProtocol")
        );
    }
}

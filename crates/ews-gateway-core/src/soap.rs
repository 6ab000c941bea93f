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

/// The EWS operations (local names of the first child of `Body`), from the EWS reference.
/// Used to check the users file's operation lists and to bound metric labels.
pub const EWS_OPERATIONS: &[&str] = &[
    "AddDelegate",
    "AddDistributionGroupToImList",
    "AddImContactToGroup",
    "AddImGroup",
    "AddNewImContactToGroup",
    "AddNewTelUriContactToGroup",
    "ApplyConversationAction",
    "ArchiveItem",
    "ConvertId",
    "CopyFolder",
    "CopyItem",
    "CreateAttachment",
    "CreateFolder",
    "CreateFolderPath",
    "CreateItem",
    "CreateManagedFolder",
    "CreateUserConfiguration",
    "DeleteAttachment",
    "DeleteDelegate",
    "DeleteFolder",
    "DeleteItem",
    "DeleteUserConfiguration",
    "DisableApp",
    "DisconnectPhoneCall",
    "EmptyFolder",
    "ExpandDL",
    "ExportItems",
    "FindConversation",
    "FindFolder",
    "FindItem",
    "FindMessageTrackingReport",
    "FindPeople",
    "GetAppManifests",
    "GetAppMarketplaceUrl",
    "GetAttachment",
    "GetCallInfo",
    "GetClientAccessToken",
    "GetConversationItems",
    "GetDelegate",
    "GetDiscoverySearchConfiguration",
    "GetEvents",
    "GetFolder",
    "GetHoldOnMailboxes",
    "GetImItemList",
    "GetImItems",
    "GetInboxRules",
    "GetItem",
    "GetMailTips",
    "GetMessageTrackingReport",
    "GetNonIndexableItemDetails",
    "GetNonIndexableItemStatistics",
    "GetPasswordExpirationDate",
    "GetPersona",
    "GetPhoneCallInformation",
    "GetReminders",
    "GetRoomLists",
    "GetRooms",
    "GetSearchableMailboxes",
    "GetServerTimeZones",
    "GetServiceConfiguration",
    "GetSharingFolder",
    "GetSharingMetadata",
    "GetStreamingEvents",
    "GetUserAvailability",
    "GetUserConfiguration",
    "GetUserOofSettings",
    "GetUserPhoto",
    "GetUserRetentionPolicyTags",
    "InstallApp",
    "MarkAllItemsAsRead",
    "MarkAsJunk",
    "MoveFolder",
    "MoveItem",
    "PerformReminderAction",
    "PlayOnPhone",
    "RefreshSharingFolder",
    "RemoveContactFromIm",
    "RemoveDelegate",
    "RemoveDistributionGroupFromImList",
    "RemoveImContactFromGroup",
    "RemoveImGroup",
    "ReportMessage",
    "ResolveNames",
    "SearchMailboxes",
    "SendItem",
    "SetHoldOnMailboxes",
    "SetImGroup",
    "SetImListMigrationCompleted",
    "SetUserOofSettings",
    "SetUserPhoto",
    "Subscribe",
    "SyncFolderHierarchy",
    "SyncFolderItems",
    "UninstallApp",
    "Unsubscribe",
    "UpdateDelegate",
    "UpdateFolder",
    "UpdateInboxRules",
    "UpdateItem",
    "UpdateUserConfiguration",
    "UploadItems",
];

/// The operation's canonical name when it is a known EWS operation (case-sensitive, as the
/// schema is), for bounded metric labels and policy checks.
pub fn known_operation(name: &str) -> Option<&'static str> {
    EWS_OPERATIONS
        .binary_search(&name)
        .ok()
        .map(|i| EWS_OPERATIONS[i])
}

/// The last frame of an EWS streaming-notification response, as Exchange sends it when a
/// connection ends: clients then reconnect with GetStreamingEvents.
pub fn streaming_closed_frame() -> String {
    format!(
        "<Envelope xmlns=\"{NS_SOAP}\"><Body><m:GetStreamingEventsResponse xmlns:m=\"{NS_MESSAGES}\" xmlns:t=\"{NS_TYPES}\"><m:ResponseMessages><m:GetStreamingEventsResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:ConnectionStatus>Closed</m:ConnectionStatus></m:GetStreamingEventsResponseMessage></m:ResponseMessages></m:GetStreamingEventsResponse></Body></Envelope>"
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

    #[test]
    fn operations_are_sorted_and_found() {
        assert!(
            EWS_OPERATIONS.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert_eq!(known_operation("FindItem"), Some("FindItem"));
        assert_eq!(known_operation("finditem"), None);
        assert_eq!(known_operation("Evil"), None);
    }
}

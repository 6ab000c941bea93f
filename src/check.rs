//! `ews-gateway check`: validates the configuration, acquires each tenant's token and explains
//! its claims, optionally makes one harmless EWS call as a mailbox through the real forward path,
//! and turns every failure into a sentence that says what to fix.

use std::path::Path;
use std::sync::Arc;

use http_body_util::BodyExt;
use serde::Serialize;

use crate::auth::Principal;
use crate::backend::{AuthorisedCall, RequestBody};
use crate::config::{Config, ConfigError};
use crate::rewrite::{PrefixScanner, RewriteLimits};
use crate::soap::{ConnectingSid, ConnectingSidKind, NS_ERRORS, NS_MESSAGES, NS_TYPES};
use crate::token::TokenFindings;

/// Everything `check` found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Whether everything works.
    pub ok: bool,
    /// Configuration problems (nothing else is tried when there are any).
    pub config_problems: Vec<String>,
    /// One entry per tenant.
    pub tenants: Vec<TenantReport>,
    /// The EWS call made with `--mailbox`.
    pub mailbox: Option<MailboxReport>,
    /// Exchange Online PowerShell an administrator runs for this app.
    pub powershell: Vec<String>,
}

/// A tenant's token.
#[derive(Debug, Default, Serialize)]
pub struct TenantReport {
    /// Tenant id as configured.
    pub tenant_id: String,
    /// App id.
    pub client_id: String,
    /// Whether a token was obtained.
    pub ok: bool,
    /// What the token says.
    pub token: Option<TokenFindings>,
    /// The failure, if any.
    pub error: Option<String>,
    /// What to do about it.
    pub fix: Option<String>,
}

/// The EWS call as a mailbox.
#[derive(Debug, Default, Serialize)]
pub struct MailboxReport {
    /// The mailbox.
    pub mailbox: String,
    /// Whether the call succeeded.
    pub ok: bool,
    /// What happened.
    pub detail: String,
    /// What to do about it.
    pub fix: Option<String>,
}

/// Known failure signatures and their fixes.
const FIXES: &[(&str, &str)] = &[
    (
        "AADSTS7000215",
        "The client secret is wrong: use the secret's Value (not its Secret ID) from Entra admin center > App registrations > the app > Certificates & secrets.",
    ),
    (
        "AADSTS7000222",
        "The client secret has expired: create a new one, add it as a [[tenant.credential]], then remove the old one (or move to a certificate).",
    ),
    (
        "AADSTS700016",
        "The app id is not registered in this tenant: check client_id and tenant_id; the app must exist (or be consented) in this tenant and cloud.",
    ),
    (
        "AADSTS90002",
        "The tenant was not found: check tenant_id and that the authority is the tenant's cloud.",
    ),
    (
        "AADSTS900023",
        "The tenant id is malformed: use the tenant GUID or its initial domain.",
    ),
    (
        "AADSTS700027",
        "The certificate assertion was refused: upload the certificate's public part to the app registration (Certificates & secrets), check that the key file matches it, and that the certificate has not expired.",
    ),
    (
        "AADSTS700024",
        "The client assertion's time range was refused: check the gateway host's clock.",
    ),
    (
        "AADSTS1002012",
        "The scope must be a resource followed by /.default, e.g. https://outlook.office365.com/.default.",
    ),
    (
        "AADSTS70011",
        "The scope is invalid: use exactly one resource followed by /.default.",
    ),
    (
        "AADSTS500011",
        "The resource was not found in the tenant: check the scope's host matches the tenant's cloud (e.g. outlook.office365.us for GCC High) and that Exchange Online is provisioned.",
    ),
    (
        "2000008",
        "The token carries no permission for EWS: grant admin consent for the application permission full_access_as_app (API permissions > Office 365 Exchange Online), or assign RBAC for Applications (New-ManagementRoleAssignment -Role \"Application EWS.AccessAsApp\").",
    ),
    (
        "2000003",
        "The token is for another audience: the scope must be https://outlook.office365.com/.default for Exchange Online, or the on-premises EWS host with hybrid modern authentication.",
    ),
    (
        "2000010",
        "The app authenticated too weakly for this organisation: use a certificate credential ([[tenant.credential]] with certificate_file and key_file).",
    ),
    (
        "2000001",
        "Exchange could not accept the token (unreadable, expired or revoked): check the gateway host's clock and retry; on-premises, check that hybrid modern authentication is configured.",
    ),
    (
        "EWSAllowedAppIDs",
        "Exchange Online serves EWS only to allow-listed apps: add the app id to the organisation's EWSAllowedAppIDs (see the PowerShell below).",
    ),
    (
        "RBAC for Applications",
        "The mailbox is outside the management scope of the app's RBAC for Applications assignment: widen the scope or check with Test-ServicePrincipalAuthorization (below).",
    ),
    (
        "ErrorNonExistentMailbox",
        "No mailbox has that address in the tenant: check the address (mail users and contacts have no mailbox), or the tenant's domains in the configuration.",
    ),
    (
        "ErrorInvalidExchangeImpersonationHeaderData",
        "Exchange did not see the ExchangeImpersonation header: something between the gateway and Exchange strips SOAP headers.",
    ),
    (
        "ErrorNoRespondingCASInDestinationSite",
        "Exchange could not route the request to the mailbox: check that the mailbox is in this tenant and not being moved.",
    ),
    (
        "ErrorServerBusy",
        "A dependency is unavailable or throttling: the message says which; retry later, and check the network path from the gateway.",
    ),
    (
        "No Entra tenant is configured",
        "Add the mailbox's domain to the domains of a [[tenant]].",
    ),
];

/// The fix for a failure text, if it carries a known signature. A numeric code must not run on
/// into more digits (AADSTS90002 is not AADSTS900023).
pub fn fix_for(text: &str) -> Option<String> {
    FIXES
        .iter()
        .find(|(needle, _)| {
            text.match_indices(needle).any(|(at, _)| {
                !text[at + needle.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            })
        })
        .map(|(_, fix)| (*fix).to_owned())
}

fn powershell(client_id: &str, mailbox: Option<&str>) -> Vec<String> {
    let mut lines = vec![
        "Connect-ExchangeOnline".to_owned(),
        "Set-OrganizationConfig -EWSEnabled $true".to_owned(),
        format!("Set-OrganizationConfig -EWSAllowedAppIDs @{{Add=\"{client_id}\"}}"),
        "# To scope the app with RBAC for Applications instead of tenant-wide full_access_as_app:".to_owned(),
        format!("New-ServicePrincipal -AppId {client_id} -ObjectId <enterprise-app object id> -DisplayName \"ews-gateway\""),
        "New-ManagementScope -Name \"ews-gateway mailboxes\" -RecipientRestrictionFilter \"CustomAttribute1 -eq 'ews-gateway'\"".to_owned(),
        format!("New-ManagementRoleAssignment -App {client_id} -Role \"Application EWS.AccessAsApp\" -CustomResourceScope \"ews-gateway mailboxes\""),
    ];
    if let Some(m) = mailbox {
        lines.push(format!(
            "Test-ServicePrincipalAuthorization -Identity {client_id} -Resource {m}"
        ));
    }
    lines
}

/// Runs every check.
pub async fn run(config_path: &Path, mailbox: Option<&str>) -> CheckReport {
    let mut report = CheckReport::default();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => {
            report.config_problems = problems;
            return report;
        }
        Err(other) => {
            report.config_problems = vec![other.to_string()];
            return report;
        }
    };
    let gateway = match crate::server::build_gateway(&config) {
        Ok(g) => g,
        Err(e) => {
            report.config_problems = vec![e.to_string()];
            return report;
        }
    };
    let mut all_ok = true;
    for tenant in gateway.tokens.tenants() {
        let mut t = TenantReport {
            tenant_id: tenant.tenant_id.clone(),
            client_id: tenant.client_id.clone(),
            ..Default::default()
        };
        match tenant.ews_tokens().get().await {
            Ok(token) => {
                t.ok = true;
                t.fix = token.findings.notes.first().cloned();
                t.token = Some(token.findings.clone());
            }
            Err(e) => {
                let text = e.to_string();
                t.fix = fix_for(&text);
                t.error = Some(text);
                all_ok = false;
            }
        }
        report.tenants.push(t);
    }
    if let Some(address) = mailbox {
        let m = check_mailbox(&gateway, address).await;
        all_ok &= m.ok;
        report.mailbox = Some(m);
    }
    let client_id = config
        .tenants
        .first()
        .map(|t| t.client_id.clone())
        .unwrap_or_default();
    report.powershell = powershell(&client_id, mailbox);
    report.ok = all_ok;
    report
}

async fn check_mailbox(gateway: &crate::proxy::Gateway, address: &str) -> MailboxReport {
    let mut r = MailboxReport {
        mailbox: address.to_owned(),
        ..Default::default()
    };
    let fail = |mut r: MailboxReport, detail: String| {
        r.fix = fix_for(&detail);
        r.detail = detail;
        r
    };
    let Some(chosen) = gateway.backends.choose(address) else {
        return fail(
            r,
            format!("No Entra tenant is configured for the domain of {address}."),
        );
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:m=\"{NS_MESSAGES}\" xmlns:t=\"{NS_TYPES}\"><s:Header><t:RequestServerVersion Version=\"Exchange2013_SP1\"/></s:Header><s:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id=\"msgfolderroot\"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>"
    );
    let mut scanner = PrefixScanner::new(RewriteLimits::default());
    let head = match scanner.push(body.as_bytes()) {
        Ok(Some(head)) => head,
        Ok(None) => match scanner.finish() {
            Ok(head) => head,
            Err(e) => return fail(r, e.to_string()),
        },
        Err(e) => return fail(r, e.to_string()),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::soap::CONTENT_TYPE_XML),
    );
    let call = AuthorisedCall {
        principal: Arc::new(Principal {
            name: "ews-gateway check".to_owned(),
            mailbox: address.to_owned(),
            may_impersonate: Vec::new(),
            ..Default::default()
        }),
        mailbox: ConnectingSid {
            kind: ConnectingSidKind::SmtpAddress,
            value: address.to_owned(),
        },
        anchor: address.to_owned(),
        tenant: chosen.tenant,
        operation: "GetFolder".to_owned(),
        headers,
        body: RequestBody::new(head, None, Some(body.len() as u64), body.len() as u64),
    };
    match chosen.backend.call(call).await {
        Err(e) => fail(r, e.to_string()),
        Ok(answer) => {
            let status = answer.response.status();
            let bytes = match answer.response.into_body().collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => return fail(r, format!("the response broke off: {e}")),
            };
            let code = response_code(&bytes);
            if status.is_success() && code.as_deref() == Some("NoError") {
                r.ok = true;
                r.detail = format!("GetFolder msgfolderroot as {address} succeeded.");
                r
            } else {
                let code = code.unwrap_or_else(|| "no response code".to_owned());
                fail(
                    r,
                    format!("Exchange answered HTTP {} with {code}.", status.as_u16()),
                )
            }
        }
    }
}

/// The first `ResponseCode` in an EWS answer (ResponseMessage or fault detail).
fn response_code(body: &[u8]) -> Option<String> {
    let root = ews_gateway_core::xml::parse(body).ok()?;
    fn find(el: &ews_gateway_core::xml::Element) -> Option<String> {
        if el.local == "ResponseCode"
            && matches!(el.ns.as_deref(), Some(NS_MESSAGES) | Some(NS_ERRORS))
        {
            return Some(el.text());
        }
        el.elements().find_map(find)
    }
    find(&root)
}

/// The report as text for a person.
pub fn human(report: &CheckReport) -> String {
    let mut out = String::new();
    if !report.config_problems.is_empty() {
        out.push_str("Configuration problems:\n");
        for p in &report.config_problems {
            out.push_str(&format!("  - {p}\n"));
        }
        out.push_str("\nRESULT: FAILED\n");
        return out;
    }
    for t in &report.tenants {
        let mark = if t.ok { "OK  " } else { "FAIL" };
        out.push_str(&format!(
            "[{mark}] token for tenant {} (app {})\n",
            t.tenant_id, t.client_id
        ));
        if let Some(f) = &t.token {
            out.push_str(&format!(
                "       aud={} tid={} appidacr={} roles=[{}]\n",
                f.aud.as_deref().unwrap_or("-"),
                f.tid.as_deref().unwrap_or("-"),
                f.appidacr.as_deref().unwrap_or("-"),
                f.roles.join(", ")
            ));
            for n in &f.notes {
                out.push_str(&format!("       note: {n}\n"));
            }
        }
        if let Some(e) = &t.error {
            out.push_str(&format!("       error: {e}\n"));
        }
        if let Some(fix) = &t.fix
            && !t.ok
        {
            out.push_str(&format!("       fix: {fix}\n"));
        }
    }
    if let Some(m) = &report.mailbox {
        let mark = if m.ok { "OK  " } else { "FAIL" };
        out.push_str(&format!("[{mark}] EWS as {}: {}\n", m.mailbox, m.detail));
        if let Some(fix) = &m.fix {
            out.push_str(&format!("       fix: {fix}\n"));
        }
    }
    out.push_str("\nExchange Online PowerShell for this app:\n");
    for line in &report.powershell {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str(if report.ok {
        "\nRESULT: OK\n"
    } else {
        "\nRESULT: FAILED\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_failures_have_fixes() {
        assert!(
            fix_for("Entra refused the token request: invalid_client (AADSTS7000215): ...")
                .unwrap()
                .contains("Value")
        );
        assert!(
            fix_for("Exchange refused the gateway's access token (2000008;reason=...)")
                .unwrap()
                .contains("full_access_as_app")
        );
        assert!(
            fix_for("by policy: The application x is not in the EWSAllowedAppIDs list")
                .unwrap()
                .contains("allow-list")
        );
        assert!(fix_for("something new").is_none());
    }

    #[test]
    fn every_documented_signature_has_its_own_fix() {
        let signatures = [
            "AADSTS7000215",
            "AADSTS7000222",
            "AADSTS700016",
            "AADSTS90002",
            "AADSTS900023",
            "AADSTS700027",
            "AADSTS700024",
            "AADSTS1002012",
            "AADSTS70011",
            "AADSTS500011",
            "2000008",
            "2000003",
            "2000010",
            "2000001",
            "EWSAllowedAppIDs",
            "RBAC for Applications",
            "ErrorNonExistentMailbox",
            "ErrorInvalidExchangeImpersonationHeaderData",
        ];
        let mut fixes = std::collections::HashSet::new();
        for sig in signatures {
            let fix =
                fix_for(&format!("... {sig} ...")).unwrap_or_else(|| panic!("no fix for {sig}"));
            assert!(
                fixes.insert(fix),
                "{sig} shares its fix with another signature"
            );
        }
    }

    #[test]
    fn response_code_is_read_from_messages_and_faults() {
        let ok = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:R xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseCode>NoError</m:ResponseCode></m:R></s:Body></s:Envelope>"#;
        assert_eq!(response_code(ok).as_deref(), Some("NoError"));
        let fault = crate::soap::fault_envelope("ErrorNonExistentMailbox", "x", &[]);
        assert_eq!(
            response_code(fault.as_bytes()).as_deref(),
            Some("ErrorNonExistentMailbox")
        );
    }
}

//! The simulated directory: tenants, their app registrations and their mailboxes.
//!
//! Loaded from a TOML seed (`fixtures/seed/contoso.toml` is built in). Mailbox *contents* live in
//! the mailbox store; this module owns identities, credentials, consent and policy.

use serde::Deserialize;

/// The built-in seed: tenant `contoso.example`.
pub const BUILTIN_SEED: &str = include_str!("../../../fixtures/seed/contoso.toml");

/// Errors while loading a seed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The seed is not valid TOML for this schema.
    #[error("seed does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    /// The seed parsed but is inconsistent.
    #[error("seed is inconsistent: {0}")]
    Invalid(String),
}

/// The whole directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// Tenants, each with its own apps and mailboxes.
    #[serde(rename = "tenant")]
    pub tenants: Vec<Tenant>,
}

/// One Entra tenant with its Exchange Online organisation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Tenant id (GUID).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Accepted domains; the first is the initial domain. A tenant is addressable by id or domain.
    pub domains: Vec<String>,
    /// `EWSAllowedAppIDs`: when set, only these app ids may use EWS (403 otherwise).
    #[serde(default)]
    pub ews_allowed_app_ids: Option<Vec<String>>,
    /// App registrations.
    #[serde(default, rename = "app")]
    pub apps: Vec<App>,
    /// Mailboxes.
    #[serde(default, rename = "mailbox")]
    pub mailboxes: Vec<Mailbox>,
}

/// An app registration (and its service principal) in a tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// Application (client) id.
    pub client_id: String,
    /// Display name (`app_displayname` claim).
    pub display_name: String,
    /// Service principal object id (`oid`/`sub` claims).
    pub object_id: String,
    /// Client secrets.
    #[serde(default, rename = "secret")]
    pub secrets: Vec<Secret>,
    /// Registered certificates (PEM), for client assertions.
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Admin-consented application roles on Exchange Online, e.g. `full_access_as_app`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Consented Microsoft Graph application permissions (`Mail.Send`, `Mail.ReadWrite`, ...):
    /// the `roles` claim of its Graph tokens.
    #[serde(default)]
    pub graph_roles: Vec<String>,
    /// RBAC for Applications: `Application EWS.AccessAsApp` scoped to these mailboxes
    /// (exact addresses or `*@domain`). `None` means no RBAC assignment.
    #[serde(default)]
    pub rbac_scope: Option<Vec<String>>,
    /// This service principal is an Azure managed identity: the simulated IMDS and App Service
    /// identity endpoints issue its tokens.
    #[serde(default)]
    pub managed_identity: bool,
    /// Federated identity credentials (workload identity federation): assertions from these
    /// external issuers and subjects are accepted in place of a secret or certificate.
    #[serde(default, rename = "federated")]
    pub federated_credentials: Vec<FederatedCredential>,
}

/// A federated identity credential on an app registration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredential {
    /// The external issuer (e.g. a Kubernetes cluster's OIDC issuer URL).
    pub issuer: String,
    /// The subject (e.g. `system:serviceaccount:NAMESPACE:NAME`).
    pub subject: String,
    /// The audience the external token must carry.
    #[serde(default = "default_federated_audience")]
    pub audience: String,
}

fn default_federated_audience() -> String {
    "api://AzureADTokenExchange".to_owned()
}

/// A client secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The secret value.
    pub value: String,
    /// Expiry as Unix seconds; absent means it never expires.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// Mailbox kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MailboxKind {
    /// A user mailbox.
    #[default]
    User,
    /// A shared mailbox.
    Shared,
}

/// A mailbox and the identities that name it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    /// Primary SMTP address.
    pub smtp: String,
    /// Display name.
    pub display_name: String,
    /// User principal name (defaults to the primary SMTP address).
    #[serde(default)]
    pub upn: Option<String>,
    /// Security identifier (SDDL string form).
    pub sid: String,
    /// Proxy addresses besides the primary one.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Kind.
    #[serde(default)]
    pub kind: MailboxKind,
    /// Primary addresses of users holding FullAccess (delegate) rights on this mailbox.
    #[serde(default)]
    pub delegates: Vec<String>,
    /// Seeded folders and messages.
    #[serde(default, rename = "folder")]
    pub folders: Vec<FolderSeed>,
}

/// A seeded folder: a distinguished one (`inbox`, ...) or a custom child of `msgfolderroot`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSeed {
    /// Distinguished folder id (`inbox`, `sentitems`, ...) or a custom display name.
    pub name: String,
    /// Messages in the folder.
    #[serde(default, rename = "message")]
    pub messages: Vec<MessageSeed>,
}

/// A seeded message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSeed {
    /// Subject.
    pub subject: String,
    /// Sender address.
    pub from: String,
    /// Recipient addresses.
    #[serde(default)]
    pub to: Vec<String>,
    /// Plain-text body.
    #[serde(default)]
    pub body: String,
    /// Read flag.
    #[serde(default)]
    pub is_read: bool,
    /// Received time, RFC 3339.
    pub received: String,
    /// File attachments.
    #[serde(default, rename = "attachment")]
    pub attachments: Vec<AttachmentSeed>,
}

/// A seeded file attachment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentSeed {
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Content as text (stored as UTF-8 bytes).
    pub content: String,
}

/// How an `ExchangeImpersonation/ConnectingSID` names a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// `t:SmtpAddress`: any proxy address.
    SmtpAddress,
    /// `t:PrimarySmtpAddress`: the primary address.
    PrimarySmtpAddress,
    /// `t:PrincipalName`: the UPN.
    PrincipalName,
    /// `t:SID`.
    Sid,
}

impl Directory {
    /// Parses a seed and checks it is consistent.
    pub fn from_toml(text: &str) -> Result<Self, SeedError> {
        let dir: Directory = toml::from_str(text)?;
        dir.validate()?;
        Ok(dir)
    }

    /// The built-in `contoso.example` directory.
    pub fn builtin() -> Result<Self, SeedError> {
        Self::from_toml(BUILTIN_SEED)
    }

    fn validate(&self) -> Result<(), SeedError> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for tenant in &self.tenants {
            if tenant.domains.is_empty() {
                problems.push(format!("tenant {} has no domains", tenant.id));
            }
            for mbx in &tenant.mailboxes {
                for addr in std::iter::once(&mbx.smtp).chain(mbx.aliases.iter()) {
                    if !seen.insert(addr.to_ascii_lowercase()) {
                        problems.push(format!("address {addr} is used twice"));
                    }
                }
                for delegate in &mbx.delegates {
                    if tenant.mailbox_by_primary(delegate).is_none() {
                        problems.push(format!(
                            "mailbox {} names unknown delegate {delegate}",
                            mbx.smtp
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SeedError::Invalid(problems.join("; ")))
        }
    }

    /// A tenant by id (GUID, case-insensitive) or by one of its domains.
    pub fn tenant(&self, id_or_domain: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| {
            t.id.eq_ignore_ascii_case(id_or_domain)
                || t.domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(id_or_domain))
        })
    }

    /// Mutable access to a tenant by id or domain.
    pub fn tenant_mut(&mut self, id_or_domain: &str) -> Option<&mut Tenant> {
        self.tenants.iter_mut().find(|t| {
            t.id.eq_ignore_ascii_case(id_or_domain)
                || t.domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(id_or_domain))
        })
    }
}

impl Tenant {
    /// The app registration with this client id.
    pub fn app(&self, client_id: &str) -> Option<&App> {
        self.apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    /// Mutable access to an app registration.
    pub fn app_mut(&mut self, client_id: &str) -> Option<&mut App> {
        self.apps
            .iter_mut()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    /// The mailbox whose primary SMTP address is `smtp` (case-insensitive).
    pub fn mailbox_by_primary(&self, smtp: &str) -> Option<&Mailbox> {
        self.mailboxes
            .iter()
            .find(|m| m.smtp.eq_ignore_ascii_case(smtp))
    }

    /// Resolves a ConnectingSID value of the given kind to a mailbox.
    pub fn resolve(&self, kind: IdKind, value: &str) -> Option<&Mailbox> {
        let value = value.trim();
        self.mailboxes.iter().find(|m| match kind {
            IdKind::PrimarySmtpAddress => m.smtp.eq_ignore_ascii_case(value),
            IdKind::SmtpAddress => {
                m.smtp.eq_ignore_ascii_case(value)
                    || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(value))
            }
            IdKind::PrincipalName => m.upn().eq_ignore_ascii_case(value),
            IdKind::Sid => m.sid.eq_ignore_ascii_case(value),
        })
    }

    /// Whether `app` may reach `mailbox` through EWS, and if not, the policy reason.
    pub fn ews_policy_block(&self, app: &App, mailbox: &Mailbox) -> Option<String> {
        if let Some(allowed) = &self.ews_allowed_app_ids
            && !allowed
                .iter()
                .any(|id| id.eq_ignore_ascii_case(&app.client_id))
        {
            return Some(format!(
                "The application {} is not in the EWSAllowedAppIDs list of the organization.",
                app.client_id
            ));
        }
        let has_entra_grant = app.roles.iter().any(|r| r == "full_access_as_app");
        if !has_entra_grant
            && let Some(scope) = &app.rbac_scope
            && !scope_matches(scope, &mailbox.smtp)
        {
            return Some(format!(
                "The mailbox {} is outside the management scope assigned to application {} (RBAC for Applications).",
                mailbox.smtp, app.client_id
            ));
        }
        None
    }
}

impl Mailbox {
    /// The UPN, defaulting to the primary SMTP address.
    pub fn upn(&self) -> &str {
        self.upn.as_deref().unwrap_or(&self.smtp)
    }

    /// Whether `user` (a primary address) holds delegate rights here or is the owner.
    pub fn grants_access_to(&self, user: &str) -> bool {
        self.smtp.eq_ignore_ascii_case(user)
            || self.delegates.iter().any(|d| d.eq_ignore_ascii_case(user))
    }
}

/// Whether an address matches a scope list of exact addresses and `*@domain` entries.
pub fn scope_matches(scope: &[String], address: &str) -> bool {
    scope.iter().any(|entry| match entry.strip_prefix("*@") {
        Some(domain) => address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => entry.eq_ignore_ascii_case(address),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_seed_loads_and_resolves_all_id_kinds() {
        let dir = Directory::builtin().unwrap();
        let t = dir.tenant("contoso.example").unwrap();
        assert_eq!(dir.tenant(&t.id).unwrap().id, t.id);
        let alice = t.mailbox_by_primary("alice@contoso.example").unwrap();
        assert_eq!(t.resolve(IdKind::Sid, &alice.sid).unwrap().smtp, alice.smtp);
        assert_eq!(
            t.resolve(IdKind::PrincipalName, alice.upn()).unwrap().smtp,
            alice.smtp
        );
        for alias in &alice.aliases {
            assert_eq!(
                t.resolve(IdKind::SmtpAddress, alias).unwrap().smtp,
                alice.smtp
            );
            assert!(t.resolve(IdKind::PrimarySmtpAddress, alias).is_none());
        }
    }

    #[test]
    fn scope_matching() {
        let scope = vec![
            "*@contoso.example".to_owned(),
            "x@fabrikam.example".to_owned(),
        ];
        assert!(scope_matches(&scope, "a@CONTOSO.example"));
        assert!(scope_matches(&scope, "x@fabrikam.example"));
        assert!(!scope_matches(&scope, "y@fabrikam.example"));
        assert!(!scope_matches(&scope, "a@contoso.example.evil"));
    }

    #[test]
    fn duplicate_addresses_are_refused() {
        let seed = r#"
[[tenant]]
id = "t"
name = "T"
domains = ["t.example"]
[[tenant.mailbox]]
smtp = "a@t.example"
display_name = "A"
sid = "S-1"
[[tenant.mailbox]]
smtp = "b@t.example"
display_name = "B"
sid = "S-2"
aliases = ["A@t.example"]
"#;
        assert!(matches!(
            Directory::from_toml(seed),
            Err(SeedError::Invalid(_))
        ));
    }
}

//! Inbound credentials: the `Authorization: Basic` header, login names, the users file and its
//! password hashes (argon2id or bcrypt).
//!
//! Owns who a caller may be. An unknown or disabled user is answered with a dummy hash
//! ([`UserTable::candidate`]) so that it costs the same and fails the same way as a wrong
//! password. Running the slow verification (off the async threads, capped, cached) is the
//! gateway's `auth` module's business.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use serde::Deserialize;

/// Largest `Authorization` header value accepted.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Why a Basic header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    /// Not the `Basic` scheme.
    #[error("the Authorization scheme is not Basic")]
    Scheme,
    /// The header value is larger than allowed.
    #[error("the Authorization header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    /// The credentials are not valid base64.
    #[error("the Basic credentials are not valid base64")]
    Base64,
    /// The decoded credentials are not UTF-8.
    #[error("the Basic credentials are not UTF-8")]
    NotUtf8,
    /// No colon separates user and password.
    #[error("the Basic credentials have no ':' between user and password")]
    NoColon,
    /// The user name is empty.
    #[error("the Basic user name is empty")]
    EmptyUser,
    /// A `DOMAIN\user` login names a domain the configuration does not map.
    #[error("the login domain {0} is not configured")]
    UnknownDomain(String),
    /// A bare `user` login, with no default domain configured.
    #[error("the login has no domain and no default domain is configured")]
    NoDomain,
}

/// User name and password from a Basic header.
#[derive(Clone)]
pub struct BasicCredentials {
    /// The user name as sent.
    pub username: String,
    /// The password as sent.
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses an `Authorization` header value of the Basic scheme (RFC 7617).
pub fn parse_basic(value: &[u8]) -> Result<BasicCredentials, BasicError> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(BasicError::TooLong);
    }
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => return Err(BasicError::Scheme),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(BasicError::Scheme);
    }
    let encoded = rest.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| BasicError::Base64)?;
    let text = String::from_utf8(decoded).map_err(|_| BasicError::NotUtf8)?;
    let (user, password) = text.split_once(':').ok_or(BasicError::NoColon)?;
    if user.is_empty() {
        return Err(BasicError::EmptyUser);
    }
    Ok(BasicCredentials {
        username: user.to_owned(),
        password: password.to_owned(),
    })
}

/// How login names map to canonical `user@domain` names.
#[derive(Debug, Clone, Default)]
pub struct NameOptions {
    /// Appended to bare names.
    pub default_domain: Option<String>,
    /// NetBIOS domain (upper-case) -> mail domain.
    pub netbios_domains: HashMap<String, String>,
}

/// The canonical, lower-case `user@domain` form of a login name.
pub fn normalize_username(raw: &str, opts: &NameOptions) -> Result<String, BasicError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(BasicError::EmptyUser);
    }
    let name = if let Some((domain, user)) = raw.split_once('\\') {
        let mapped = opts
            .netbios_domains
            .get(&domain.to_ascii_uppercase())
            .ok_or_else(|| BasicError::UnknownDomain(domain.to_owned()))?;
        if user.is_empty() {
            return Err(BasicError::EmptyUser);
        }
        format!("{user}@{mapped}")
    } else if raw.contains('@') {
        raw.to_owned()
    } else {
        let domain = opts.default_domain.as_ref().ok_or(BasicError::NoDomain)?;
        format!("{raw}@{domain}")
    };
    Ok(name.to_lowercase())
}

/// A mailbox pattern from `may_impersonate`: an exact address or `*@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxPattern {
    /// One address (lower-case).
    Exact(String),
    /// Every address of one domain (lower-case, without `*@`).
    Domain(String),
}

impl MailboxPattern {
    /// Parses `a@b` or `*@b`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_lowercase();
        if let Some(domain) = t.strip_prefix("*@") {
            if domain.is_empty() || domain.contains(['@', '*']) || !domain.contains('.') {
                return Err(format!("{text:?} is not *@domain"));
            }
            return Ok(Self::Domain(domain.to_owned()));
        }
        if !is_address(&t) {
            return Err(format!("{text:?} is neither an address nor *@domain"));
        }
        Ok(Self::Exact(t))
    }

    /// Whether `address` matches (case-insensitive; a domain must match exactly).
    pub fn matches(&self, address: &str) -> bool {
        match self {
            Self::Exact(a) => a.eq_ignore_ascii_case(address.trim()),
            Self::Domain(d) => address
                .trim()
                .rsplit_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.eq_ignore_ascii_case(d)),
        }
    }
}

/// Whether `text` looks like `local@domain` with no wildcard or spaces.
pub fn is_address(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !text.contains(['*', ' ', '<', '>', '"', '\\', '/'])
        }
        None => false,
    }
}

/// An authenticated caller and what it may act as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// Canonical login name.
    pub name: String,
    /// Its own mailbox (lower-case).
    pub mailbox: String,
    /// Other mailboxes it may act as (its own grants and its groups').
    pub may_impersonate: Vec<MailboxPattern>,
    /// The EWS operations it may call, sorted; `None`: every operation (no list anywhere).
    pub operations: Option<Vec<String>>,
    /// The groups it belongs to, as the users file names them.
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "group")]
    groups: Vec<GroupEntry>,
    #[serde(default, rename = "user")]
    users: Vec<UserEntry>,
}

/// One `[[group]]` of the users file: policy shared by its members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    name: String,
    /// EWS operations members may call (allow-list).
    #[serde(default)]
    operations: Option<Vec<String>>,
    /// Mailboxes members may act as.
    #[serde(default)]
    may_impersonate: Vec<String>,
}

/// One `[[user]]` of the users file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    /// Login name, `user@domain`.
    name: String,
    /// argon2id PHC string or bcrypt `$2a$`/`$2b$`/`$2y$` hash.
    password_hash: String,
    /// Own mailbox (its primary SMTP address); default: the name.
    #[serde(default)]
    mailbox: Option<String>,
    /// The mailbox owner's user principal name when it differs from the primary address: a
    /// second login name, and what an impersonation by `PrincipalName` is mapped with.
    #[serde(default)]
    upn: Option<String>,
    /// Exact addresses and `*@domain` patterns this user may act as.
    #[serde(default)]
    may_impersonate: Vec<String>,
    /// A disabled user fails exactly like a wrong password.
    #[serde(default)]
    disabled: bool,
    /// Groups whose policy this user also gets.
    #[serde(default)]
    groups: Vec<String>,
    /// EWS operations this user may call (allow-list; joined with its groups' lists).
    #[serde(default)]
    operations: Option<Vec<String>>,
}

/// A stored password hash, checked before the table accepts it.
#[derive(Debug, Clone)]
pub enum StoredHash {
    /// An argon2 PHC string.
    Argon2(String),
    /// A bcrypt `$2a$`/`$2b$`/`$2y$` hash.
    Bcrypt(String),
}

impl StoredHash {
    fn parse(text: &str) -> Result<Self, &'static str> {
        if text.starts_with("$argon2") {
            argon2::password_hash::phc::PasswordHash::new(text)
                .map_err(|_| "is not a valid argon2 PHC string")?;
            Ok(Self::Argon2(text.to_owned()))
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) {
            if text.len() != 60 {
                return Err("is not a valid bcrypt hash (60 characters expected)");
            }
            Ok(Self::Bcrypt(text.to_owned()))
        } else {
            Err("uses an unsupported scheme (argon2id PHC or bcrypt $2y$ expected)")
        }
    }

    /// Whether `password` matches (slow by design: run it off the async threads).
    pub fn verify(&self, password: &str) -> bool {
        match self {
            Self::Argon2(hash) => Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok(),
            Self::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        }
    }
}

#[derive(Debug)]
struct User {
    principal: Arc<Principal>,
    hash: StoredHash,
    disabled: bool,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, disabled user or wrong password: deliberately indistinguishable.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The login name cannot be mapped to a canonical name.
    #[error("unusable login name: {0}")]
    Name(#[from] BasicError),
    /// Hashing failed (internal).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Every problem in a users file.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), .0.join("; "))]
pub struct UsersError(pub Vec<String>);

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Login name mapping.
    pub names: NameOptions,
    /// How long a verified credential is remembered.
    pub cache_ttl: Duration,
}

/// A group's resolved policy.
struct Group {
    operations: Option<Vec<String>>,
    may_impersonate: Vec<MailboxPattern>,
}

fn parse_groups(entries: Vec<GroupEntry>, problems: &mut Vec<String>) -> HashMap<String, Group> {
    let mut groups = HashMap::new();
    for entry in entries {
        let what = format!("group {:?}", entry.name);
        if entry.name.trim().is_empty() {
            problems.push("a group has an empty name".to_owned());
            continue;
        }
        let mut patterns = Vec::new();
        for p in &entry.may_impersonate {
            match MailboxPattern::parse(p) {
                Ok(pat) => patterns.push(pat),
                Err(why) => problems.push(format!("{what}: may_impersonate {why}")),
            }
        }
        if let Some(ops) = &entry.operations {
            check_operations(ops, &what, problems);
        }
        let group = Group {
            operations: entry.operations,
            may_impersonate: patterns,
        };
        if groups.insert(entry.name.clone(), group).is_some() {
            problems.push(format!("{what} is defined twice"));
        }
    }
    groups
}

/// Operation names must be EWS operations as the schema spells them: a typo would otherwise
/// deny a client silently (or, in a deny list, allow it).
fn check_operations(ops: &[String], what: &str, problems: &mut Vec<String>) {
    for op in ops {
        if crate::soap::known_operation(op).is_none() {
            let hint = crate::soap::EWS_OPERATIONS
                .iter()
                .find(|known| known.eq_ignore_ascii_case(op))
                .map(|known| format!(" (did you mean {known}?)"))
                .unwrap_or_default();
            problems.push(format!("{what}: {op:?} is not an EWS operation{hint}"));
        }
    }
}

/// The users and their password hashes, as the users file defines them.
pub struct UserTable {
    users: HashMap<String, User>,
    /// Lower-case UPN -> login name, for users whose `upn` differs from their name.
    upns: HashMap<String, String>,
    names: NameOptions,
    dummy: StoredHash,
}

/// What a login name leads to: the hash to check and, when the user exists and is enabled,
/// the principal it proves. Unknown and disabled users get the dummy hash, so every failure
/// costs the same.
#[derive(Debug)]
pub struct Candidate<'a> {
    /// The hash to verify the password against.
    pub hash: &'a StoredHash,
    /// The principal a matching password proves; `None`: fails whatever the password.
    pub principal: Option<&'a Arc<Principal>>,
}

impl std::fmt::Debug for UserTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTable")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Hashes a password as an argon2id PHC string with the default parameters.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

impl UserTable {
    /// Reads a users file.
    pub fn from_path(path: &Path, options: StoreOptions) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsersError(vec![format!("cannot read {}: {e}", path.display())]))?;
        Self::from_toml(&text, options)
    }

    /// Parses a users file; every problem is reported together.
    pub fn from_toml(text: &str, options: StoreOptions) -> Result<Self, UsersError> {
        let file: UsersFile = toml::from_str(text).map_err(|e| UsersError(vec![e.to_string()]))?;
        let mut problems = Vec::new();
        let groups = parse_groups(file.groups, &mut problems);
        let mut users = HashMap::new();
        let mut upns = HashMap::new();
        for entry in file.users {
            let name = match normalize_username(&entry.name, &options.names) {
                Ok(n) if is_address(&n) => n,
                _ => {
                    problems.push(format!("user {:?}: name must be user@domain", entry.name));
                    continue;
                }
            };
            let hash = match StoredHash::parse(&entry.password_hash) {
                Ok(h) => Some(h),
                Err(why) => {
                    problems.push(format!("user {name}: password_hash {why}"));
                    None
                }
            };
            let mailbox = entry
                .mailbox
                .as_deref()
                .unwrap_or(&name)
                .trim()
                .to_lowercase();
            if !is_address(&mailbox) {
                problems.push(format!(
                    "user {name}: mailbox {mailbox:?} is not an address"
                ));
            }
            let mut patterns = Vec::new();
            for p in &entry.may_impersonate {
                match MailboxPattern::parse(p) {
                    Ok(pat) => patterns.push(pat),
                    Err(why) => problems.push(format!("user {name}: may_impersonate {why}")),
                }
            }
            let mut operations = entry.operations.as_ref().map(|ops| {
                check_operations(ops, &format!("user {name}"), &mut problems);
                ops.clone()
            });
            for group_name in &entry.groups {
                let Some(group) = groups.get(group_name) else {
                    problems.push(format!("user {name}: group {group_name:?} is not defined"));
                    continue;
                };
                patterns.extend(group.may_impersonate.iter().cloned());
                if let Some(ops) = &group.operations {
                    operations
                        .get_or_insert_with(Vec::new)
                        .extend(ops.iter().cloned());
                }
            }
            if let Some(ops) = operations.as_mut() {
                ops.sort();
                ops.dedup();
            }
            if users.contains_key(&name) {
                problems.push(format!("user {name} is listed twice"));
                continue;
            }
            if let Some(upn) = entry.upn.as_deref().map(|u| u.trim().to_lowercase()) {
                if !is_address(&upn) {
                    problems.push(format!("user {name}: upn {upn:?} is not user@domain"));
                } else if upn != name && upns.insert(upn.clone(), name.clone()).is_some() {
                    problems.push(format!("user {name}: upn {upn} is used twice"));
                }
            }
            if let Some(hash) = hash {
                users.insert(
                    name.clone(),
                    User {
                        principal: Arc::new(Principal {
                            name,
                            mailbox,
                            may_impersonate: patterns,
                            operations,
                            groups: entry.groups,
                        }),
                        hash,
                        disabled: entry.disabled,
                    },
                );
            }
        }
        for (upn, owner) in &upns {
            if users.contains_key(upn) {
                problems.push(format!(
                    "user {owner}: upn {upn} is another user's login name"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(UsersError(problems));
        }
        let dummy_password: [u8; 16] = rand::random();
        let dummy = hash_password(&hex::encode(dummy_password))
            .map_err(|e| UsersError(vec![e.to_string()]))?;
        Ok(Self {
            users,
            upns,
            names: options.names,
            dummy: StoredHash::Argon2(dummy),
        })
    }

    /// How many users the file defines.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file defines no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The canonical name of a login, as this store maps it (a user's `upn` maps to its name).
    pub fn canonical_name(&self, raw: &str) -> Option<String> {
        normalize_username(raw, &self.names)
            .ok()
            .map(|name| self.upns.get(&name).cloned().unwrap_or(name))
    }

    /// The mailbox (primary address) of the user whose UPN is `upn`, if the users file says.
    pub fn mailbox_for_upn(&self, upn: &str) -> Option<String> {
        let upn = upn.trim().to_lowercase();
        let name = self.upns.get(&upn).unwrap_or(&upn);
        self.users.get(name).map(|u| u.principal.mailbox.clone())
    }

    /// The dummy hash: a login refused before checking costs one verification of it.
    pub fn dummy(&self) -> &StoredHash {
        &self.dummy
    }

    /// The candidate for a canonical name (see [`Candidate`]).
    pub fn candidate(&self, name: &str) -> Candidate<'_> {
        match self.users.get(name) {
            Some(user) if !user.disabled => Candidate {
                hash: &user.hash,
                principal: Some(&user.principal),
            },
            _ => Candidate {
                hash: &self.dummy,
                principal: None,
            },
        }
    }

    /// The principal of a user, enabled or not (for tests and reports).
    pub fn principal(&self, name: &str) -> Option<&Arc<Principal>> {
        self.users.get(name).map(|u| &u.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_header_parsing() {
        let ok =
            parse_basic(format!("Basic {}", b64(b"alice@c.example:pa:ss")).as_bytes()).unwrap();
        assert_eq!(ok.username, "alice@c.example");
        assert_eq!(ok.password, "pa:ss", "the first colon splits");
        assert!(parse_basic(format!("basic {}", b64(b"a:b")).as_bytes()).is_ok());
        assert_eq!(parse_basic(b"Bearer abc").unwrap_err(), BasicError::Scheme);
        assert_eq!(parse_basic(b"Basic").unwrap_err(), BasicError::Scheme);
        assert_eq!(parse_basic(b"Basic !!!").unwrap_err(), BasicError::Base64);
        assert_eq!(
            parse_basic(format!("Basic {}", b64(&[0xff, b':', b'x'])).as_bytes()).unwrap_err(),
            BasicError::NotUtf8
        );
        assert_eq!(
            parse_basic(format!("Basic {}", b64(b"nocolon")).as_bytes()).unwrap_err(),
            BasicError::NoColon
        );
        assert_eq!(
            parse_basic(format!("Basic {}", b64(b":pw")).as_bytes()).unwrap_err(),
            BasicError::EmptyUser
        );
        let huge = format!("Basic {}", "A".repeat(MAX_HEADER_BYTES));
        assert_eq!(
            parse_basic(huge.as_bytes()).unwrap_err(),
            BasicError::TooLong
        );
        let dbg = format!("{ok:?}");
        assert!(!dbg.contains("pa:ss"), "{dbg}");
    }

    #[test]
    fn username_forms() {
        let opts = NameOptions {
            default_domain: Some("contoso.example".into()),
            netbios_domains: [("CONTOSO".to_owned(), "contoso.example".to_owned())].into(),
        };
        assert_eq!(
            normalize_username("Alice", &opts).unwrap(),
            "alice@contoso.example"
        );
        assert_eq!(
            normalize_username("contoso\\Alice", &opts).unwrap(),
            "alice@contoso.example"
        );
        assert_eq!(
            normalize_username("ALICE@Contoso.Example", &opts).unwrap(),
            "alice@contoso.example"
        );
        assert!(matches!(
            normalize_username("OTHER\\alice", &opts),
            Err(BasicError::UnknownDomain(_))
        ));
        assert_eq!(
            normalize_username("alice", &NameOptions::default()).unwrap_err(),
            BasicError::NoDomain
        );
    }

    #[test]
    fn patterns() {
        let d = MailboxPattern::parse("*@Contoso.example").unwrap();
        assert!(d.matches("x@contoso.EXAMPLE"));
        assert!(!d.matches("x@contoso.example.evil"));
        assert!(!d.matches("x@sub.contoso.example"));
        assert!(!d.matches("@contoso.example"));
        let e = MailboxPattern::parse("sales@contoso.example").unwrap();
        assert!(e.matches("SALES@contoso.example"));
        assert!(!e.matches("sales2@contoso.example"));
        for bad in ["*", "*@", "x", "*@*.example", "a@b@c.example"] {
            assert!(MailboxPattern::parse(bad).is_err(), "{bad}");
        }
    }

    fn options() -> StoreOptions {
        StoreOptions {
            names: NameOptions {
                default_domain: Some("contoso.example".into()),
                netbios_domains: HashMap::new(),
            },
            cache_ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn every_problem_in_a_users_file_is_reported() {
        let text = r#"
[[user]]
name = "a@contoso.example"
password_hash = "plain-text"
may_impersonate = ["*"]
[[user]]
name = "b@contoso.example"
password_hash = "$2y$04$short"
mailbox = "not an address"
"#;
        let err = UserTable::from_toml(text, options()).unwrap_err();
        let all = err.to_string();
        assert_eq!(err.0.len(), 4, "{all}");
        assert!(
            !all.contains("plain-text"),
            "hashes are never echoed: {all}"
        );
    }

    #[test]
    fn groups_give_operations_and_grants_to_their_members() {
        let hash = hash_password("pw").unwrap();
        let text = format!(
            r#"
[[group]]
name = "scanners"
operations = ["SendItem", "CreateItem"]
[[group]]
name = "archive-readers"
operations = ["GetItem", "FindItem"]
may_impersonate = ["*@contoso.example"]
[[user]]
name = "scan@contoso.example"
password_hash = "{hash}"
groups = ["scanners"]
[[user]]
name = "mixed@contoso.example"
password_hash = "{hash}"
operations = ["GetFolder", "FindItem"]
groups = ["scanners", "archive-readers"]
[[user]]
name = "free@contoso.example"
password_hash = "{hash}"
"#
        );
        let s = UserTable::from_toml(&text, options()).unwrap();
        let scan = &s.users["scan@contoso.example"].principal;
        assert_eq!(
            scan.operations.as_deref(),
            Some(&["CreateItem".to_owned(), "SendItem".to_owned()][..])
        );
        assert!(scan.may_impersonate.is_empty());
        let mixed = &s.users["mixed@contoso.example"].principal;
        assert_eq!(
            mixed.operations.as_ref().unwrap().join(","),
            "CreateItem,FindItem,GetFolder,GetItem,SendItem",
            "union of its own and its groups' lists, sorted, once each"
        );
        assert!(mixed.may_impersonate[0].matches("x@contoso.example"));
        assert_eq!(mixed.groups, ["scanners", "archive-readers"]);
        assert_eq!(s.users["free@contoso.example"].principal.operations, None);
    }

    #[test]
    fn operation_and_group_mistakes_are_reported() {
        let hash = hash_password("pw").unwrap();
        let text = format!(
            r#"
[[group]]
name = "g"
operations = ["finditem"]
[[group]]
name = "g"
[[user]]
name = "a@contoso.example"
password_hash = "{hash}"
operations = ["FindItems"]
groups = ["nope"]
"#
        );
        let err = UserTable::from_toml(&text, options()).unwrap_err();
        let all = err.to_string();
        assert_eq!(err.0.len(), 4, "{all}");
        assert!(all.contains("did you mean FindItem?"), "{all}");
        assert!(
            all.contains("\"FindItems\" is not an EWS operation"),
            "{all}"
        );
        assert!(all.contains("group \"nope\" is not defined"), "{all}");
        assert!(all.contains("defined twice"), "{all}");
    }
}

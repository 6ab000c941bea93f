//! Mailbox policy: which mailbox a principal acts as on a given call.
//!
//! Deny by default: a principal acts as its own mailbox; acting as another needs an explicit
//! `may_impersonate` grant in the users file. A client-sent `ExchangeImpersonation` is honoured
//! only when policy allows the mailbox it names. Free of hyper types.

use crate::auth::{Principal, is_address};
use crate::soap::{ConnectingSid, ConnectingSidKind};

/// The mailbox a call acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The mailbox address (as the client named it, or the principal's own).
    pub mailbox: String,
    /// Whether the client's own impersonation header named it.
    pub via_client_header: bool,
}

/// Why a call may not act as the mailbox it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The principal may not act as the requested mailbox.
    #[error(
        "The account does not have permission to impersonate the requested user. ews-gateway: {principal} may not act as {requested}."
    )]
    ImpersonationDenied {
        /// Who asked.
        principal: String,
        /// The mailbox asked for.
        requested: String,
    },
    /// The principal's operation policy does not list the operation.
    #[error(
        "Access is denied. ews-gateway: {principal} may not call {operation} (allowed: {allowed})."
    )]
    OperationDenied {
        /// Who asked.
        principal: String,
        /// The EWS operation.
        operation: String,
        /// The operations it may call.
        allowed: String,
    },
    /// The impersonation names the mailbox in a form the gateway cannot authorise.
    #[error(
        "The account does not have permission to impersonate the requested user. ews-gateway authorises impersonation by SMTP address; {kind} {value:?} cannot be checked."
    )]
    UncheckableIdentity {
        /// The ConnectingSID form.
        kind: &'static str,
        /// The value sent.
        value: String,
    },
}

impl PolicyError {
    /// The EWS response code the client receives.
    pub fn code(&self) -> &'static str {
        match self {
            Self::OperationDenied { .. } => "ErrorAccessDenied",
            _ => "ErrorImpersonateUserDenied",
        }
    }
}

/// Whether `principal` may call the EWS `operation` (the first element of the SOAP Body).
/// Without any operation list in its user entry or groups, every operation is allowed.
pub fn may_call(principal: &Principal, operation: &str) -> Result<(), PolicyError> {
    match &principal.operations {
        None => Ok(()),
        Some(allowed)
            if allowed
                .binary_search_by(|op| op.as_str().cmp(operation))
                .is_ok() =>
        {
            Ok(())
        }
        Some(allowed) => Err(PolicyError::OperationDenied {
            principal: principal.name.clone(),
            operation: operation.to_owned(),
            allowed: if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            },
        }),
    }
}

/// Whether `principal` may act as `address` (its own mailbox or a `may_impersonate` grant).
pub fn may_act_as(principal: &Principal, address: &str) -> bool {
    let address = address.trim();
    principal.mailbox.eq_ignore_ascii_case(address)
        || principal.may_impersonate.iter().any(|p| p.matches(address))
}

impl Decision {
    /// The one impersonation sent upstream: the decided mailbox as `PrimarySmtpAddress`,
    /// whatever form the client used. `PrimarySmtpAddress` names exactly one mailbox, the one
    /// whose primary address was authorised; `SmtpAddress` would also match proxy addresses
    /// and `PrincipalName` is resolved as a UPN, either of which could name another mailbox.
    pub fn connecting_sid(&self) -> ConnectingSid {
        ConnectingSid {
            kind: ConnectingSidKind::PrimarySmtpAddress,
            value: self.mailbox.clone(),
        }
    }
}

/// Decides the mailbox for a call, given the client's impersonation header if it sent one.
///
/// `SmtpAddress` and `PrimarySmtpAddress` values are taken as the mailbox's primary address.
/// A `PrincipalName` is looked up with `mailbox_for_upn` (the UPNs the gateway knows, from the
/// users file); an unknown one in address form is taken as a primary address too (most tenants
/// have UPN = primary address). Either way the decision is a primary address that policy
/// allowed, and only it is sent upstream ([`Decision::connecting_sid`]), so the identity
/// checked and the identity Exchange acts on are the same.
pub fn decide_mailbox(
    principal: &Principal,
    requested: Option<&ConnectingSid>,
    mailbox_for_upn: &dyn Fn(&str) -> Option<String>,
) -> Result<Decision, PolicyError> {
    let Some(sid) = requested else {
        return Ok(Decision {
            mailbox: principal.mailbox.clone(),
            via_client_header: false,
        });
    };
    let value = sid.value.trim();
    let mailbox = match sid.kind {
        ConnectingSidKind::SmtpAddress | ConnectingSidKind::PrimarySmtpAddress
            if is_address(value) =>
        {
            Some(value.to_lowercase())
        }
        ConnectingSidKind::PrincipalName => mailbox_for_upn(value)
            .or_else(|| is_address(value).then(|| value.to_owned()))
            .map(|m| m.to_lowercase()),
        _ => None,
    };
    let Some(mailbox) = mailbox else {
        return Err(PolicyError::UncheckableIdentity {
            kind: sid.kind.element_name(),
            value: value.to_owned(),
        });
    };
    if may_act_as(principal, &mailbox) {
        Ok(Decision {
            mailbox,
            via_client_header: true,
        })
    } else {
        Err(PolicyError::ImpersonationDenied {
            principal: principal.name.clone(),
            requested: if mailbox.eq_ignore_ascii_case(value) {
                value.to_owned()
            } else {
                format!("{value} (mailbox {mailbox})")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MailboxPattern;

    fn principal(patterns: &[&str]) -> Principal {
        Principal {
            name: "svc@contoso.example".into(),
            mailbox: "svc@contoso.example".into(),
            may_impersonate: patterns
                .iter()
                .map(|p| MailboxPattern::parse(p).unwrap())
                .collect(),
            ..Default::default()
        }
    }

    fn no_upns(_: &str) -> Option<String> {
        None
    }

    fn sid(kind: ConnectingSidKind, v: &str) -> ConnectingSid {
        ConnectingSid {
            kind,
            value: v.into(),
        }
    }

    #[test]
    fn own_mailbox_by_default() {
        let d = decide_mailbox(&principal(&[]), None, &no_upns).unwrap();
        assert_eq!(
            d,
            Decision {
                mailbox: "svc@contoso.example".into(),
                via_client_header: false
            }
        );
    }

    #[test]
    fn client_header_for_own_mailbox_is_allowed() {
        let d = decide_mailbox(
            &principal(&[]),
            Some(&sid(
                ConnectingSidKind::PrimarySmtpAddress,
                "SVC@contoso.example",
            )),
            &no_upns,
        )
        .unwrap();
        assert!(d.via_client_header);
    }

    #[test]
    fn grants_and_denials() {
        let p = principal(&["*@contoso.example", "boss@fabrikam.example"]);
        for ok in ["a@contoso.example", "boss@fabrikam.example"] {
            assert!(
                decide_mailbox(&p, Some(&sid(ConnectingSidKind::SmtpAddress, ok)), &no_upns)
                    .is_ok(),
                "{ok}"
            );
        }
        for denied in [
            "a@contoso.example.evil",
            "a@sub.contoso.example",
            "x@fabrikam.example",
        ] {
            let err = decide_mailbox(
                &p,
                Some(&sid(ConnectingSidKind::SmtpAddress, denied)),
                &no_upns,
            )
            .unwrap_err();
            assert_eq!(err.code(), "ErrorImpersonateUserDenied");
            assert!(err.to_string().contains(denied), "{err}");
        }
        let none = principal(&[]);
        assert!(
            decide_mailbox(
                &none,
                Some(&sid(ConnectingSidKind::SmtpAddress, "a@contoso.example")),
                &no_upns
            )
            .is_err()
        );
    }

    #[test]
    fn operation_policy_is_an_allow_list_when_present() {
        let open = principal(&[]);
        assert!(
            may_call(&open, "FindItem").is_ok(),
            "no list: every operation"
        );
        let scanner = Principal {
            operations: Some(vec!["CreateItem".into(), "SendItem".into()]),
            ..principal(&[])
        };
        assert!(may_call(&scanner, "CreateItem").is_ok());
        assert!(may_call(&scanner, "SendItem").is_ok());
        let err = may_call(&scanner, "FindItem").unwrap_err();
        assert_eq!(err.code(), "ErrorAccessDenied");
        let text = err.to_string();
        assert!(text.contains("may not call FindItem"), "{text}");
        assert!(text.contains("CreateItem, SendItem"), "{text}");
        assert!(
            may_call(&scanner, "createitem").is_err(),
            "names are case-sensitive"
        );
        let nothing = Principal {
            operations: Some(vec![]),
            ..principal(&[])
        };
        assert!(may_call(&nothing, "GetFolder").is_err());
    }

    #[test]
    fn sid_and_non_address_upn_are_refused() {
        let p = principal(&["*@contoso.example"]);
        assert!(matches!(
            decide_mailbox(
                &p,
                Some(&sid(ConnectingSidKind::Sid, "S-1-5-21-1")),
                &no_upns
            ),
            Err(PolicyError::UncheckableIdentity { .. })
        ));
        assert!(
            decide_mailbox(
                &p,
                Some(&sid(ConnectingSidKind::PrincipalName, "a@contoso.example")),
                &no_upns
            )
            .is_ok()
        );
        assert!(
            decide_mailbox(
                &p,
                Some(&sid(ConnectingSidKind::PrincipalName, "CONTOSO\\a")),
                &no_upns
            )
            .is_err()
        );
    }
}

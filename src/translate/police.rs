//! Mailbox-reference policing for the Graph backend.
//!
//! With an app-only Graph token, Graph checks no delegate rights: a request under
//! `/users/{m}/…` may touch anything in any mailbox. So the translator checks every mailbox
//! reference in the request itself, before any Graph call that acts on it:
//! - a `t:Mailbox` inside a folder id must be a mailbox the principal may act as;
//! - every item/folder id's embedded mailbox GUID must be the GUID of the mailbox the call acts
//!   as (learnt from Graph, cached), so an id of another mailbox is refused even under the
//!   right URL;
//! - `From` and `Sender` (JSON fields or MIME headers) must be addresses the principal may act
//!   as, or the gateway becomes a spoofing relay.

use uuid::Uuid;

use super::errors::EwsFailure;
use super::ids::{self, ParsedId};
use crate::auth::Principal;
use crate::policy::may_act_as;

/// The mailbox a call acts as, and who calls.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The authenticated caller.
    pub principal: &'a Principal,
    /// The mailbox the gateway's policy decided for this call (lower-case address).
    pub mailbox: &'a str,
}

impl Scope<'_> {
    /// A `t:Mailbox` naming `address` inside a folder id: the principal must be allowed to act
    /// as it. Returns whether it is the call's own mailbox (others are not translated).
    pub fn mailbox_ref(&self, address: &str) -> Result<bool, EwsFailure> {
        let address = address.trim();
        if address.eq_ignore_ascii_case(self.mailbox) {
            return Ok(true);
        }
        if may_act_as(self.principal, address) {
            Ok(false)
        } else {
            Err(EwsFailure::item(
                "ErrorAccessDenied",
                format!(
                    "Access is denied. ews-gateway: {} may not access the mailbox {address}.",
                    self.principal.name
                ),
            ))
        }
    }

    /// A `From` or `Sender` address: the principal must be allowed to act as it.
    pub fn sender(&self, address: &str) -> Result<(), EwsFailure> {
        if address.trim().eq_ignore_ascii_case(self.mailbox) || may_act_as(self.principal, address)
        {
            Ok(())
        } else {
            Err(EwsFailure::item(
                "ErrorSendAsDenied",
                format!(
                    "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account. ews-gateway: {} may not send as {}.",
                    self.principal.name,
                    address.trim()
                ),
            ))
        }
    }
}

/// Parses an incoming id; malformed ids are a per-item `ErrorInvalidIdMalformed`.
pub fn parse_id(id: &str) -> Result<ParsedId, EwsFailure> {
    ids::parse(id).map_err(|_| EwsFailure::item("ErrorInvalidIdMalformed", "Id is malformed."))
}

/// An id must belong to the call's mailbox (`expected` is its GUID).
pub fn id_in_mailbox(id: &ParsedId, expected: Uuid, scope: &Scope<'_>) -> Result<(), EwsFailure> {
    if id.mailbox_guid == expected {
        Ok(())
    } else {
        Err(EwsFailure::item(
            "ErrorAccessDenied",
            format!(
                "Access is denied. ews-gateway: the id belongs to another mailbox than {}, which this call acts as.",
                scope.mailbox
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MailboxPattern;

    fn principal(grants: &[&str]) -> Principal {
        Principal {
            name: "alice@contoso.example".into(),
            mailbox: "alice@contoso.example".into(),
            may_impersonate: grants
                .iter()
                .map(|g| MailboxPattern::parse(g).unwrap())
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn mailbox_refs_follow_policy() {
        let p = principal(&["sales@contoso.example"]);
        let s = Scope {
            principal: &p,
            mailbox: "alice@contoso.example",
        };
        assert_eq!(s.mailbox_ref("ALICE@contoso.example"), Ok(true));
        assert_eq!(s.mailbox_ref("sales@contoso.example"), Ok(false));
        let e = s.mailbox_ref("bob@contoso.example").unwrap_err();
        assert_eq!(e.code, "ErrorAccessDenied");
    }

    #[test]
    fn senders_follow_policy() {
        let p = principal(&[]);
        let s = Scope {
            principal: &p,
            mailbox: "alice@contoso.example",
        };
        assert!(s.sender("Alice@Contoso.example").is_ok());
        assert_eq!(
            s.sender("bob@contoso.example").unwrap_err().code,
            "ErrorSendAsDenied"
        );
    }

    #[test]
    fn ids_must_carry_the_calls_mailbox_guid() {
        let p = principal(&["*@contoso.example"]);
        let s = Scope {
            principal: &p,
            mailbox: "alice@contoso.example",
        };
        let alice = Uuid::parse_str("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9").unwrap();
        let bob = "1f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
        let own = parse_id(&ids::make_id(&alice.to_string(), b"x")).unwrap();
        assert!(id_in_mailbox(&own, alice, &s).is_ok());
        let foreign = parse_id(&ids::make_id(bob, b"x")).unwrap();
        // Even a mailbox the principal may act as: the call acts as alice.
        assert_eq!(
            id_in_mailbox(&foreign, alice, &s).unwrap_err().code,
            "ErrorAccessDenied"
        );
        assert_eq!(
            parse_id("DUMMY").unwrap_err().code,
            "ErrorInvalidIdMalformed"
        );
    }
}

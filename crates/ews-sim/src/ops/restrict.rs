//! FindItem and FindFolder restrictions, and sort orders over stored items.
//!
//! Supported: `IsEqualTo`, `IsNotEqualTo`, `IsGreaterThan(OrEqualTo)`, `IsLessThan(OrEqualTo)`,
//! `Contains`, `Exists`, `And`, `Or`, `Not` on subject, dates, read flag, attachments, class,
//! sender, and the MAPI tags DavMail uses (0x0037 subject, 0x0e23 IMAP UID); for folders on the
//! display name and the folder class (also as 0x3001 and 0x3613, DavMail's folder lookups).
//! Anything else is "unknown" and ignored rather than refused: an unknown leaf neither includes
//! nor excludes.

use std::cmp::Ordering;

use time::OffsetDateTime;

use super::common::{T, parse_time};
use super::render::{message_flags, parse_tag};
use crate::mailbox::{Folder, Item};
use crate::xml::Element;

#[derive(Debug, Clone)]
enum Val {
    S(String),
    I(i64),
    B(bool),
    D(OffsetDateTime),
}

/// Something a restriction can test: an item or a folder.
trait Props {
    /// The value of the property `f` (a `FieldURI`, `ExtendedFieldURI`, ...): `None` = not
    /// supported; `Some(None)` = not set.
    fn prop(&self, f: &Element) -> Option<Option<Val>>;
}

impl Props for Item {
    fn prop(&self, f: &Element) -> Option<Option<Val>> {
        let m = &self.msg;
        let v = match f.local.as_str() {
            "FieldURI" => match f.attr("FieldURI")? {
                "item:Subject" => Some(Val::S(m.subject.clone())),
                "item:DateTimeReceived" => Some(Val::D(m.received)),
                "item:DateTimeSent" => m.sent.map(Val::D),
                "item:DateTimeCreated" => Some(Val::D(self.created)),
                "item:LastModifiedTime" => Some(Val::D(self.modified)),
                "item:HasAttachments" => Some(Val::B(!m.attachments.is_empty())),
                "item:ItemClass" => Some(Val::S(m.item_class.clone())),
                "item:Importance" => Some(Val::S(m.importance.clone())),
                "item:IsDraft" => Some(Val::B(m.is_draft)),
                "item:Body" => Some(Val::S(m.body.clone())),
                "message:IsRead" => Some(Val::B(m.is_read)),
                "message:InternetMessageId" => Some(Val::S(m.internet_message_id.clone())),
                "message:From" | "message:Sender" => {
                    m.from.as_ref().map(|a| Val::S(a.email.clone()))
                }
                _ => return None,
            },
            "ExtendedFieldURI" => match f.attr("PropertyTag").and_then(parse_tag)? {
                0x0037 => Some(Val::S(m.subject.clone())),
                0x0e23 => Some(Val::I(i64::try_from(self.article).unwrap_or(i64::MAX))),
                0x0e07 => Some(Val::I(i64::from(message_flags(self)))),
                0x1035 => Some(Val::S(m.internet_message_id.clone())),
                _ => return None,
            },
            _ => return None,
        };
        Some(v)
    }
}

impl Props for Folder {
    fn prop(&self, f: &Element) -> Option<Option<Val>> {
        let name = || Some(Val::S(self.display_name.clone()));
        let class = || self.class.clone().map(Val::S);
        Some(match f.local.as_str() {
            "FieldURI" => match f.attr("FieldURI")? {
                "folder:DisplayName" => name(),
                "folder:FolderClass" => class(),
                _ => return None,
            },
            "ExtendedFieldURI" => match f.attr("PropertyTag").and_then(parse_tag)? {
                0x3001 => name(),
                0x3613 => class(),
                _ => return None,
            },
            _ => return None,
        })
    }
}

/// The property an expression names: `None` = not supported; `Some(None)` = not set.
fn field(target: &dyn Props, expr: &Element) -> Option<Option<Val>> {
    let f = expr.elements().find(|e| {
        e.ns.as_deref() == Some(T)
            && matches!(
                e.local.as_str(),
                "FieldURI" | "ExtendedFieldURI" | "IndexedFieldURI"
            )
    })?;
    target.prop(f)
}

fn constant(expr: &Element) -> Option<String> {
    expr.child(T, "FieldURIOrConstant")
        .and_then(|c| c.child(T, "Constant"))
        .or_else(|| expr.child(T, "Constant"))
        .and_then(|c| c.attr("Value"))
        .map(str::to_owned)
}

fn coerce(like: &Val, text: &str) -> Option<Val> {
    Some(match like {
        Val::S(_) => Val::S(text.to_owned()),
        Val::I(_) => Val::I(text.trim().parse().ok()?),
        Val::B(_) => Val::B(super::common::parse_bool(text)?),
        Val::D(_) => Val::D(parse_time(text)?),
    })
}

fn compare(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::S(x), Val::S(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Val::I(x), Val::I(y)) => Some(x.cmp(y)),
        (Val::B(x), Val::B(y)) => Some(x.cmp(y)),
        (Val::D(x), Val::D(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Evaluates one restriction node; `None` = unknown (ignored).
fn eval(el: &Element, item: &dyn Props) -> Option<bool> {
    let children = || el.elements().filter(|e| e.ns.as_deref() == Some(T));
    match el.local.as_str() {
        "And" => {
            let results: Vec<Option<bool>> = children().map(|c| eval(c, item)).collect();
            if results.contains(&Some(false)) {
                Some(false)
            } else if results.contains(&Some(true)) {
                Some(true)
            } else {
                None
            }
        }
        "Or" => {
            let results: Vec<Option<bool>> = children().map(|c| eval(c, item)).collect();
            if results.contains(&Some(true)) {
                Some(true)
            } else if results.contains(&None) {
                None
            } else {
                Some(false)
            }
        }
        "Not" => children().next().and_then(|c| eval(c, item)).map(|b| !b),
        "Exists" => field(item, el).map(|v| v.is_some()),
        "Contains" => {
            let value = field(item, el)?;
            let wanted = constant(el)?;
            let Some(Val::S(have)) = value else {
                return Some(false);
            };
            let ignore_case = el
                .attr("ContainmentComparison")
                .is_some_and(|c| c.contains("IgnoreCase") || c == "Loose");
            let (have, wanted) = if ignore_case {
                (have.to_lowercase(), wanted.to_lowercase())
            } else {
                (have, wanted)
            };
            Some(match el.attr("ContainmentMode").unwrap_or("Substring") {
                "FullString" => have == wanted,
                "Prefixed" => have.starts_with(&wanted),
                "PrefixOnWords" => have.split_whitespace().any(|w| w.starts_with(&wanted)),
                _ => have.contains(&wanted),
            })
        }
        op @ ("IsEqualTo"
        | "IsNotEqualTo"
        | "IsGreaterThan"
        | "IsGreaterThanOrEqualTo"
        | "IsLessThan"
        | "IsLessThanOrEqualTo") => {
            let value = field(item, el)?;
            let text = constant(el)?;
            let Some(have) = value else {
                return Some(op == "IsNotEqualTo");
            };
            let wanted = coerce(&have, &text)?;
            let ord = compare(&have, &wanted)?;
            Some(match op {
                "IsEqualTo" => ord == Ordering::Equal,
                "IsNotEqualTo" => ord != Ordering::Equal,
                "IsGreaterThan" => ord == Ordering::Greater,
                "IsGreaterThanOrEqualTo" => ord != Ordering::Less,
                "IsLessThan" => ord == Ordering::Less,
                _ => ord != Ordering::Greater,
            })
        }
        _ => None,
    }
}

/// Whether `item` passes the `m:Restriction` element (unknown counts as passing).
pub(super) fn matches(restriction: &Element, item: &Item) -> bool {
    passes(restriction, item)
}

/// Whether `folder` passes the `m:Restriction` element of a FindFolder.
pub(super) fn matches_folder(restriction: &Element, folder: &Folder) -> bool {
    passes(restriction, folder)
}

fn passes(restriction: &Element, target: &dyn Props) -> bool {
    restriction
        .elements()
        .find(|e| e.ns.as_deref() == Some(T))
        .and_then(|e| eval(e, target))
        .unwrap_or(true)
}

/// Sorts by `m:SortOrder` (default: newest received first, as Exchange lists a folder).
pub(super) fn sort(items: &mut [&Item], order: Option<&Element>) {
    let orders: Vec<&Element> = order
        .map(|o| o.children_named(T, "FieldOrder").collect())
        .unwrap_or_default();
    if orders.is_empty() {
        items.sort_by(|a, b| {
            b.msg
                .received
                .cmp(&a.msg.received)
                .then(b.article.cmp(&a.article))
        });
        return;
    }
    items.sort_by(|a, b| {
        for o in &orders {
            let descending = o.attr("Order") == Some("Descending");
            let ka = field(*a, o).flatten();
            let kb = field(*b, o).flatten();
            let ord = match (ka, kb) {
                (Some(x), Some(y)) => compare(&x, &y).unwrap_or(Ordering::Equal),
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            };
            let ord = if descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a.article.cmp(&b.article)
    });
}

//! Streaming notifications: Subscribe, GetStreamingEvents and Unsubscribe.
//!
//! The store queues events per subscription as mutations happen and bumps a watch channel; an
//! open GetStreamingEvents stream drains its queues whenever that channel changes, sends a
//! `StatusEvent` heartbeat after `streaming_heartbeat` of silence, and ends with `Closed` at its
//! ConnectionTimeout (or as soon as one of its subscriptions is removed). Each frame is a
//! complete unprefixed `<Envelope>` with its own `ServerVersionInfo`, as Exchange Online streams
//! them (ews-javascript-api splits the stream on the literal `<Envelope`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::common::{
    M, OpError, OpResult, T, error, fmt_time, folder_id_elements, folder_target, message, ok,
    parse_bool, required, resolve_folder, response, schema_fault,
};
use super::{OpContext, OpOutcome};
use crate::SimState;
use crate::mailbox::{Event, EventKind, Subscription};
use crate::xml::Element;
use ews_gateway_core::soap::{NS_SOAP, escape};

/// Exchange Online's per-user subscription budget (EWSMaxSubscriptions).
const MAX_SUBSCRIPTIONS: usize = 20;
/// Exchange caps events per notification at about 50.
const EVENTS_PER_NOTIFICATION: usize = 50;

fn not_found() -> OpError {
    OpError::new(
        "ErrorSubscriptionNotFound",
        "The specified subscription was not found.",
    )
}

fn denied() -> OpError {
    OpError::new(
        "ErrorSubscriptionAccessDenied",
        "Subscriptions can only be used by the account that created them.",
    )
}

pub(super) fn subscribe(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let Some(req) = op.child(M, "StreamingSubscriptionRequest") else {
        if op.child(M, "PullSubscriptionRequest").is_some()
            || op.child(M, "PushSubscriptionRequest").is_some()
        {
            return Err(OpOutcome::Fault {
                code: "ErrorInvalidOperation".to_owned(),
                message: "The operation Subscribe is not simulated for pull or push subscriptions."
                    .to_owned(),
                message_xml: Vec::new(),
            });
        }
        return Err(schema_fault(
            "The element 'Subscribe' has incomplete content. List of possible elements expected: 'PullSubscriptionRequest, PushSubscriptionRequest, StreamingSubscriptionRequest'.",
        ));
    };
    let all = req
        .attr("SubscribeToAllFolders")
        .and_then(parse_bool)
        .unwrap_or(false);
    let folders: Vec<&Element> = req
        .child(T, "FolderIds")
        .map(folder_id_elements)
        .unwrap_or_default();
    let mut kinds = Vec::new();
    for t in required(req, T, "EventTypes")?.children_named(T, "EventType") {
        let name = t.text();
        match EventKind::parse(&name) {
            Some(k) => kinds.push(k),
            // Free/busy changes concern calendars, which the simulator keeps empty.
            None if name == "FreeBusyChangedEvent" => {}
            None => {
                return Err(schema_fault(&format!(
                    "The element 'EventType' is invalid - The value '{name}' is invalid according to its datatype."
                )));
            }
        }
    }
    let acting = ctx.acting.smtp.to_ascii_lowercase();
    let msg = state.mailboxes.with(|data| {
        let r = (|| {
            if !all && folders.is_empty() {
                return Err(OpError::new(
                    "ErrorInvalidSubscriptionRequest",
                    "The subscription request must name folders or subscribe to all folders.",
                ));
            }
            let owned = data
                .subscriptions
                .values()
                .filter(|s| s.owner == acting)
                .count();
            if owned >= MAX_SUBSCRIPTIONS {
                return Err(OpError::new(
                    "ErrorExceededSubscriptionCount",
                    "You have exceeded the maximum number of subscriptions.",
                ));
            }
            let watched = if all {
                None
            } else {
                let mut list = Vec::new();
                for el in &folders {
                    let t = folder_target(ctx, el)?;
                    let fid = resolve_folder(data, &t)?;
                    list.push((t.mailbox, fid));
                }
                Some(list)
            };
            let mut raw = b"sim-sub".to_vec();
            raw.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            let id = STANDARD.encode(raw);
            data.subscriptions.insert(
                id.clone(),
                Subscription {
                    owner: acting.clone(),
                    app: ctx.app_id.clone(),
                    folders: watched,
                    kinds: kinds.clone(),
                    queue: Default::default(),
                },
            );
            Ok(format!(
                "<m:SubscriptionId>{}</m:SubscriptionId>",
                escape(&id)
            ))
        })();
        message("Subscribe", r)
    });
    Ok(response("Subscribe", &[msg]))
}

pub(super) fn unsubscribe(state: &Arc<SimState>, ctx: &OpContext, op: &Element) -> OpResult {
    let id = required(op, M, "SubscriptionId")?.text();
    let msg = state.mailboxes.with(|data| {
        let r = match data.subscriptions.get(&id) {
            None => Err(not_found()),
            Some(s) if s.app != ctx.app_id => Err(denied()),
            Some(_) => {
                data.subscriptions.remove(&id);
                Ok(String::new())
            }
        };
        message("Unsubscribe", r)
    });
    Ok(response("Unsubscribe", &[msg]))
}

/// One streamed frame: an unprefixed envelope with `ServerVersionInfo`, no XML declaration.
fn envelope(message: &str) -> Bytes {
    Bytes::from(format!(
        "<Envelope xmlns=\"{NS_SOAP}\"><Header>{}</Header><Body>{}</Body></Envelope>",
        crate::ews::server_version_info(),
        response("GetStreamingEvents", &[message.to_owned()])
    ))
}

fn closed_frame() -> Bytes {
    envelope(&ok(
        "GetStreamingEvents",
        "<m:ConnectionStatus>Closed</m:ConnectionStatus>",
    ))
}

fn error_frame(e: &OpError) -> Bytes {
    let msg = error("GetStreamingEvents", e).replace(
        "</m:GetStreamingEventsResponseMessage>",
        "<m:ConnectionStatus>Closed</m:ConnectionStatus></m:GetStreamingEventsResponseMessage>",
    );
    envelope(&msg)
}

fn watermark(seq: u64) -> String {
    STANDARD.encode(format!("sim-wm|{seq}"))
}

fn event_xml(e: &Event) -> String {
    let name = e.kind.element();
    let mut out = format!(
        "<t:{name}><t:Watermark>{}</t:Watermark><t:TimeStamp>{}</t:TimeStamp><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/><t:ParentFolderId Id=\"{}\"/>",
        watermark(e.seq),
        fmt_time(e.timestamp),
        escape(&e.item.0),
        escape(&e.item.1),
        escape(&e.parent)
    );
    if let Some((old_id, old_parent)) = &e.old {
        out.push_str(&format!(
            "<t:OldItemId Id=\"{}\"/><t:OldParentFolderId Id=\"{}\"/>",
            escape(old_id),
            escape(old_parent)
        ));
    }
    out.push_str(&format!("</t:{name}>"));
    out
}

fn events_frame(batches: &[(String, Vec<Event>)]) -> Bytes {
    let mut notes = String::from("<m:Notifications>");
    for (sub, events) in batches {
        for chunk in events.chunks(EVENTS_PER_NOTIFICATION) {
            notes.push_str(&format!(
                "<m:Notification><t:SubscriptionId>{}</t:SubscriptionId>",
                escape(sub)
            ));
            for e in chunk {
                notes.push_str(&event_xml(e));
            }
            notes.push_str("</m:Notification>");
        }
    }
    notes.push_str("</m:Notifications><m:ConnectionStatus>OK</m:ConnectionStatus>");
    envelope(&ok("GetStreamingEvents", &notes))
}

fn heartbeat_frame(ids: &[String], seq: u64) -> Bytes {
    let mut notes = String::from("<m:Notifications>");
    for id in ids {
        notes.push_str(&format!(
            "<m:Notification><t:SubscriptionId>{}</t:SubscriptionId><t:StatusEvent><t:Watermark>{}</t:Watermark></t:StatusEvent></m:Notification>",
            escape(id),
            watermark(seq)
        ));
    }
    notes.push_str("</m:Notifications><m:ConnectionStatus>OK</m:ConnectionStatus>");
    envelope(&ok("GetStreamingEvents", &notes))
}

struct Connection {
    state: Arc<SimState>,
    ids: Vec<String>,
    deadline: Instant,
    heartbeat: Duration,
    last_sent: Instant,
    changes: watch::Receiver<u64>,
    done: bool,
}

async fn next_frame(mut c: Connection) -> Option<(Bytes, Connection)> {
    if c.done {
        return None;
    }
    loop {
        let (drained, seq) = c
            .state
            .mailboxes
            .with(|d| (d.drain_events(&c.ids), d.seq()));
        let Some(batches) = drained else {
            // A subscription went away (Unsubscribe): Exchange closes the connection.
            c.done = true;
            return Some((closed_frame(), c));
        };
        let now = Instant::now();
        if !batches.is_empty() {
            c.last_sent = now;
            return Some((events_frame(&batches), c));
        }
        if now >= c.deadline {
            c.done = true;
            return Some((closed_frame(), c));
        }
        let beat = c.last_sent + c.heartbeat;
        if now >= beat {
            c.last_sent = now;
            return Some((heartbeat_frame(&c.ids, seq), c));
        }
        let wake = beat.min(c.deadline);
        tokio::select! {
            changed = c.changes.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(wake).await;
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

pub(super) fn get_streaming_events(
    state: &Arc<SimState>,
    ctx: &OpContext,
    op: &Element,
) -> OpOutcome {
    let ids: Vec<String> = match required(op, M, "SubscriptionIds") {
        Ok(el) => el
            .children_named(T, "SubscriptionId")
            .map(Element::text)
            .collect(),
        Err(fault) => return fault,
    };
    if ids.is_empty() || ids.len() > 200 {
        return schema_fault(
            "The element 'SubscriptionIds' must hold between 1 and 200 'SubscriptionId' elements.",
        );
    }
    let timeout = match required(op, M, "ConnectionTimeout") {
        Ok(el) => el.text(),
        Err(fault) => return fault,
    };
    let minutes = match timeout.parse::<u64>() {
        Ok(m) if (1..=30).contains(&m) => m,
        _ => {
            return schema_fault(&format!(
                "The 'ConnectionTimeout' element is invalid - The value '{timeout}' is invalid according to its datatype (1 to 30 minutes)."
            ));
        }
    };
    // Subscribe to changes before checking, so nothing queued in between is missed.
    let changes = state.mailboxes.changes();
    let check = state.mailboxes.with(|data| {
        for id in &ids {
            match data.subscriptions.get(id) {
                None => {
                    return Err(OpError::new(
                        "ErrorInvalidSubscription",
                        "The subscription is invalid.",
                    ));
                }
                Some(s) if s.app != ctx.app_id => return Err(denied()),
                Some(_) => {}
            }
        }
        Ok(())
    });
    if let Err(e) = check {
        let frame = error_frame(&e);
        return OpOutcome::Stream(futures_util::stream::once(async move { frame }).boxed());
    }
    let now = Instant::now();
    let conn = Connection {
        state: Arc::clone(state),
        ids,
        deadline: now + Duration::from_secs(minutes * 60),
        // A zero interval would spin; Exchange's floor is far above this anyway.
        heartbeat: state
            .config
            .streaming_heartbeat
            .max(Duration::from_millis(100)),
        last_sent: now,
        changes,
        done: false,
    };
    OpOutcome::Stream(futures_util::stream::unfold(conn, next_frame).boxed())
}

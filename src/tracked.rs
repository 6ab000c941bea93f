//! Response bodies that know when they end: they count the bytes sent, run a completion
//! callback exactly once (end of stream, error, or the client going away), and, for EWS
//! streaming notifications, end cleanly with a `ConnectionStatus Closed` frame when the gateway
//! drains for shutdown, so clients reconnect (to another replica) instead of seeing a cut.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::http_util::{Body, BoxError};

/// Called once with the bytes sent and whether the body reached its end.
pub type OnEnd = Box<dyn FnOnce(u64, bool) + Send>;

/// Closes a streaming-notification response at a frame boundary when `token` is cancelled.
pub struct CloseOnDrain {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Whether the bytes sent so far end with a complete frame.
    at_boundary: bool,
    closing: bool,
}

impl CloseOnDrain {
    /// Watches `token`.
    pub fn new(token: CancellationToken) -> Self {
        Self {
            cancelled: Box::pin(token.cancelled_owned()),
            at_boundary: true,
            closing: false,
        }
    }
}

/// A response body wrapper; see the module docs.
pub struct Tracked {
    inner: Body,
    sent: u64,
    on_end: Option<OnEnd>,
    close: Option<CloseOnDrain>,
}

impl Tracked {
    /// Wraps `inner`; `on_end` runs once when it ends or is dropped.
    pub fn new(inner: Body, on_end: OnEnd, close: Option<CloseOnDrain>) -> Self {
        Self {
            inner,
            sent: 0,
            on_end: Some(on_end),
            close,
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.sent, completed);
        }
    }
}

/// Whether a chunk of a notification stream ends a frame. The stream is the upstream's own
/// answer and this only picks where to stop it, never what to allow, so a suffix check is
/// enough: every frame is a complete `<Envelope>` document.
fn ends_frame(chunk: &[u8]) -> bool {
    let trimmed = chunk.trim_ascii_end();
    trimmed.ends_with(b"Envelope>")
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(close) = this.close.as_mut() {
            if close.closing {
                this.finish(true);
                return Poll::Ready(None);
            }
            if close.at_boundary && close.cancelled.as_mut().poll(cx).is_ready() {
                close.closing = true;
                let frame = Bytes::from(crate::soap::streaming_closed_frame());
                this.sent += frame.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if let Some(close) = this.close.as_mut()
                        && !data.is_empty()
                    {
                        close.at_boundary = ends_frame(data);
                    }
                }
                // hyper stops polling a body of known length once it has it all.
                if this.close.is_none() && this.inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(false);
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none() || (self.close.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.close.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    type Ends = Arc<Mutex<Vec<(u64, bool)>>>;

    fn recorder() -> (Ends, OnEnd) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        (
            seen,
            Box::new(move |n, done| s.lock().unwrap().push((n, done))),
        )
    }

    #[tokio::test]
    async fn counts_bytes_and_reports_the_end_once() {
        let (seen, on_end) = recorder();
        let body = Tracked::new(crate::http_util::full("hello world"), on_end, None);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello world");
        assert_eq!(*seen.lock().unwrap(), vec![(11, true)]);
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_complete_once_all_of_it_went_out() {
        let (seen, on_end) = recorder();
        let mut body = Tracked::new(crate::http_util::full("abc"), on_end, None);
        let _ = body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![(3, true)]);
    }

    #[tokio::test]
    async fn a_dropped_body_reports_incomplete() {
        let (seen, on_end) = recorder();
        drop(Tracked::new(crate::http_util::full("x"), on_end, None));
        assert_eq!(*seen.lock().unwrap(), vec![(0, false)]);
    }

    #[tokio::test]
    async fn draining_closes_a_notification_stream_after_a_whole_frame() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let token = CancellationToken::new();
        let (seen, on_end) = recorder();
        let mut body = Tracked::new(
            stream.boxed_unsync(),
            on_end,
            Some(CloseOnDrain::new(token.clone())),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(
            b"<Envelope>one</Envelope>",
        ))))
        .await
        .unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"<Envelope>one</Envelope>");
        // Half a frame arrives, then the drain starts: the rest of the frame still goes out.
        tx.send(Ok(Frame::data(Bytes::from_static(b"<Envelope>tw"))))
            .await
            .unwrap();
        let _ = body.frame().await.unwrap().unwrap();
        token.cancel();
        tx.send(Ok(Frame::data(Bytes::from_static(b"o</Envelope>\r\n"))))
            .await
            .unwrap();
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&rest[..], b"o</Envelope>\r\n");
        let closed = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let closed = String::from_utf8(closed.to_vec()).unwrap();
        assert!(closed.starts_with("<Envelope"), "{closed}");
        assert!(
            closed.contains("<m:ConnectionStatus>Closed</m:ConnectionStatus>"),
            "{closed}"
        );
        assert!(body.frame().await.is_none(), "the stream ends after Closed");
        let total = 24 + 12 + 14 + closed.len() as u64;
        assert_eq!(*seen.lock().unwrap(), vec![(total, true)]);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

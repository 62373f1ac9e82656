//! No answer claims more durability than the data behind it has.
//!
//! A write becomes readable when it is applied, a little before its journal sync returns. A
//! handler that answers from what it read ("this key already exists", "this grant was already
//! received, here is the receipt", the material of a key just created by a concurrent call)
//! could otherwise acknowledge a write whose sync later fails, or that a crash then loses: a
//! hedging client's retry would be told "created" for a key that is gone after a restart, a
//! MOVE's source would tombstone keys the destination never made durable.
//!
//! So every response of the lockbox's services, on the Unix socket and the peer API, passes
//! through [`Settle`], which waits until everything applied before the response was made is
//! durable. With nothing pending that is one lock and a comparison; under write load it is at
//! most about one shared sync. If the store failed meanwhile, the response is replaced by
//! `UNAVAILABLE` naming the failure: the caller retries against a restarted daemon, which
//! answers from what the disk holds.
//!
//! The hottest handlers narrow that wait with [`answer_needs`]: a create that committed its
//! own batch needs only that batch durable (it read nothing newer), a get only the writes
//! behind the records it read ([`Store::unsynced`]). Waiting for every unrelated write applied
//! meanwhile cost each create and get under load one more sync and ~35 µs of server CPU per
//! pair (BENCHMARKS.md). A handler that states nothing gets the full wait.

use std::cell::Cell;
use std::task::{Context, Poll};

use lockbox_store::Store;
use tonic::codegen::{BoxFuture, Service, http};

tokio::task_local! {
    /// The generation the response being built needs durable, once its handler has said so.
    static NEEDS: Cell<Option<u64>>;
}

/// States that the answer being built derives only from writes up to `generation` (the
/// handler's own committed batch, or [`Store::unsynced`] of each record it read): the
/// response then waits for that generation instead of for everything applied so far. Call it
/// only on the path that returns the answer, after the last read the answer uses; calls add
/// up (the newest generation wins). Outside a request (tests, background work) it does
/// nothing.
pub fn answer_needs(generation: u64) {
    let _ = NEEDS.try_with(|needs| {
        needs.set(Some(needs.get().map_or(generation, |g| g.max(generation))));
    });
}

/// Wraps a service so that its responses wait for durability (see the module doc).
#[derive(Clone)]
pub struct SettleLayer {
    store: Store,
}

impl SettleLayer {
    /// A layer over the node's store.
    pub fn new(store: Store) -> Self {
        SettleLayer { store }
    }
}

impl<S> tower::Layer<S> for SettleLayer {
    type Service = Settle<S>;

    fn layer(&self, inner: S) -> Settle<S> {
        Settle {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service [`SettleLayer`] makes.
#[derive(Clone)]
pub struct Settle<S> {
    inner: S,
    store: Store,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Settle<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(req);
        let store = self.store.clone();
        Box::pin(async move {
            let (needs, response) = NEEDS
                .scope(Cell::new(None), async {
                    let response = response.await;
                    (NEEDS.with(Cell::get), response)
                })
                .await;
            let response = response?;
            let settled = match needs {
                Some(generation) => store.settled_through(generation).await,
                None => store.settled().await,
            };
            match settled {
                Ok(()) => Ok(response),
                Err(e) => Ok(tonic::Status::unavailable(format!("unavailable: {e}")).into_http()),
            }
        })
    }
}

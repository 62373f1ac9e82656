//! Request size limits per gRPC method, enforced as the request body streams in.
//!
//! tonic's message size limit is per service: a service with one method that takes a batch of
//! keys (megabytes) would let its other methods be sent messages that large too, and buffer
//! them before a handler sees anything. [`MethodLimitsLayer`] caps the whole request body of
//! the methods it names: past the cap the body ends in an error, the call fails, and nothing
//! more of it is read or kept.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;

/// Caps the request body of the named methods (`/package.Service/Method`, bytes).
#[derive(Clone, Debug)]
pub struct MethodLimitsLayer {
    limits: Arc<[(&'static str, usize)]>,
}

impl MethodLimitsLayer {
    /// A layer with these `(path, most bytes)` limits; other methods are left to the
    /// service's message size limit.
    pub fn new(limits: &[(&'static str, usize)]) -> Self {
        MethodLimitsLayer {
            limits: limits.into(),
        }
    }
}

impl<S> tower::Layer<S> for MethodLimitsLayer {
    type Service = MethodLimits<S>;

    fn layer(&self, inner: S) -> MethodLimits<S> {
        MethodLimits {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service [`MethodLimitsLayer`] makes.
#[derive(Clone, Debug)]
pub struct MethodLimits<S> {
    inner: S,
    limits: Arc<[(&'static str, usize)]>,
}

impl<S> tower::Service<http::Request<Body>> for MethodLimits<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let limit = self
            .limits
            .iter()
            .find(|(path, _)| req.uri().path() == *path)
            .map(|(_, most)| *most);
        let req = match limit {
            Some(most) => req.map(|body| Body::new(http_body_util::Limited::new(body, most))),
            None => req,
        };
        self.inner.call(req)
    }
}

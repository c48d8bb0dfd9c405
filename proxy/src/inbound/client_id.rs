//! Counts the inbound requests that arrive with a `mesh-client-id` header of their own, which
//! [`crate::http::headers::client_id`] then removes (plaintext) or replaces with the proven
//! identity (mutual TLS): only the pod's own proxy sets it, so one that arrives was forged or
//! forwarded by a peer's application. Sits just outside that layer, so it sees the request as
//! the client sent it.

use crate::{
    http::CLIENT_ID_HEADER,
    metrics::{ClientIdLabels, Tls},
    svc::{Param, Wrap, WrapLayer},
};
use http::Request;
use prometheus_client::metrics::{counter::Counter, family::Family};
use std::task::{Context, Poll};

/// Counts into `family`, labelled by whether the connection proved an identity.
pub fn layer(family: Family<ClientIdLabels, Counter>) -> WrapLayer<CountClientIdWrap> {
    WrapLayer(CountClientIdWrap { family })
}

#[derive(Clone, Debug)]
pub struct CountClientIdWrap {
    family: Family<ClientIdLabels, Counter>,
}

impl<T: Param<Tls>, S> Wrap<T, S> for CountClientIdWrap {
    type Service = CountClientId<S>;
    fn wrap(&self, target: &T, inner: S) -> CountClientId<S> {
        let labels = ClientIdLabels {
            tls: matches!(target.param(), Tls::Established(_)),
        };
        // The handle is taken once per connection, so a request pays one atomic add.
        let removed = self.family.get_or_create(&labels).clone();
        CountClientId { removed, inner }
    }
}

#[derive(Clone, Debug)]
pub struct CountClientId<S> {
    removed: Counter,
    inner: S,
}

impl<B, S: tower::Service<Request<B>>> tower::Service<Request<B>> for CountClientId<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        if req.headers().contains_key(CLIENT_ID_HEADER) {
            self.removed.inc();
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_with_their_own_client_id_are_counted_by_tls() {
        let family = Family::<ClientIdLabels, Counter>::default();
        let ok =
            tower::service_fn(|_: Request<()>| async { Ok::<_, std::convert::Infallible>(()) });
        let send = |tls: Tls, header: Option<&str>| {
            let svc = CountClientIdWrap {
                family: family.clone(),
            }
            .wrap(&tls, ok);
            let mut req = Request::builder();
            if let Some(value) = header {
                req = req.header(CLIENT_ID_HEADER, value);
            }
            svc.oneshot(req.body(()).unwrap())
        };
        let mtls = || Tls::Established(Arc::from("client.demo.sa"));
        let plain = || Tls::NoIdentity("not_provided_by_remote");
        send(plain(), Some("admin.forged")).await.unwrap();
        send(plain(), None).await.unwrap();
        send(mtls(), Some("web.forged")).await.unwrap();
        send(mtls(), Some("web.forged")).await.unwrap();
        send(mtls(), None).await.unwrap();
        let count = |tls| family.get_or_create(&ClientIdLabels { tls }).get();
        assert_eq!((count(false), count(true)), (1, 2));
    }
}

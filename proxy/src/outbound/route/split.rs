//! A rule's backends: every backend Service's balancer is made once and shared by every route
//! that names it ([`Backends`], a cache that forgets idle ones), and each request of a rule goes
//! to one of the rule's backends at random, in proportion to their weights (a canary split;
//! weight 0 drains a backend). A backend that cannot be used (an unknown Service) answers its
//! share with 500, as Gateway API says.

use super::metrics::{Handles, Metered};
use crate::{
    http::errors::InvalidBackend,
    metrics::{BackendKey, BackendLabels, RouteMetrics},
    outbound::{Logical, LogicalAddr},
    svc::{BoxBody, BoxError, Cache, NewService, Param},
};
use futures_util::future::{self, BoxFuture, Either};
use http::{Request, Response};
use std::{
    sync::Arc,
    task::{Context, Poll},
};
use tower::ServiceExt;

/// One backend of a rule, as its target says.
#[derive(Clone, Debug)]
pub struct BackendRef {
    pub addr: LogicalAddr,
    pub weight: u32,
    pub labels: Arc<BackendLabels>,
    /// Why it cannot be used.
    pub error: Option<Arc<str>>,
    /// Whether its requests are counted (its destination is a Service).
    pub metered: bool,
}

/// The backends of a rule.
#[derive(Clone, Debug, Default)]
pub struct BackendsParam(pub Vec<BackendRef>);

/// The balancers of every backend Service, made by `N` and shared by all routes.
pub struct Backends<N, S> {
    new_backend: N,
    cache: Arc<Cache<LogicalAddr, S>>,
    no_tls: &'static str,
}

impl<N: Clone, S> Clone for Backends<N, S> {
    fn clone(&self) -> Self {
        Self {
            new_backend: self.new_backend.clone(),
            cache: self.cache.clone(),
            no_tls: self.no_tls,
        }
    }
}

impl<N, S> Backends<N, S>
where
    N: NewService<Logical, Service = S>,
    S: Send + Sync + 'static,
{
    pub fn new(new_backend: N, cache: Arc<Cache<LogicalAddr, S>>, no_tls: &'static str) -> Self {
        Self {
            new_backend,
            cache,
            no_tls,
        }
    }

    /// The balancer of `addr`, held while the handle is.
    pub fn get(&self, addr: &LogicalAddr) -> Arc<S> {
        self.cache.get_or_insert_with(addr, || {
            self.new_backend.new_service(Logical {
                addr: addr.clone(),
                no_tls: self.no_tls,
            })
        })
    }
}

/// Makes each rule's split over its backends.
pub struct NewSplit<N, S> {
    backends: Backends<N, S>,
    metrics: RouteMetrics,
}

impl<N: Clone, S> Clone for NewSplit<N, S> {
    fn clone(&self) -> Self {
        Self {
            backends: self.backends.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<N, S> NewSplit<N, S> {
    pub fn new(backends: Backends<N, S>, metrics: RouteMetrics) -> Self {
        Self { backends, metrics }
    }
}

/// A rule's weighted choice of backend.
pub struct Split<S> {
    /// Each backend with its cumulative weight, or why it cannot be used.
    choices: Arc<[(u64, Choice<S>)]>,
    total: u64,
}

impl<S> Clone for Split<S> {
    fn clone(&self) -> Self {
        Self {
            choices: self.choices.clone(),
            total: self.total,
        }
    }
}

enum Choice<S> {
    Backend { service: Metered<S>, _held: Arc<S> },
    Invalid(Arc<str>),
}

impl<T, N, S> NewService<T> for NewSplit<N, S>
where
    T: Param<BackendsParam>,
    N: NewService<Logical, Service = S>,
    S: Clone + Send + Sync + 'static,
{
    type Service = Split<S>;
    fn new_service(&self, target: T) -> Split<S> {
        let BackendsParam(refs) = target.param();
        let mut total = 0u64;
        let mut choices = Vec::with_capacity(refs.len());
        for backend in refs.into_iter().filter(|b| b.weight > 0) {
            total += u64::from(backend.weight);
            let choice = match backend.error {
                Some(error) => Choice::Invalid(error),
                None => {
                    let held = self.backends.get(&backend.addr);
                    let handles = backend
                        .metered
                        .then(|| Handles::backend(&self.metrics, &BackendKey(backend.labels)));
                    Choice::Backend {
                        service: Metered::new((*held).clone(), handles),
                        _held: held,
                    }
                }
            };
            choices.push((total, choice));
        }
        Split {
            choices: choices.into(),
            total,
        }
    }
}

impl<S> tower::Service<Request<BoxBody>> for Split<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = Either<
        BoxFuture<'static, Result<Response<BoxBody>, BoxError>>,
        future::Ready<Result<Response<BoxBody>, BoxError>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        if self.total == 0 {
            return Either::Right(future::ready(Err(InvalidBackend(
                "no backend with a weight above 0".into(),
            )
            .into())));
        }
        let pick = if self.choices.len() == 1 {
            0
        } else {
            fastrand::u64(0..self.total)
        };
        let (_, choice) = self
            .choices
            .iter()
            .find(|(upto, _)| pick < *upto)
            .unwrap_or(&self.choices[self.choices.len() - 1]);
        match choice {
            Choice::Backend { service, .. } => Either::Left(Box::pin(service.clone().oneshot(req))),
            Choice::Invalid(error) => {
                Either::Right(future::ready(Err(InvalidBackend(error.to_string()).into())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::RouteLabels, metrics::NO_TLS_DISABLED, svc::NewFn};
    use tower::Service;

    /// A backend that answers with its name.
    fn new_backend() -> impl NewService<
        Logical,
        Service = tower::util::BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, BoxError>,
    > + Clone {
        NewFn(|l: Logical| {
            let name = l.addr.to_string();
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: Request<BoxBody>| {
                let mut rsp = Response::new(BoxBody::empty());
                rsp.headers_mut().insert("backend", name.parse().unwrap());
                future::ready(Ok::<_, BoxError>(rsp))
            }))
        })
    }

    fn backend(name: &str, weight: u32, error: Option<&str>) -> BackendRef {
        BackendRef {
            addr: LogicalAddr::Name(name.into()),
            weight,
            labels: Arc::new(BackendLabels {
                route: Arc::new(RouteLabels::default()),
                kind: "Service",
                namespace: "demo".into(),
                name: name.into(),
                port: 80,
            }),
            error: error.map(Into::into),
            metered: true,
        }
    }

    #[tokio::test]
    async fn splits_by_weight_and_shares_backends() {
        let cache = Cache::new(std::time::Duration::from_secs(60));
        let backends = Backends::new(new_backend(), cache.clone(), NO_TLS_DISABLED);
        let split = NewSplit::new(backends, RouteMetrics::default());
        let mut svc = split.new_service(BackendsParam(vec![
            backend("a", 90, None),
            backend("b", 10, None),
            backend("drained", 0, None),
        ]));
        let _other = split.new_service(BackendsParam(vec![backend("a", 1, None)]));
        assert_eq!(
            cache.len(),
            2,
            "one balancer per backend, the drained one never made"
        );
        let mut b = 0;
        let n = 10_000;
        for _ in 0..n {
            let rsp = svc.call(Request::new(BoxBody::empty())).await.unwrap();
            match rsp.headers()["backend"].to_str().unwrap() {
                "a" => {}
                "b" => b += 1,
                other => panic!("{other}"),
            }
        }
        assert!((800..=1_200).contains(&b), "{b} of {n} to the 10% backend");
    }

    #[tokio::test]
    async fn an_invalid_backend_answers_its_share_with_500() {
        let backends = Backends::new(
            new_backend(),
            Cache::new(std::time::Duration::from_secs(60)),
            NO_TLS_DISABLED,
        );
        let split = NewSplit::new(backends, RouteMetrics::default());
        let mut svc = split.new_service(BackendsParam(vec![backend(
            "gone",
            1,
            Some("BackendNotFound: service demo/gone"),
        )]));
        let error = svc.call(Request::new(BoxBody::empty())).await.unwrap_err();
        let failure = crate::http::errors::Failure::of(&*error);
        assert_eq!(failure.status, 500);
        assert!(failure.message.contains("BackendNotFound"));
        let mut none = split.new_service(BackendsParam(vec![]));
        let error = none.call(Request::new(BoxBody::empty())).await.unwrap_err();
        assert_eq!(crate::http::errors::Failure::of(&*error).status, 500);
    }
}

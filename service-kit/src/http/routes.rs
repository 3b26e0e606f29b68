//! [`ListedRouter`]: a service's routes built one `(method, path)` at a time, so that the
//! router can say which routes it has ([`ListedRouter::routes`]). An axum `Router` cannot list
//! its routes; the auth matrix test (`tests/e2e/tests/auth_matrix.rs`) needs every route of every
//! service, and fails when one is missing from its table.

use std::convert::Infallible;
use std::fmt;

use axum::Router;
use axum::extract::Request;
use axum::handler::Handler;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, Route, on};
use tower::{Layer, Service};

/// The HTTP methods the services route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteMethod {
    Get,
    Post,
    Put,
    Delete,
}

impl RouteMethod {
    /// The method as `http` names it.
    pub fn method(self) -> axum::http::Method {
        match self {
            RouteMethod::Get => axum::http::Method::GET,
            RouteMethod::Post => axum::http::Method::POST,
            RouteMethod::Put => axum::http::Method::PUT,
            RouteMethod::Delete => axum::http::Method::DELETE,
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            RouteMethod::Get => MethodFilter::GET,
            RouteMethod::Post => MethodFilter::POST,
            RouteMethod::Put => MethodFilter::PUT,
            RouteMethod::Delete => MethodFilter::DELETE,
        }
    }
}

/// One route: its method and path template (`/v1/orders/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListedRoute {
    pub method: RouteMethod,
    pub path: &'static str,
}

impl fmt::Display for ListedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method.method(), self.path)
    }
}

/// A router that records each route it is given.
pub struct ListedRouter<S = ()> {
    router: Router<S>,
    routes: Vec<ListedRoute>,
}

impl<S: Clone + Send + Sync + 'static> Default for ListedRouter<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> ListedRouter<S> {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    /// `method path` handled by `handler` (several methods on one path are merged).
    pub fn route<H, T>(mut self, method: RouteMethod, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.routes.push(ListedRoute { method, path });
        self.router = self.router.route(path, on(method.filter(), handler));
        self
    }

    /// [`route`](Self::route) behind `layer` (run only for requests this route matched).
    pub fn route_layered<H, T, L>(
        mut self,
        method: RouteMethod,
        path: &'static str,
        handler: H,
        layer: L,
    ) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.routes.push(ListedRoute { method, path });
        self.router = self
            .router
            .route(path, on(method.filter(), handler).route_layer(layer));
        self
    }

    /// These routes and `other`'s (their paths must differ).
    pub fn merge(mut self, other: ListedRouter<S>) -> Self {
        self.routes.extend(other.routes);
        self.router = self.router.merge(other.router);
        self
    }

    /// The routes given with their state.
    pub fn with_state<S2>(self, state: S) -> ListedRouter<S2> {
        ListedRouter {
            router: self.router.with_state(state),
            routes: self.routes,
        }
    }
}

impl<S> ListedRouter<S> {
    /// Every route, in the order given.
    pub fn routes(&self) -> &[ListedRoute] {
        &self.routes
    }
}

impl ListedRouter<()> {
    /// The axum router.
    pub fn into_router(self) -> Router {
        self.router
    }
}

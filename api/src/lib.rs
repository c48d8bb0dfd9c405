//! The control-plane API's wire types and clients (not built yet).
//!
//! `mesh-api` will hold what the proxy, the controller, the CLI and viz share: the JSON-lines
//! messages of `GET /v1/destination/watch` (`add`, `remove`, `noEndpoints`) and of
//! `POST /v1/identity/certify`, and small HTTP/2 clients for them. The proxy never depends on the
//! controller; everything the two sides agree on lives here.

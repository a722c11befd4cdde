//! Google Vertex AI (work in progress).

use axum::http::{HeaderName, HeaderValue};

use super::{Adapter, Wire};
use crate::config::{Endpoint, Provider};

/// The Vertex adapter.
pub struct Vertex {
    base_url: String,
}

impl Vertex {
    pub fn new(provider: &Provider) -> Self {
        Vertex {
            base_url: provider.base_url.clone(),
        }
    }
}

impl Adapter for Vertex {
    fn wire(&self, _endpoint: Endpoint, _upstream_model: &str) -> Option<Wire> {
        None
    }

    fn url(&self, _endpoint: Endpoint, upstream_model: &str) -> String {
        format!("{}/{upstream_model}", self.base_url)
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }
}

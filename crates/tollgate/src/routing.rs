//! Routing: the order in which a request tries a model's deployments and then its
//! fallback models, and each deployment's health.
//!
//! - **Order.** A model's deployments by priority (lower first); within a priority, the
//!   healthy ones in a random order weighted by `weight` (each position drawn in
//!   proportion to the weights left), so the first attempt lands on a deployment with
//!   probability weight / Σ weights of its priority. Equal weights are a uniform draw; the
//!   load in flight is not considered, so the documented shares hold exactly. Then each
//!   fallback model that serves the endpoint, its deployments in the same order.
//! - **Health, per replica.** `cooldown_failures` consecutive failures of a deployment (or
//!   a 429 with `Retry-After`, or a refusal of the operator's credentials) put it in
//!   cooldown: it gets no traffic until the cooldown ends (`cooldown_ms`, or the
//!   provider's `Retry-After` when longer; a 429's `Retry-After` alone sets the cooldown
//!   it asks for). Then one request probes it: success makes it healthy, failure cools it
//!   down again. Every change of state is logged. A deployment that is its model's only
//!   route (one deployment, no fallbacks) never cools down: there is nowhere else to go.
//! - **Retries.** When the route has fewer targets than `max_attempts`, it is repeated
//!   from the start, so a lone deployment is tried again after a passing failure.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::{Config, Deployment, Endpoint, Model, Routing};
use crate::providers::{StatusClass, UpstreamError};
use std::sync::Arc;

/// What routing knows of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// Takes traffic; `failures` consecutive failures so far.
    Healthy { failures: u32 },
    /// Takes no traffic until `until`.
    CoolingDown { until: Instant },
    /// Its cooldown ended and one request is trying it.
    Probing { since: Instant },
}

/// One attempt's destination: a model and one of its deployments.
#[derive(Clone)]
pub struct Target {
    pub model: Arc<Model>,
    /// Index into `model.deployments`.
    pub deployment: usize,
}

impl Target {
    /// The deployment this target names.
    pub fn deployment(&self) -> &Deployment {
        &self.model.deployments[self.deployment]
    }

    /// Whether both name the same deployment of the same model.
    pub fn same_deployment(&self, other: &Target) -> bool {
        Arc::ptr_eq(&self.model, &other.model) && self.deployment == other.deployment
    }
}

/// Why a request has nowhere to go.
#[derive(Debug, thiserror::Error)]
#[error("Every deployment of the model '{model}' is cooling down after failures; retry in {} s.", .retry_after.as_secs().max(1))]
pub struct NoDeployment {
    pub model: String,
    pub retry_after: Duration,
}

/// The router of this process: settings and the health of every deployment.
pub struct Router {
    settings: Routing,
    health: Vec<Mutex<DeploymentState>>,
    names: Vec<String>,
    /// Deployments that are their model's only route (one deployment, no fallbacks):
    /// never cooled down.
    lone: Vec<bool>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let deployments: Vec<&Deployment> = config
            .models
            .iter()
            .flat_map(|m| m.deployments.iter())
            .collect();
        let count = deployments.iter().map(|d| d.id + 1).max().unwrap_or(0);
        let health = (0..count)
            .map(|_| Mutex::new(DeploymentState::Healthy { failures: 0 }))
            .collect();
        let mut names = vec![String::new(); count];
        let mut lone = vec![false; count];
        for model in &config.models {
            for d in &model.deployments {
                names[d.id] = format!("{}/{}", config.providers[d.provider].name, d.upstream_model);
                lone[d.id] = model.deployments.len() == 1 && model.fallbacks.is_empty();
            }
        }
        Router {
            settings: config.routing.clone(),
            health,
            names,
            lone,
        }
    }

    /// The routing settings.
    pub fn settings(&self) -> &Routing {
        &self.settings
    }

    fn state(&self, id: usize) -> std::sync::MutexGuard<'_, DeploymentState> {
        // A state is one small value: a poisoned lock still holds a whole one.
        self.health[id].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The health of a deployment now.
    pub fn health(&self, deployment: &Deployment) -> DeploymentState {
        *self.state(deployment.id)
    }

    /// Whether a deployment may take a request now (`Ok(true)` when this request is
    /// to probe it: its cooldown ended, and it is claimed for this one request).
    fn admit(&self, id: usize, now: Instant) -> Result<bool, Instant> {
        let mut state = self.state(id);
        match *state {
            DeploymentState::Healthy { .. } => Ok(false),
            DeploymentState::CoolingDown { until } if now >= until => {
                *state = DeploymentState::Probing { since: now };
                tracing::info!(deployment = %self.names[id], "cooldown over; probing the deployment");
                Ok(true)
            }
            DeploymentState::CoolingDown { until } => Err(until),
            // A probe that never reported (its request went away) stops blocking
            // after the request deadline.
            DeploymentState::Probing { since } if now >= since + self.settings.request_timeout => {
                *state = DeploymentState::Probing { since: now };
                Ok(true)
            }
            DeploymentState::Probing { since } => Err(since + self.settings.request_timeout),
        }
    }

    /// The targets of a request for `model` on `endpoint`, in the order to try them:
    /// every deployment that takes traffic now, the model's own first, then each
    /// fallback's; repeated from the start until `max_attempts`, so that a model with one
    /// deployment is still tried again after a passing failure.
    pub fn route(
        &self,
        config: &Config,
        model: &Arc<Model>,
        endpoint: Endpoint,
    ) -> Result<Vec<Target>, NoDeployment> {
        self.route_allowed(config, model, endpoint, &|_| true)
    }

    /// `route`, leaving out every fallback model that `allowed` refuses (the models a key
    /// may not use): a fallback never leads a request to such a model.
    pub fn route_allowed(
        &self,
        config: &Config,
        model: &Arc<Model>,
        endpoint: Endpoint,
        allowed: &dyn Fn(&Model) -> bool,
    ) -> Result<Vec<Target>, NoDeployment> {
        let now = Instant::now();
        let limit = self.settings.max_attempts as usize;
        let mut targets = Vec::new();
        let mut soonest: Option<Instant> = None;
        let fallbacks = model
            .fallbacks
            .iter()
            .filter_map(|id| config.model(id))
            .filter(|m| m.endpoints.contains(&endpoint) && allowed(m));
        'candidates: for candidate in std::iter::once(model).chain(fallbacks) {
            // A deployment this request probes goes first among its model's of its
            // priority, so that the probe is really made.
            let first = targets.len();
            for index in ordered(&candidate.deployments) {
                if targets.len() == limit {
                    break 'candidates;
                }
                let target = Target {
                    model: candidate.clone(),
                    deployment: index,
                };
                match self.admit(candidate.deployments[index].id, now) {
                    Ok(false) => targets.push(target),
                    Ok(true) => {
                        let priority = target.deployment().priority;
                        let at = targets[first..]
                            .iter()
                            .position(|t| t.deployment().priority >= priority)
                            .map_or(targets.len(), |p| first + p);
                        targets.insert(at, target);
                    }
                    Err(until) => soonest = Some(soonest.map_or(until, |s| s.min(until))),
                }
            }
        }
        if targets.is_empty() {
            return Err(NoDeployment {
                model: model.id.clone(),
                retry_after: soonest.map_or(Duration::ZERO, |s| s.saturating_duration_since(now)),
            });
        }
        let distinct = targets.len();
        for i in distinct..limit {
            targets.push(targets[i % distinct].clone());
        }
        Ok(targets)
    }

    /// A deployment answered: it is healthy.
    pub fn succeeded(&self, deployment: &Deployment) {
        let mut state = self.state(deployment.id);
        if !matches!(*state, DeploymentState::Healthy { failures: 0 }) {
            if !matches!(*state, DeploymentState::Healthy { .. }) {
                tracing::info!(deployment = %self.names[deployment.id], "deployment healthy again");
            }
            *state = DeploymentState::Healthy { failures: 0 };
        }
    }

    /// A deployment failed an attempt: count it, and cool the deployment down when the
    /// failure says so. A client's own fault says nothing about the deployment.
    pub fn failed(&self, deployment: &Deployment, error: &UpstreamError) {
        if self.lone[deployment.id] {
            // Cooling down the only way to serve a model would turn the provider's
            // passing failures into refusals of ours, with nowhere else to go.
            return;
        }
        let (immediate, retry_after) = match error {
            UpstreamError::Status {
                class: StatusClass::ClientFault,
                ..
            } => return,
            UpstreamError::Status {
                class: StatusClass::RateLimited,
                retry_after: Some(wait),
                ..
            } => (Some(*wait), Some(*wait)),
            UpstreamError::Status {
                class: StatusClass::Credentials,
                retry_after,
                ..
            } => (
                Some(retry_after.unwrap_or_default().max(self.settings.cooldown)),
                *retry_after,
            ),
            UpstreamError::Status { retry_after, .. } => (None, *retry_after),
            _ => (None, None),
        };
        let now = Instant::now();
        let mut state = self.state(deployment.id);
        let failures = match *state {
            DeploymentState::Healthy { failures } => failures + 1,
            // A failed probe, or a failure of an attempt admitted before the cooldown.
            _ => self.settings.cooldown_failures,
        };
        let cooldown = match immediate {
            Some(wait) => Some(wait),
            None if failures >= self.settings.cooldown_failures => {
                Some(retry_after.unwrap_or_default().max(self.settings.cooldown))
            }
            None => None,
        };
        match cooldown {
            Some(wait) => {
                if !matches!(*state, DeploymentState::CoolingDown { .. }) {
                    tracing::warn!(deployment = %self.names[deployment.id], failures, cooldown_ms = wait.as_millis() as u64, error = %error, "deployment cooling down");
                }
                *state = DeploymentState::CoolingDown { until: now + wait };
            }
            None => *state = DeploymentState::Healthy { failures },
        }
    }
}

/// The indexes of `deployments` in the order to try them: by priority, then a draw
/// weighted by `weight` for each position.
fn ordered(deployments: &[Deployment]) -> Vec<usize> {
    if deployments.len() == 1 {
        return vec![0];
    }
    let mut rng = rand::thread_rng();
    // Weighted sampling without replacement (Efraimidis–Spirakis): key = u^(1/w),
    // highest first.
    let mut keyed: Vec<(u32, f64, usize)> = deployments
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            (d.priority, u.powf(1.0 / f64::from(d.weight)), i)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    keyed.into_iter().map(|(_, _, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(id: usize, weight: u32, priority: u32) -> Deployment {
        Deployment {
            id,
            provider: 0,
            upstream_model: format!("m{id}"),
            weight,
            priority,
        }
    }

    #[test]
    fn order_follows_priority_then_weight() {
        let deployments = [
            deployment(0, 3, 0),
            deployment(1, 1, 0),
            deployment(2, 5, 1),
        ];
        let mut first = [0u32; 3];
        for _ in 0..20_000 {
            let order = ordered(&deployments);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], 2, "the higher priority comes last");
            first[order[0]] += 1;
        }
        // 3:1 → 75 % first, within a few points over 20,000 draws.
        let share = f64::from(first[0]) / 20_000.0;
        assert!((0.72..0.78).contains(&share), "share {share}");
        assert_eq!(first[2], 0);
    }
}

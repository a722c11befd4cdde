//! One request's charge from reservation to ledger record. Settling consumes it, so a
//! request is charged at most once; dropping it unsettled releases the reservation.

use std::sync::Arc;
use std::time::Instant;

use crate::billing::meter::{Meter, Reservation};
use crate::billing::{Credits, Usage};
use crate::config::{Endpoint, Model};
use crate::observe::RequestObs;
use crate::store::{KeyRecord, UsageDetail, UsageRecord};
use crate::usage::{Coming, LedgerError};

/// One request's charge, reserved and not yet settled.
pub(super) struct Settlement {
    pub(super) meter: Arc<Meter>,
    /// Taken with the reservation: tells the usage writer a record is on its way.
    pub(super) coming: Option<Coming>,
    pub(super) reservation: Option<Reservation>,
    /// The model priced: the one asked for until another serves (a fallback).
    pub(super) model: Arc<Model>,
    /// The model the client asked for.
    pub(super) requested: Arc<Model>,
    /// The provider that served, or was tried last.
    pub(super) provider: Option<Arc<str>>,
    /// Upstream attempts made.
    pub(super) attempts: u32,
    /// The service tier priced, when not the standard one.
    pub(super) tier: Option<String>,
    /// The usage charged was counted by the gateway, not reported by the provider.
    pub(super) estimated: bool,
    /// Something reached the client (cleared for a call that delivered nothing).
    pub(super) delivered: bool,
    pub(super) endpoint: Endpoint,
    pub(super) request_id: Arc<str>,
    pub(super) key: Arc<KeyRecord>,
    pub(super) started: Instant,
    pub(super) obs: Arc<RequestObs>,
}

impl Settlement {
    /// Records an attempt on `provider` for `model` (priced if it serves).
    pub(super) fn attempted(&mut self, model: &Arc<Model>, provider: Arc<str>) {
        self.model = model.clone();
        self.provider = Some(provider);
        self.attempts += 1;
    }

    /// Records a call that delivered nothing to the client: it costs nothing.
    pub(super) async fn settle_undelivered(mut self, status: u16) {
        self.delivered = false;
        self.settle(Usage::default(), status).await;
    }

    /// Like `settle`, for usage the gateway counted itself (the provider reported none).
    pub(super) async fn settle_estimated(mut self, usage: Usage, status: u16) -> Credits {
        self.estimated = true;
        self.settle(usage, status).await
    }

    /// Charges `usage`, what the client received (a call that failed before delivering
    /// anything passes zero usage), records it with `status`, and waits until the record
    /// is safe.
    pub(super) async fn settle(self, usage: Usage, status: u16) -> Credits {
        self.settle_recorded(usage, status).await.0
    }

    /// `settle` for an answer about to be delivered: `Err` means its record was not
    /// safe within the ledger's bound, and the answer must not be delivered as a
    /// success (the charge still reaches the ledger once it recovers).
    pub(super) async fn settle_delivered(
        mut self,
        usage: Usage,
        estimated: bool,
    ) -> Result<Credits, LedgerError> {
        self.estimated = estimated;
        let (cost, recorded) = self.settle_recorded(usage, 200).await;
        recorded.map(|()| cost)
    }

    async fn settle_recorded(
        mut self,
        usage: Usage,
        status: u16,
    ) -> (Credits, Result<(), LedgerError>) {
        let (cost, record) = self.charge(usage, status);
        let reservation = self.reservation.take();
        let commit = self.coming.take().map(|coming| coming.record(record));
        let recorded = self
            .meter
            .settle_and_record(reservation, cost, commit)
            .await;
        (cost, recorded)
    }

    /// Like `settle`, from a place that cannot wait (a dropped stream).
    pub(super) fn settle_detached(mut self, usage: Usage, status: u16, estimated: bool) {
        self.estimated = estimated;
        let (cost, record) = self.charge(usage, status);
        let reservation = self.reservation.take();
        let meter = self.meter.clone();
        let commit = self.coming.take().map(|coming| coming.record(record));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                // Nothing waits on it: the record reaches the ledger when it can.
                let _ = meter.settle_and_record(reservation, cost, commit).await;
            });
        }
    }

    /// The cost of `usage`, what was delivered, and its ledger record.
    fn charge(&self, usage: Usage, status: u16) -> (Credits, UsageRecord) {
        // What was delivered is priced and recorded at the model that served; a call
        // that delivered nothing is recorded at the model asked for, at no cost.
        let (model, cost) = if self.delivered {
            (
                &self.model,
                self.model.pricing_for(self.tier.as_deref()).cost(&usage),
            )
        } else {
            (&self.requested, Credits::ZERO)
        };
        // Never more than was reserved: a provider that reports more than the worst case
        // (it ignored the output limit, or reports absurd usage) cannot take a key or an
        // account past its limit. The excess is the operator's loss, logged.
        let reserved = self.reservation.as_ref().map_or(cost, |r| r.amount);
        let (cost, loss) = if cost > reserved {
            tracing::warn!(request_id = %self.request_id, model = %model.id, reported = %cost, reserved = %reserved, "usage above the reservation; charged the reservation, the rest is the operator's loss");
            (reserved, cost.saturating_sub(reserved))
        } else {
            (cost, Credits::ZERO)
        };
        if self.delivered {
            self.obs.charged(
                self.endpoint,
                &self.requested,
                model,
                self.provider.as_ref(),
                &usage,
                cost,
                self.key.id,
            );
        }
        let record = UsageRecord {
            request_id: self.request_id.to_string(),
            account_id: self.key.account_id,
            key_id: self.key.id,
            model: model.id.clone(),
            endpoint: self.endpoint.name().to_string(),
            input_tokens: saturating_i64(usage.input_tokens),
            cached_input_tokens: saturating_i64(usage.cached_input_tokens),
            output_tokens: saturating_i64(usage.output_tokens),
            cost,
            status: i64::from(status),
            latency_ms: saturating_i64(self.started.elapsed().as_millis() as u64),
            // The time the request was reserved at: a window's usage is summed from the
            // days of its records, and a request belongs to the window it started in.
            created_at: self.reservation.as_ref().map_or_else(crate::now, |r| r.at),
            detail: UsageDetail {
                requested_model: (!Arc::ptr_eq(model, &self.requested))
                    .then(|| self.requested.id.clone()),
                provider: self.provider.as_deref().map(str::to_string),
                attempts: i64::from(self.attempts),
                estimated: self.estimated && self.delivered,
                loss,
                lease: self.reservation.as_ref().and_then(Reservation::lease_id),
            },
        };
        (cost, record)
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.meter.release_detached(reservation);
        }
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

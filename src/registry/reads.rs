//! What one guard decision may spend: registry requests are upstream requests, so each is
//! admitted and charged to the client by [`crate::admission`] (refused during a back-off), and one
//! decision makes at most `registry.max_reads_per_decision` of them.

use crate::{
    admission::{self, Payer, Ticket, Work},
    error::ProxyError,
    state::AppState,
};

/// The running count of one decision's upstream requests.
#[derive(Debug)]
pub struct Reads<'a> {
    state: &'a AppState,
    payer: &'a Payer,
    /// The upstream slot the Packages API reads go out on, if the caller holds one.
    pub(crate) lent: Option<&'a crate::upstream::Permit>,
    max: u32,
    /// Registry requests made (token fetches included).
    pub registry: u32,
    /// Manifests answered from the digest cache.
    pub cached: u32,
    /// Reads of the Packages API (version list pages).
    pub api: u32,
}

// === impl Reads ===

impl<'a> Reads<'a> {
    /// A fresh count for one decision paid by `payer`, its API reads on `lent` if given.
    pub(crate) fn new(
        state: &'a AppState,
        payer: &'a Payer,
        lent: Option<&'a crate::upstream::Permit>,
    ) -> Self {
        Self {
            state,
            payer,
            lent,
            max: state.config.registry.max_reads_per_decision,
            registry: 0,
            cached: 0,
            api: 0,
        }
    }

    /// Admits one registry request: within the decision's bound, then admitted and charged.
    pub async fn registry_request(&mut self) -> Result<Ticket, ProxyError> {
        if self.registry >= self.max {
            return Err(ProxyError::Unprocessable(format!(
                "The multi-arch guard needs more than {} registry reads to check this package \
                 (registry.max_reads_per_decision). Manifests read so far are cached, so a retry \
                 continues where this one stopped",
                self.max
            )));
        }
        let ticket = admission::admit(self.state, self.payer, Work::Check).await?;
        self.registry += 1;
        Ok(ticket)
    }

    /// Admits one Packages API read made for the guard (a version list page): charged too.
    pub async fn api_request(&mut self) -> Result<Ticket, ProxyError> {
        let ticket = admission::admit(self.state, self.payer, Work::Check).await?;
        self.api += 1;
        Ok(ticket)
    }
}

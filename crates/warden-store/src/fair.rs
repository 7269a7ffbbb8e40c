//! Fair share: which tenant's job a free slot takes next.
//!
//! Stride scheduling. Each tenant has a *pass*; a claim takes the oldest eligible job of the
//! tenant with the lowest pass and advances that tenant's pass by `STRIDE / weight`. The
//! scheduler's virtual time `v` is the pass of the last claim: a tenant that was idle comes back
//! at `v`, never below it, so it cannot bank idleness into a burst — and it is served before
//! any tenant that has just been served. One tenant's 10,000 queued jobs therefore delay
//! another tenant's single job by at most one claim. This module is the arithmetic: SQLite keeps
//! the passes and `v` in the database (one writer, in the claim's transaction); PostgreSQL keeps
//! them per replica in memory, so that claims never wait on each other.

use std::collections::BTreeMap;

use warden_core::JobId;

/// A pass step for weight 1; weights divide it.
pub const STRIDE: i64 = 1 << 40;

/// One tenant's share of the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub weight: u64,
    /// Its jobs running at once; at it, the tenant is passed over.
    pub max_running: Option<u64>,
}

impl Default for Share {
    fn default() -> Share {
        Share {
            weight: 1,
            max_running: None,
        }
    }
}

/// The shares of the configured tenants; any other tenant has the default share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FairShare {
    pub shares: BTreeMap<String, Share>,
}

/// A tenant with a queued job a claimer could take.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub tenant: String,
    /// Its oldest queued job of the claimer's job types.
    pub oldest: JobId,
    pub pass: i64,
    pub running: u64,
}

impl FairShare {
    pub fn share(&self, tenant: &str) -> Share {
        self.shares.get(tenant).copied().unwrap_or_default()
    }

    /// The candidate whose job is taken next: lowest effective pass (`max(pass, v)`), then the
    /// oldest job; tenants at `max_running` are passed over.
    pub fn pick(&self, v: i64, candidates: &[Candidate]) -> Option<usize> {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                self.share(&c.tenant)
                    .max_running
                    .is_none_or(|m| c.running < m)
            })
            .min_by_key(|(_, c)| (c.pass.max(v), c.oldest))
            .map(|(i, _)| i)
    }

    /// Accounts one claim of `c`'s job: its pass advances, `v` moves to where it was served.
    pub fn charge(&self, v: &mut i64, c: &mut Candidate) {
        let at = c.pass.max(*v);
        *v = at;
        c.pass = at + STRIDE / self.share(&c.tenant).weight.max(1) as i64;
        c.running += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(tenant: &str, oldest: JobId, pass: i64, running: u64) -> Candidate {
        Candidate {
            tenant: tenant.into(),
            oldest,
            pass,
            running,
        }
    }

    /// Claims `n` jobs from tenants with unlimited queues, returning the order of tenants.
    fn run(fair: &FairShare, mut cands: Vec<Candidate>, n: usize) -> Vec<String> {
        let mut v = 0;
        let mut order = Vec::new();
        for _ in 0..n {
            let Some(i) = fair.pick(v, &cands) else { break };
            order.push(cands[i].tenant.clone());
            let c = &mut cands[i];
            fair.charge(&mut v, c);
            c.oldest = JobId::new();
        }
        order
    }

    #[test]
    fn a_newcomer_waits_at_most_one_claim() {
        let fair = FairShare::default();
        let old = JobId::new();
        // "big" has been served many times; "small" arrives with one job, newer than all.
        let mut v = 0;
        let mut big = cand("big", old, 0, 0);
        for _ in 0..100 {
            fair.charge(&mut v, &mut big);
        }
        let small = cand("small", JobId::new(), 0, 0);
        let cands = vec![big, small];
        assert_eq!(fair.pick(v, &cands), Some(1), "the idle tenant goes first");
    }

    #[test]
    fn equal_weights_alternate_and_weights_divide_the_slots() {
        let fair = FairShare::default();
        let (a, b) = (JobId::new(), JobId::new());
        let order = run(&fair, vec![cand("a", a, 0, 0), cand("b", b, 0, 0)], 6);
        assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);

        let mut shares = BTreeMap::new();
        shares.insert(
            "heavy".to_string(),
            Share {
                weight: 3,
                max_running: None,
            },
        );
        let fair = FairShare { shares };
        let order = run(
            &fair,
            vec![cand("heavy", a, 0, 0), cand("light", b, 0, 0)],
            40,
        );
        let heavy = order.iter().filter(|t| *t == "heavy").count();
        assert_eq!(heavy, 30, "{order:?}");
    }

    #[test]
    fn a_tenant_at_max_running_is_passed_over() {
        let mut shares = BTreeMap::new();
        shares.insert(
            "capped".to_string(),
            Share {
                weight: 100,
                max_running: Some(2),
            },
        );
        let fair = FairShare { shares };
        let cands = vec![cand("capped", JobId::new(), 0, 2)];
        assert_eq!(fair.pick(0, &cands), None);
        let order = run(
            &fair,
            vec![
                cand("capped", JobId::new(), 0, 0),
                cand("other", JobId::new(), 0, 0),
            ],
            5,
        );
        assert_eq!(
            order.iter().filter(|t| *t == "capped").count(),
            2,
            "{order:?}"
        );
    }

    #[test]
    fn an_idle_tenant_cannot_bank_a_burst() {
        let fair = FairShare::default();
        // "back" has pass 0 from long ago; v has moved far on.
        let mut v = 50 * STRIDE;
        let mut back = cand("back", JobId::new(), 0, 0);
        let mut busy = cand("busy", JobId::new(), 50 * STRIDE, 0);
        let mut order = Vec::new();
        for _ in 0..4 {
            let cands = [back.clone(), busy.clone()];
            let i = fair.pick(v, &cands).unwrap();
            let c = if i == 0 { &mut back } else { &mut busy };
            order.push(c.tenant.clone());
            fair.charge(&mut v, c);
        }
        assert_eq!(order, ["back", "busy", "back", "busy"]);
    }
}

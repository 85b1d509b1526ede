//! Choosing the provider of a call (sans-IO).
//!
//! Among the providers that offer the method and have fewer than `max` calls in flight, the one
//! with the fewest calls in flight wins; among equally busy ones, the `start`-th (modulo their
//! number, in registration order). The caller passes an ever-increasing `start` (one shared
//! counter per service), so providers with equal load take turns: least-busy, round-robin
//! among equals. Providers that are away (their socket dropped, inside their resume window)
//! are chosen only when no present provider can take the call: a call routed to an away
//! provider waits for its resume or times out.

/// The outcome of [`pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The index of the chosen provider.
    Chosen(usize),
    /// No provider offers the method.
    NoMethod,
    /// Some providers offer the method, but each already has `max` calls in flight.
    AllBusy,
}

/// One provider as the choice sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Whether it offers the method.
    pub(crate) has_method: bool,
    /// Its calls in flight now.
    pub(crate) in_flight: u32,
    /// Whether it is away (inside its resume window, no socket).
    pub(crate) away: bool,
}

/// Picks a provider; see the [module docs](self).
pub(crate) fn pick(candidates: &[Candidate], start: usize, max: u32) -> Pick {
    match pick_among(candidates, start, max, |c| !c.away) {
        chosen @ Pick::Chosen(_) => chosen,
        _ => pick_among(candidates, start, max, |_| true),
    }
}

/// [`pick`] among the candidates `admit` lets in.
fn pick_among(
    candidates: &[Candidate],
    start: usize,
    max: u32,
    admit: impl Fn(&Candidate) -> bool,
) -> Pick {
    let eligible = |c: &&Candidate| admit(c) && c.has_method && c.in_flight < max;
    let Some(min) = candidates
        .iter()
        .filter(eligible)
        .map(|c| c.in_flight)
        .min()
    else {
        return if candidates.iter().any(|c| admit(c) && c.has_method) {
            Pick::AllBusy
        } else {
            Pick::NoMethod
        };
    };
    let is_tied = |c: &Candidate| admit(c) && c.has_method && c.in_flight == min;
    let tied = candidates.iter().filter(|c| is_tied(c)).count();
    let nth = start % tied.max(1);
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| is_tied(c))
        .nth(nth)
        .map_or(Pick::NoMethod, |(i, _)| Pick::Chosen(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(has_method: bool, in_flight: u32) -> Candidate {
        Candidate {
            has_method,
            in_flight,
            away: false,
        }
    }

    fn away(has_method: bool, in_flight: u32) -> Candidate {
        Candidate {
            away: true,
            ..c(has_method, in_flight)
        }
    }

    #[test]
    fn away_providers_answer_only_when_no_present_one_can() {
        // The away one is idle, the present one busier: the present one still wins.
        let cands = [away(true, 0), c(true, 3)];
        for s in 0..4 {
            assert_eq!(pick(&cands, s, 8), Pick::Chosen(1));
        }
        // The present one lacks the method or is full: the away one takes the call.
        assert_eq!(pick(&[away(true, 0), c(false, 0)], 0, 8), Pick::Chosen(0));
        assert_eq!(pick(&[away(true, 0), c(true, 2)], 0, 2), Pick::Chosen(0));
        assert_eq!(pick(&[away(true, 2), c(true, 2)], 0, 2), Pick::AllBusy);
        assert_eq!(pick(&[away(false, 0)], 0, 2), Pick::NoMethod);
    }

    #[test]
    fn least_busy_then_round_robin() {
        let cands = [c(true, 2), c(true, 1), c(false, 0), c(true, 1)];
        assert_eq!(pick(&cands, 0, 10), Pick::Chosen(1));
        assert_eq!(pick(&cands, 1, 10), Pick::Chosen(3));
        assert_eq!(pick(&cands, 2, 10), Pick::Chosen(1));
        assert_eq!(pick(&cands, 0, 1), Pick::AllBusy);
        assert_eq!(pick(&[c(false, 0)], 0, 1), Pick::NoMethod);
        assert_eq!(pick(&[], 5, 1), Pick::NoMethod);
        assert_eq!(pick(&[c(true, 3), c(false, 0)], 0, 3), Pick::AllBusy);
    }

    #[test]
    fn equal_loads_take_turns() {
        let cands = [c(true, 0), c(true, 0), c(true, 0)];
        let picks: Vec<_> = (0..6).map(|s| pick(&cands, s, 8)).collect();
        let want: Vec<_> = [0, 1, 2, 0, 1, 2].into_iter().map(Pick::Chosen).collect();
        assert_eq!(picks, want);
    }

    proptest! {
        /// The choice offers the method, is under the bound and has the least load of all
        /// eligible providers; `NoMethod` and `AllBusy` are given exactly when they hold.
        #[test]
        fn picks_an_eligible_least_busy_provider(
            cands in prop::collection::vec((any::<bool>(), 0u32..6, any::<bool>()), 0..8),
            start in any::<usize>(),
            max in 1u32..6,
        ) {
            let cands: Vec<Candidate> = cands
                .into_iter()
                .map(|(m, l, a)| Candidate { away: a, ..c(m, l) })
                .collect();
            let all: Vec<usize> = (0..cands.len())
                .filter(|&i| cands[i].has_method && cands[i].in_flight < max)
                .collect();
            // Present providers first: away ones are eligible only when no present one is.
            let present: Vec<usize> = all.iter().copied().filter(|&i| !cands[i].away).collect();
            let eligible = if present.is_empty() { all } else { present };
            match pick(&cands, start, max) {
                Pick::Chosen(i) => {
                    prop_assert!(eligible.contains(&i));
                    let min = eligible.iter().map(|&j| cands[j].in_flight).min();
                    prop_assert_eq!(Some(cands[i].in_flight), min);
                }
                Pick::NoMethod => prop_assert!(cands.iter().all(|c| !c.has_method)),
                Pick::AllBusy => {
                    prop_assert!(eligible.is_empty());
                    prop_assert!(cands.iter().any(|c| c.has_method));
                }
            }
        }

        /// With equal loads, `n` consecutive starts choose each eligible provider equally often.
        #[test]
        fn equal_loads_share_evenly(methods in prop::collection::vec(any::<bool>(), 1..8), base in 0usize..1000) {
            let cands: Vec<Candidate> = methods.iter().map(|&m| c(m, 1)).collect();
            let n = cands.len();
            let mut counts = vec![0usize; n];
            for s in base..base + n * 3 {
                if let Pick::Chosen(i) = pick(&cands, s, 4) {
                    counts[i] += 1;
                }
            }
            let eligible = methods.iter().filter(|&&m| m).count();
            for (i, &k) in counts.iter().enumerate() {
                if methods[i] {
                    // 3n picks over `eligible` providers: each gets at least its share.
                    prop_assert!(k >= (3 * n) / eligible, "{:?}", counts);
                } else {
                    prop_assert_eq!(k, 0);
                }
            }
        }
    }
}

//! Interest management: which entities each client is sent.

use crate::schema::ComponentId;
use crate::snapshot::{PeerId, Snapshot};

/// Chooses the entities a client sees. The host asks once per client per tick.
pub trait Scope {
    /// The part of `world` that `peer` sees, or `None` for all of it (which the host can
    /// share between clients without a copy).
    fn filter(&mut self, peer: PeerId, world: &Snapshot) -> Option<Snapshot>;
}

/// The default scope: a client sees the entities it owns and those within `radius` of any of
/// them, measured on the first three lanes of the `position` component (entities without a
/// position are always seen). Without a position component or radius, it sees everything.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OwnerAwareScope {
    /// The component whose first three lanes are a position, and the radius in lane units.
    pub nearby: Option<(ComponentId, u32)>,
}

impl Scope for OwnerAwareScope {
    fn filter(&mut self, peer: PeerId, world: &Snapshot) -> Option<Snapshot> {
        let (pos, radius) = self.nearby?;
        let centres: Vec<[i64; 3]> = world
            .iter()
            .filter(|e| e.owner() == Some(peer))
            .filter_map(|e| e.lanes(pos))
            .filter(|l| l.len() >= 3)
            .map(|l| [i64::from(l[0]), i64::from(l[1]), i64::from(l[2])])
            .collect();
        let r2 = i64::from(radius) * i64::from(radius);
        Some(world.filtered(|e| {
            if e.owner() == Some(peer) {
                return true;
            }
            let Some(l) = e.lanes(pos).filter(|l| l.len() >= 3) else {
                return true;
            };
            centres.iter().any(|c| {
                let d: i64 = (0..3).map(|i| (i64::from(l[i]) - c[i]).pow(2)).sum();
                d <= r2
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EntityId;

    #[test]
    fn a_client_sees_its_own_and_nearby_entities() {
        let pos = ComponentId(0);
        let mut w = Snapshot::new(1);
        for (id, owner, x) in [
            (1, Some(7), 100),
            (2, None, 150),
            (3, None, 900),
            (4, Some(8), 5000),
        ] {
            w.push_entity(EntityId(id), owner.map(PeerId));
            w.push_lanes(pos, &[x, 0, 0]);
        }
        w.push_entity(EntityId(5), None);
        let mut all = OwnerAwareScope::default();
        assert!(all.filter(PeerId(7), &w).is_none());
        let mut near = OwnerAwareScope {
            nearby: Some((pos, 100)),
        };
        let seen: Vec<u32> = near
            .filter(PeerId(7), &w)
            .expect("filtered")
            .iter()
            .map(|e| e.id().0)
            .collect();
        assert_eq!(seen, [1, 2, 5]);
    }
}

//! How a game plugs its world in: the [`World`] trait (step one tick, capture the replicated
//! state, restore it), and [`EntityStore`], a simple entity store for games without their own.

use std::collections::BTreeMap;

use crate::schema::{ActionId, ComponentId};
use crate::snapshot::{EntityId, PeerId, Snapshot, Value};

/// One user action: its registered type and its encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The action type.
    pub id: ActionId,
    /// Its encoding, as registered (`Fixed(n)`: exactly n bytes; `Var`: at most 256).
    pub payload: Vec<u8>,
}

/// The actions one peer sampled for one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInput {
    /// The peer.
    pub peer: PeerId,
    /// Its actions, in the order sampled.
    pub actions: Vec<Action>,
}

/// A game world the session drives. The host steps it with every peer's actions; a client
/// steps it with its own (prediction) and restores it to the host's state to reconcile.
///
/// `step` must be deterministic: the same state and inputs give the same state, or
/// predictions will not match the host.
pub trait World {
    /// Runs one tick with these inputs.
    fn step(&mut self, tick: u64, inputs: &[PeerInput]);
    /// Writes the replicated state (every entity with its owner and components) into `out`,
    /// which is empty.
    fn capture(&self, out: &mut Snapshot);
    /// Sets the replicated state to `state`: entities missing from it are removed.
    fn restore(&mut self, state: &Snapshot);
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    Lanes(Vec<u32>),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entity {
    owner: Option<PeerId>,
    comps: BTreeMap<ComponentId, Stored>,
}

/// A simple entity store: entities with an optional owner and components (integer lanes or
/// bytes). It captures and restores itself; see [`Simulated`] to make it a [`World`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityStore {
    entities: BTreeMap<EntityId, Entity>,
    next_id: u32,
}

impl EntityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entity with a fresh id.
    pub fn spawn(&mut self, owner: Option<PeerId>) -> EntityId {
        while self.entities.contains_key(&EntityId(self.next_id)) {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = EntityId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.entities.insert(
            id,
            Entity {
                owner,
                comps: BTreeMap::new(),
            },
        );
        id
    }

    /// Removes an entity; whether it existed.
    pub fn despawn(&mut self, id: EntityId) -> bool {
        self.entities.remove(&id).is_some()
    }

    /// Whether the entity exists.
    pub fn contains(&self, id: EntityId) -> bool {
        self.entities.contains_key(&id)
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Entity ids in order.
    pub fn ids(&self) -> impl Iterator<Item = EntityId> + '_ {
        self.entities.keys().copied()
    }

    /// The owner of an entity.
    pub fn owner(&self, id: EntityId) -> Option<PeerId> {
        self.entities.get(&id).and_then(|e| e.owner)
    }

    /// Entities owned by `peer`.
    pub fn owned_by(&self, peer: PeerId) -> impl Iterator<Item = EntityId> + '_ {
        self.entities
            .iter()
            .filter(move |(_, e)| e.owner == Some(peer))
            .map(|(id, _)| *id)
    }

    /// Sets an entity's owner (no-op for a missing entity).
    pub fn set_owner(&mut self, id: EntityId, owner: Option<PeerId>) {
        if let Some(e) = self.entities.get_mut(&id) {
            e.owner = owner;
        }
    }

    /// Sets a lanes component (no-op for a missing entity).
    pub fn set_lanes(&mut self, id: EntityId, comp: ComponentId, lanes: &[u32]) {
        if let Some(e) = self.entities.get_mut(&id) {
            match e.comps.get_mut(&comp) {
                Some(Stored::Lanes(l)) => {
                    l.clear();
                    l.extend_from_slice(lanes);
                }
                _ => {
                    e.comps.insert(comp, Stored::Lanes(lanes.to_vec()));
                }
            }
        }
    }

    /// A lanes component.
    pub fn lanes(&self, id: EntityId, comp: ComponentId) -> Option<&[u32]> {
        match self.entities.get(&id)?.comps.get(&comp)? {
            Stored::Lanes(l) => Some(l),
            Stored::Bytes(_) => None,
        }
    }

    /// A lanes component, to change in place.
    pub fn lanes_mut(&mut self, id: EntityId, comp: ComponentId) -> Option<&mut [u32]> {
        match self.entities.get_mut(&id)?.comps.get_mut(&comp)? {
            Stored::Lanes(l) => Some(l),
            Stored::Bytes(_) => None,
        }
    }

    /// Sets a bytes component (no-op for a missing entity).
    pub fn set_bytes(&mut self, id: EntityId, comp: ComponentId, bytes: &[u8]) {
        if let Some(e) = self.entities.get_mut(&id) {
            e.comps.insert(comp, Stored::Bytes(bytes.to_vec()));
        }
    }

    /// A bytes component.
    pub fn bytes(&self, id: EntityId, comp: ComponentId) -> Option<&[u8]> {
        match self.entities.get(&id)?.comps.get(&comp)? {
            Stored::Bytes(b) => Some(b),
            Stored::Lanes(_) => None,
        }
    }

    /// Removes a component.
    pub fn remove(&mut self, id: EntityId, comp: ComponentId) {
        if let Some(e) = self.entities.get_mut(&id) {
            e.comps.remove(&comp);
        }
    }

    /// Writes every entity into `out`.
    pub fn capture(&self, out: &mut Snapshot) {
        for (id, e) in &self.entities {
            out.push_entity(*id, e.owner);
            for (c, v) in &e.comps {
                match v {
                    Stored::Lanes(l) => out.push_lanes(*c, l),
                    Stored::Bytes(b) => out.push_bytes(*c, b),
                }
            }
        }
    }

    /// Becomes `state`, reusing the storage of entities present in both.
    pub fn restore(&mut self, state: &Snapshot) {
        self.entities.retain(|id, _| state.get(*id).is_some());
        for e in state.iter() {
            let slot = self.entities.entry(e.id()).or_default();
            slot.owner = e.owner();
            slot.comps.retain(|c, _| e.get(*c).is_some());
            for (c, v) in e.components() {
                match (slot.comps.get_mut(&c), v) {
                    (Some(Stored::Lanes(l)), Value::Lanes(x)) => {
                        l.clear();
                        l.extend_from_slice(x);
                    }
                    (_, Value::Lanes(x)) => {
                        slot.comps.insert(c, Stored::Lanes(x.to_vec()));
                    }
                    (_, Value::Bytes(x)) => {
                        slot.comps.insert(c, Stored::Bytes(x.to_vec()));
                    }
                }
            }
        }
        if let Some(last) = self.entities.keys().next_back() {
            self.next_id = self.next_id.max(last.0.wrapping_add(1));
        }
    }
}

/// An [`EntityStore`] with a step function: a ready-made [`World`].
pub struct Simulated<F> {
    /// The entities.
    pub store: EntityStore,
    step: F,
}

impl<F: FnMut(&mut EntityStore, u64, &[PeerInput])> Simulated<F> {
    /// A world of `store` advanced by `step(store, tick, inputs)`.
    pub fn new(store: EntityStore, step: F) -> Self {
        Self { store, step }
    }
}

impl<F: FnMut(&mut EntityStore, u64, &[PeerInput])> World for Simulated<F> {
    fn step(&mut self, tick: u64, inputs: &[PeerInput]) {
        (self.step)(&mut self.store, tick, inputs);
    }

    fn capture(&self, out: &mut Snapshot) {
        self.store.capture(out);
    }

    fn restore(&mut self, state: &Snapshot) {
        self.store.restore(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_captures_and_restores_exactly() {
        let (pos, name) = (ComponentId(0), ComponentId(1));
        let mut a = EntityStore::new();
        let e1 = a.spawn(None);
        a.set_lanes(e1, pos, &[1, 2, 3]);
        let e2 = a.spawn(Some(PeerId(4)));
        a.set_bytes(e2, name, b"bob");
        let mut snap = Snapshot::new(9);
        a.capture(&mut snap);
        snap.seal();
        let mut b = EntityStore::new();
        let stray = b.spawn(None);
        b.set_lanes(stray, pos, &[7]);
        b.spawn(None);
        b.spawn(None);
        b.restore(&snap);
        assert_eq!(b.ids().collect::<Vec<_>>(), vec![e1, e2]);
        assert_eq!(b.lanes(e1, pos), Some(&[1, 2, 3][..]));
        assert_eq!(b.bytes(e2, name), Some(&b"bob"[..]));
        assert_eq!(b.owned_by(PeerId(4)).collect::<Vec<_>>(), vec![e2]);
        let mut again = Snapshot::new(9);
        b.capture(&mut again);
        assert_eq!(again, snap);
        // A new entity never reuses a restored id.
        assert!(b.spawn(None) > e2);
    }

    #[test]
    fn a_simulated_world_steps_with_its_function() {
        let pos = ComponentId(0);
        let mut store = EntityStore::new();
        let e = store.spawn(Some(PeerId(1)));
        store.set_lanes(e, pos, &[10]);
        let mut w = Simulated::new(
            store,
            move |s: &mut EntityStore, _tick, inputs: &[PeerInput]| {
                for i in inputs {
                    let ids: Vec<EntityId> = s.owned_by(i.peer).collect();
                    for id in ids {
                        if let Some(l) = s.lanes_mut(id, pos) {
                            l[0] += i.actions.len() as u32;
                        }
                    }
                }
            },
        );
        let act = Action {
            id: ActionId(0),
            payload: vec![],
        };
        w.step(
            1,
            &[PeerInput {
                peer: PeerId(1),
                actions: vec![act.clone(), act],
            }],
        );
        assert_eq!(w.store.lanes(e, pos), Some(&[12][..]));
    }
}

//! Instances this node committed last, so the next command on one of them skips reading
//! it back from the store.
//!
//! A cached instance is only a guess at the stored state: a command run on it commits
//! with the cached version as its optimistic lock, so a stale entry (another node changed
//! the instance) fails to commit and the command runs again on a fresh read. Nothing
//! is ever answered from the cache alone.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use steadyflow_store::InstanceRecord;

/// Instances kept (in two generations of half this size each).
const INSTANCES: usize = 32_768;
/// External task ids whose instance is known (from fetch-and-lock).
const TASKS: usize = 131_072;

/// A bounded map that forgets in bulk: entries live in a young generation; when it is
/// full it becomes the old one (dropping the previous old one). A hit in the old
/// generation moves the entry back to the young one, so what is in use stays.
struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    half: usize,
}

impl<K: Eq + Hash, V: Clone> Generations<K, V> {
    fn new(capacity: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    /// Looks `k` up by reference (no owned key is made unless the entry moves).
    fn get<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(v) = self.young.get(k) {
            return Some(v.clone());
        }
        let v = self.old.remove(k)?;
        self.insert(k.to_owned(), v.clone());
        Some(v)
    }

    fn insert(&mut self, k: K, v: V) {
        self.old.remove(&k);
        if self.young.len() >= self.half && !self.young.contains_key(&k) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    fn remove<Q>(&mut self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young.remove(k);
        self.old.remove(k);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

pub(crate) struct HotInstances {
    instances: Mutex<Generations<String, Arc<InstanceRecord>>>,
    /// External task id -> instance id.
    tasks: Mutex<Generations<String, String>>,
}

impl HotInstances {
    pub(crate) fn new() -> Self {
        HotInstances {
            instances: Mutex::new(Generations::new(INSTANCES)),
            tasks: Mutex::new(Generations::new(TASKS)),
        }
    }

    /// The instance as this node last committed it.
    pub(crate) fn get(&self, id: &str) -> Option<InstanceRecord> {
        let hit = crate::sync::lock(&self.instances).get(id);
        hit.map(|i| (*i).clone())
    }

    /// The instance external task `task_id` belongs to, as this node last committed it.
    pub(crate) fn of_task(&self, task_id: &str) -> Option<InstanceRecord> {
        let owner = crate::sync::lock(&self.tasks).get(task_id)?;
        self.get(&owner)
    }

    /// Remembers a committed instance; an ended one is forgotten (no command runs on it).
    pub(crate) fn put(&self, inst: &InstanceRecord) {
        let mut map = crate::sync::lock(&self.instances);
        if inst.state.is_ended() {
            map.remove(inst.id.as_str());
        } else {
            map.insert(inst.id.clone(), Arc::new(inst.clone()));
        }
    }

    pub(crate) fn forget(&self, id: &str) {
        crate::sync::lock(&self.instances).remove(id);
    }

    pub(crate) fn task_owned_by(&self, task_id: &str, instance_id: &str) {
        crate::sync::lock(&self.tasks).insert(task_id.to_string(), instance_id.to_string());
    }

    pub(crate) fn forget_task(&self, task_id: &str) {
        crate::sync::lock(&self.tasks).remove(task_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_stay_bounded_and_keep_what_is_used() {
        let mut g = Generations::new(4);
        for i in 0..100 {
            g.insert(i, i * 10);
            // Entry 0 is used all the time: it survives every turnover.
            assert_eq!(g.get(&0), Some(0));
            assert!(g.len() <= 4, "{} entries", g.len());
        }
        assert_eq!(g.get(&99), Some(990));
        assert_eq!(g.get(&1), None, "old entries are forgotten");
        g.remove(&0);
        assert_eq!(g.get(&0), None);
    }
}

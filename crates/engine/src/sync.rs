//! Lock poisoning, handled one way in this crate.
//!
//! A lock is poisoned when a thread panicked while holding it. Every lock here guards a
//! cache (definitions, hot instances, latest versions), a clock, or a health record; each
//! update under them leaves the data usable even if it stops half-way (a cache is only
//! a guess that commits verify, a clock or status is one assignment). So a poisoned lock
//! is recovered with `into_inner` and the node goes on, instead of one panic turning
//! every later command into another one.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

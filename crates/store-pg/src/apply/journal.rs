//! The end of a batch transaction: which change sets won their instance, and the
//! journal of the winners, built by the shared [`journal::entries`] from what the
//! statements returned.

use std::collections::HashSet;

use steadyflow_store::journal::{self, Effects};
use steadyflow_store::{ChangeSet, Result};
use tokio_postgres::Row;

use super::columns::{Batch, Removal, Slots};
use super::commit::Attempt;
use crate::pipeline::Finish;
use crate::rows;

/// The ids (column 0) of the rows a statement returned.
fn returned_ids(rows: &[Row]) -> Result<HashSet<&str>> {
    rows.iter().map(|r| rows::get::<&str>(r, 0)).collect()
}

impl<'c> Batch<'c> {
    /// Finds the change sets whose optimistic lock or lock guard failed and journals the
    /// others. Commits the winners, or rolls back when there are none; yields the
    /// losers' indices. When some lost but the statements were not `filtered`, the
    /// losers' rows were written too: rolls back and asks for [`Attempt::Refilter`].
    pub(super) fn finish(
        &self,
        slots: &Slots,
        rows: Vec<Vec<Row>>,
        filtered: bool,
    ) -> Result<Finish<'c, Attempt>> {
        let of = |slot: Option<usize>| slot.map_or(&[][..], |i| rows[i].as_slice());
        let (inserted, updated) = (of(slots.inserted), of(slots.updated));
        // Usually every change set won its instance; only otherwise is it worth a set.
        let written = if inserted.len() + updated.len() == self.changes.len() {
            None
        } else {
            let mut ids = returned_ids(inserted)?;
            ids.extend(returned_ids(updated)?);
            Some(ids)
        };
        let won = |change: &ChangeSet| {
            written
                .as_ref()
                .is_none_or(|ids| ids.contains(change.instance.id.as_str()))
        };
        let lost: Vec<usize> = self
            .changes
            .iter()
            .enumerate()
            .filter(|(_, (change, _))| !won(change))
            .map(|(i, _)| i)
            .collect();
        if lost.len() == self.changes.len() {
            return Ok(Finish::Rollback(Attempt::Done { lost }));
        }
        if !lost.is_empty() && !filtered {
            return Ok(Finish::Rollback(Attempt::Refilter));
        }

        let mut effects = Effects::default();
        for (slot, table) in [
            (slots.removed_tasks, Removal::Tasks),
            (slots.removed_external, Removal::External),
            (slots.removed_timers, Removal::Timers),
        ] {
            let (asked, deleted) = (self.removal_ids(table), of(slot));
            // Every row found (the usual case) needs no lookup.
            if deleted.len() != asked.len() {
                let deleted = returned_ids(deleted)?;
                effects
                    .missed
                    .extend(asked.iter().filter(|id| !deleted.contains(**id)));
            }
        }
        for r in of(slots.upserted_external) {
            if !rows::get::<bool>(r, 1)? {
                effects.replaced.push(rows::get::<&str>(r, 0)?);
            }
        }
        for r in of(slots.resolved) {
            effects.resolved.push(rows::incident(r)?);
        }

        let mut entries = Vec::with_capacity(self.changes.len() * 4);
        for (change, images) in self.changes.iter().filter(|(change, _)| won(change)) {
            journal::entries(change, images, &effects, &mut entries)?;
        }
        Ok(Finish::Commit(Attempt::Done { lost }, entries))
    }
}

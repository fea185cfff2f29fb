//! Reading back what earlier attempts of a task already streamed, so a new attempt
//! continues after it: the client sees one unbroken answer, nothing repeated or skipped.
//!
//! The events stream captured every chunk any attempt published. The prefix is the text
//! of chunks 0, 1, 2, … taken in `seq` order (the first copy of each `seq`) up to the first
//! gap; the new attempt starts at the next `seq`.

use bitinglip_bus_schema::TaskId;

use crate::{
    client::{chunks_by_seq, stored_events},
    NodeContext,
};

/// Text already streamed for a task, and the `seq` to continue from.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Prefix {
    pub(crate) text: String,
    pub(crate) next_seq: u64,
}

/// Reads the task's chunks from the events stream.
pub(crate) async fn read_prefix(ctx: &NodeContext, task_id: &TaskId) -> Result<Prefix, String> {
    let events = stored_events(&ctx.bus, task_id).await?;
    let mut prefix = Prefix::default();
    for (seq, text) in chunks_by_seq(&events) {
        if seq != prefix.next_seq {
            break;
        }
        prefix.text.push_str(&text);
        prefix.next_seq += 1;
    }
    Ok(prefix)
}

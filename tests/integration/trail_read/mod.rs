//! Reading a trail (issue 16): served without the agent's state lock, and
//! checked against its anchor in the main journal.
mod anchor;
mod unlocked;

//! One person's stream of chat ids, checked: every id exactly one more than
//! the last seen (else a chat was lost, or duplicated if not more). Used by
//! the modes where people drop and come back (`reconnect`, `restart`).

use serde::Deserialize;

/// The fields of a server message these modes look at.
#[derive(Deserialize)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<u64>,
    pub epoch: Option<String>,
    pub last: Option<u64>,
    pub recovered: Option<bool>,
}

/// What a person has seen of the room.
#[derive(Default)]
pub struct Seen {
    /// The room's epoch and the newest id seen in order.
    pub epoch: Option<String>,
    pub last: Option<u64>,
    /// Ids skipped while joining: lost if the server then says `recovered: true`.
    gap_while_joining: u64,
}

/// Chats lost, duplicated and recovered, over everyone.
#[derive(Default)]
pub struct Tally {
    pub received: u64,
    pub recoveries: u64,
    pub incomplete: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Ids missing after a `recovered: false`: away past the window.
    pub beyond_window: u64,
}

impl Seen {
    /// Chat `id` arrived; `joining`: before the `joined` of this connection.
    pub fn chat(&mut self, id: u64, joining: bool, tally: &mut Tally) {
        tally.received += 1;
        let Some(last) = self.last else {
            self.last = Some(id);
            return;
        };
        if id <= last {
            tally.duplicated += 1;
            return;
        }
        let gap = id - last - 1;
        match joining {
            true => self.gap_while_joining += gap,
            false => tally.lost += gap,
        }
        self.last = Some(id);
    }

    /// `joined` arrived with the room's `epoch` and newest id `room_last`.
    /// A rejoin that says `recovered` must have brought everything up to
    /// `room_last`; one that does not owns up to its gap.
    pub fn joined(
        &mut self,
        epoch: Option<&str>,
        room_last: u64,
        recovered: bool,
        tally: &mut Tally,
    ) {
        if self.epoch.is_some() {
            tally.recoveries += 1;
            let behind = self.last.map_or(0, |l| room_last.saturating_sub(l));
            match recovered {
                true => tally.lost += self.gap_while_joining + behind,
                false => {
                    tally.incomplete += 1;
                    tally.beyond_window += self.gap_while_joining + behind;
                }
            }
        }
        if epoch != self.epoch.as_deref() {
            // A new room (a server restarted without its history): ids start again.
            self.last = None;
        }
        self.epoch = epoch.map(str::to_string);
        self.last = Some(self.last.map_or(room_last, |l| l.max(room_last)));
        self.gap_while_joining = 0;
    }
}

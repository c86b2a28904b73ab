//! `churn`: L loops of connect → join → leave → close, with no hold, as fast
//! as the server answers. Counts cycles/s, errors, and unclean closes (a
//! close that was not answered with a close frame and then a FIN).

use std::time::{Duration, Instant};

use crate::fleet::{Ending, Fleet, Handler};
use crate::{Report, ServerWatch, Window};

pub struct Settings {
    pub loops: usize,
    pub duration: Duration,
}

struct Churn {
    cycles: u64,
    unclean: u64,
    errors: u64,
    stop_at: Instant,
    first_unclean: Option<&'static str>,
}

impl Handler for Churn {
    fn opened(&mut self, fleet: &mut Fleet, key: usize, _took: Duration) {
        fleet.send_text(key, br#"{"type":"join","user":"churn"}"#);
        // The server answers a leave with close 1000; the fleet answers that and waits for FIN.
        fleet.send_text(key, br#"{"type":"leave"}"#);
    }

    fn text(&mut self, _fleet: &mut Fleet, _key: usize, _payload: &[u8]) {}

    fn closed(&mut self, fleet: &mut Fleet, _key: usize, ending: Ending) {
        match ending {
            Ending::Clean => self.cycles += 1,
            Ending::Unclean(why) => {
                self.unclean += 1;
                self.first_unclean.get_or_insert(why);
            }
        }
        if Instant::now() < self.stop_at && fleet.connect().is_err() {
            self.errors += 1;
        }
    }
}

pub fn run(
    fleet: &mut Fleet,
    settings: &Settings,
    server: &ServerWatch,
) -> std::io::Result<Report> {
    let started = Instant::now();
    let mut state = Churn {
        cycles: 0,
        unclean: 0,
        errors: 0,
        stop_at: started + settings.duration,
        first_unclean: None,
    };
    let window = Window::open(server);
    for _ in 0..settings.loops {
        if fleet.connect().is_err() {
            state.errors += 1;
        }
    }
    // Run, then let the loops in flight finish (bounded).
    let finish_by = state.stop_at + Duration::from_secs(5);
    while fleet.len() > 0 && Instant::now() < finish_by {
        fleet.turn(Some(Duration::from_millis(50)), &mut state)?;
    }
    let elapsed = started.elapsed();
    let mut report = Report::new("churn", elapsed);
    report.set("loops", settings.loops as f64);
    report.set("cycles", state.cycles as f64);
    report.set(
        "cycles_per_sec",
        state.cycles as f64 / elapsed.as_secs_f64(),
    );
    report.set("errors", state.errors as f64);
    report.set("unclean_closes", state.unclean as f64);
    report.set("unfinished", fleet.len() as f64);
    if let Some(why) = state.first_unclean {
        report.note(format!("first unclean close: {why}"));
    }
    report.cpu(&window, server, "cycles", state.cycles);
    Ok(report)
}

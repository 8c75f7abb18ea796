//! Progress display for long transfers: a bar on a terminal, a plain line every few seconds
//! otherwise (logs, CI), nothing with `--quiet`. Terminal output only: no transfer logic.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use ossmount::hydrate::Progress;
use ossmount::size::human_bytes;

pub struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last_line: Instant,
    started: Instant,
    label: String,
}

impl Reporter {
    pub fn new(quiet: bool, label: &str) -> Reporter {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        });
        Reporter {
            bar,
            plain: !quiet && !tty,
            last_line: Instant::now(),
            started: Instant::now(),
            label: label.to_string(),
        }
    }

    pub fn update(&mut self, p: &Progress) {
        if let Some(b) = &self.bar {
            b.set_length(p.bytes_total);
            b.set_position(p.bytes_present);
            b.set_message(format!("parts {}/{}", p.parts_present, p.parts_total));
        } else if self.plain && self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "{}: {} of {} (parts {}/{}), {}/s",
                self.label,
                human_bytes(p.bytes_present),
                human_bytes(p.bytes_total),
                p.parts_present,
                p.parts_total,
                human_bytes((p.bytes_fetched as f64 / secs) as u64)
            );
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

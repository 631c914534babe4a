//! Printing: colours only on a terminal, tables that fit in 80 columns.

use std::fmt::Display;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

/// The output width everything is laid out for (80 columns minus a margin).
pub const WIDTH: usize = 78;

/// ANSI colours, or none when stdout is not a terminal (or `NO_COLOR` is set).
#[derive(Debug, Clone, Copy)]
pub struct Style {
    on: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Color {
    Green,
    Red,
    Yellow,
    Dim,
    Bold,
}

/// One pod's line in a phase table.
#[derive(Debug)]
pub struct Row {
    pub addr: SocketAddr,
    /// `ready`, `backoff`, … from `client.stats()`, or `removed`.
    pub state: &'static str,
    pub requests: u64,
    pub share: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// The balancer's peak-EWMA estimate, while it still lists the pod.
    pub ewma: Option<Duration>,
    pub errors: u64,
}

// ===== impl Style =====

impl Style {
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            on: std::io::stdout().is_terminal() && !no_color,
        }
    }

    pub fn paint(&self, text: impl Display, color: Color) -> String {
        if !self.on {
            return text.to_string();
        }
        let code = match color {
            Color::Green => "32",
            Color::Red => "31",
            Color::Yellow => "33",
            Color::Dim => "2",
            Color::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

// ===== output =====

/// `[2/6] scale-up: 3 → 5 pods` on the left, `4.0 s · 31204 req · 7801/s` on the right.
pub fn phase_heading(style: Style, number: usize, of: usize, title: &str, right: &str) {
    let left = format!("[{number}/{of}] {title}");
    let pad = WIDTH.saturating_sub(left.chars().count() + right.chars().count());
    println!(
        "{}{}{}",
        style.paint(&left, Color::Bold),
        " ".repeat(pad.max(1)),
        style.paint(right, Color::Dim)
    );
}

pub fn table(style: Style, rows: &[Row]) {
    let head = format!(
        "  {:<18}{:<11}{:>6}{:>8}{:>9}{:>9}{:>9}{:>7}",
        "pod", "state", "reqs", "share", "p50", "p99", "ewma", "errors"
    );
    println!("{}", style.paint(head, Color::Dim));
    for r in rows {
        let state_color = match r.state {
            "ready" => Color::Green,
            "backoff" => Color::Red,
            "removed" => Color::Dim,
            _ => Color::Yellow,
        };
        let errors = format!("{:>7}", r.errors);
        let errors = if r.errors > 0 {
            style.paint(errors, Color::Red)
        } else {
            errors
        };
        println!(
            "  {:<18}{}{:>6}{:>8}{:>9}{:>9}{:>9}{}",
            r.addr.to_string(),
            style.paint(format!("{:<11}", r.state), state_color),
            r.requests,
            format!("{:.1} %", r.share),
            opt_ms(r.p50),
            opt_ms(r.p99),
            opt_ms(r.ewma),
            errors,
        );
    }
}

/// A dim note under a table, wrapped to the width.
pub fn note(style: Style, text: &str) {
    for (i, line) in wrap(text, WIDTH - 2).iter().enumerate() {
        let indent = if i == 0 { "  " } else { "    " };
        println!("{indent}{}", style.paint(line, Color::Dim));
    }
}

/// The phase's verdict: `✓ …` in green or `✗ …` in red, wrapped to the width.
pub fn verdict(style: Style, ok: bool, text: &str) {
    let (mark, color) = if ok {
        ("✓", Color::Green)
    } else {
        ("✗", Color::Red)
    };
    for (i, line) in wrap(text, WIDTH - 4).iter().enumerate() {
        let lead = if i == 0 { mark } else { " " };
        // A passed claim reads plain; a failed one stands out in red.
        let line = if ok {
            line.clone()
        } else {
            style.paint(line, color)
        };
        println!("  {} {line}", style.paint(lead, color));
    }
}

/// A non-breaking space: [`wrap`] never breaks a line there.
pub const NBSP: char = '\u{a0}';

/// `0.42 ms`, `41.3 ms`, `1.20 s`, with a non-breaking space.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2}{NBSP}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}{NBSP}ms")
    } else {
        format!("{:.2}{NBSP}s", ms / 1e3)
    }
}

/// `33.3 %`, with a non-breaking space.
pub fn pct(p: f64) -> String {
    format!("{p:.1}{NBSP}%")
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| ms(d).replace(NBSP, " "))
}

/// Greedy word wrap at spaces; non-breaking spaces come out as spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines.into_iter().map(|l| l.replace(NBSP, " ")).collect()
}

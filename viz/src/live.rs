//! The live terminal loop shared by `top` and `dashboard`: draw, wait for a key at most a tick,
//! fold in what the network tasks sent meanwhile, draw again. The loop never awaits the network.

use std::io;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Frame;

/// How long the loop waits for a key before it redraws.
const TICK: Duration = Duration::from_millis(100);

/// What a key handler wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// Runs a full-screen view until `q`, Esc or Ctrl-C (or until `key` says so). `update` folds in
/// new data (it must not block), `draw` renders the state, `key` handles the other keys.
pub fn run<S>(
    state: &mut S,
    mut update: impl FnMut(&mut S),
    draw: impl Fn(&mut Frame, &S),
    mut key: impl FnMut(&mut S, KeyCode) -> Flow,
) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = (|| loop {
        update(state);
        terminal.draw(|frame| draw(frame, state))?;
        if !event::poll(TICK)? {
            continue;
        }
        if let Event::Key(k) = event::read()? {
            if k.kind != KeyEventKind::Press {
                continue;
            }
            let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL));
            if quit || key(state, k.code) == Flow::Quit {
                return Ok(());
            }
        }
    })();
    ratatui::restore();
    result
}

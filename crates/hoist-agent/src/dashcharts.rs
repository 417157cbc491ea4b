//! The charts of an app's page: requests/s, 5xx share and p99 per release over the last
//! hour and day, drawn as SVG on the server.

use maud::{html, Markup};

use crate::Agent;

pub(crate) fn section(_agent: &Agent, _app: &str) -> Markup {
    html! {}
}

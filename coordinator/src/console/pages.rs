//! The console's pages, as `maud` templates: every interpolated value is
//! HTML-escaped, so a brief's text shows as text whatever it holds.

use super::actions::Action;
use super::{Filter, Live, RunView, Viewer};
use crate::list::{Row, Step};
use crate::status::Status;
use axum::http::StatusCode;
use backfill_shared::control::batches::Cell;
use backfill_shared::control::maintenance;
use backfill_shared::control::runs::RunState;
use maud::{DOCTYPE, Markup, html};

/// The console's style sheet, served from `/static/console.css`: the
/// Content-Security-Policy allows no inline style, so a bar's width and a
/// cell's fill are classes of [`STEPS`] steps, not style attributes.
pub(super) static STYLE_SHEET: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use std::fmt::Write as _;
    let mut sheet = CSS.to_owned();
    for step in 0..=STEPS {
        let pct = step * 100 / STEPS;
        let _ = write!(
            sheet,
            ".bar span.w{pct}{{width:{pct}%}}\
             .grid i.p{pct}{{background:linear-gradient(to top,#1a7f37 {pct}%,#d0d7de {pct}%)}}"
        );
    }
    sheet
});

/// How many steps a progress bar and a partly applied cell show.
const STEPS: i64 = 20;

/// `part` of `whole` as a percentage, to the nearest step of [`STEPS`].
fn stepped(part: i64, whole: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    let step = (part.clamp(0, whole) * STEPS * 2 + whole) / (whole * 2);
    step * 100 / STEPS
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#24292f;color:#fff;padding:.6rem 1.5rem}header a{color:#fff;text-decoration:none;font-weight:600}\
main{padding:1rem 1.5rem;max-width:90rem}table{border-collapse:collapse;margin:.5rem 0}\
td,th{border-bottom:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}\
th{background:#f6f8fa}.num{text-align:right;font-variant-numeric:tabular-nums}\
.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem 1rem;margin:.5rem 0}\
.maint td:first-child{border-left:4px solid #d4a72c}.badge{display:inline-block;padding:0 .4rem;border-radius:.8rem;font-size:.85em;background:#eaeef2}\
.s-running,.s-canary{background:#ddf4ff}.s-halted,.s-failed{background:#ffebe9}.s-applied,.s-approved{background:#dafbe1}\
.bar{display:inline-block;width:6rem;height:.6rem;background:#d0d7de;vertical-align:middle}.bar span{display:block;height:100%;background:#1a7f37}\
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;white-space:pre-wrap;word-break:break-word}\
.kw{color:#cf222e;font-weight:600}.str{color:#0a3069}.cm{color:#6e7781}\
.grid{display:flex;flex-wrap:wrap;gap:2px;max-width:72rem}.grid i{width:10px;height:10px;display:block;background:#d0d7de}\
i.applied{background:#1a7f37}i.running{background:#0969da}i.queued{background:#80ccff}\
i.failed{background:#cf222e}i.rolled_back{background:#8250df}.legend i.pending{background:#d0d7de}\
.legend i{display:inline-block;width:10px;height:10px;margin:0 .2rem 0 .8rem}.fail{color:#b42318;font-weight:600}\
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem 1rem}dt{color:#57606a}dd{margin:0}\
.who{float:right}.who form{display:inline}.who button{background:none;border:0;color:#fff;text-decoration:underline;cursor:pointer}\
form.act{display:inline-block;margin:0 .6rem .6rem 0}button.danger{background:#fff;color:#b00020;border:2px solid #b00020;font-weight:bold}form.act input[name=reason]{width:22rem}\
img.chart{display:block;max-width:100%;margin:.5rem 0}table.log{width:100%}.log td:first-child{white-space:nowrap}.log code{white-space:pre-wrap;word-break:break-all}\
form.filter{display:flex;gap:.6rem;align-items:end;flex-wrap:wrap}form.filter label{display:flex;flex-direction:column;font-size:.85em}\
.scroll{overflow-x:auto;max-width:100%}.nowrap{white-space:nowrap}h1,dd,.decision{overflow-wrap:anywhere}\
.decision{font-size:1.1em;padding:.5rem .8rem;border-left:4px solid #0969da;background:#f6f8fa}.you{color:#9a6700;font-weight:600}\
.needs{border:2px solid #0969da;padding:.2rem 1rem;margin:.5rem 0}.needs li{margin:.3rem 0}.banner ul{margin:.2rem 0}\
@media (max-width:40rem){main{padding:.6rem}header{padding:.6rem}form.act input[name=reason]{width:100%}}";

/// Shows every time in the reader's own zone and format (the page says UTC
/// without script), and re-fetches the live part of a run's page every few
/// seconds while the run can still change — not while a person types in it.
pub(super) const LIVE_SCRIPT: &str = "(function(){function local(root){root.querySelectorAll('time[datetime]').forEach(function(t){\
var d=new Date(t.getAttribute('datetime'));if(isNaN(d))return;t.title=t.textContent;\
t.textContent=d.toLocaleString(undefined,{dateStyle:'medium',timeStyle:'short'})})}local(document);\
var el=document.getElementById('live');if(!el||!el.dataset.live)return;var last=null;\
setInterval(function(){var a=document.activeElement;if(a&&a.tagName==='INPUT'&&el.contains(a))return;\
fetch(el.dataset.live,{cache:'no-cache'}).then(function(r){return r.ok?r.text():null})\
.then(function(t){if(t!==null&&t!==last){last=t;el.innerHTML=t;local(el)}}).catch(function(){})},3000)})();";

fn layout(title: &str, viewer: Option<&Viewer>, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Backfill" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header {
                    a href="/" { "Backfill" } " · runs and the tables under maintenance"
                    @if let Some(v) = viewer { span.who { (who(v)) } }
                }
                main { (body) }
                script src="/static/live.js" {}
            }
        }
    }
}

/// The second step of an action that cannot be taken back: what it will do,
/// and a form that takes it.
pub(super) fn confirm(
    run_id: uuid::Uuid,
    action: Action,
    consequence: &str,
    csrf: &str,
    reason: &str,
) -> Markup {
    layout(
        &format!("Confirm {}", action.as_str()),
        None,
        &html! {
            h1 { "Confirm " (action.as_str()) " of run " (short(run_id)) }
            p { (consequence) }
            form.act method="post" action=(format!("/runs/{run_id}/actions/{}", action.as_str())) {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="reason" value=(reason);
                input type="hidden" name="confirm" value="yes";
                button.danger type="submit" { (action.as_str()) " run " (short(run_id)) }
            }
            p { a href=(format!("/runs/{run_id}")) { "Back to the run, nothing done" } }
        },
    )
}

pub(super) fn failure(status: StatusCode, message: &str) -> Markup {
    layout(
        status.canonical_reason().unwrap_or("Error"),
        None,
        &html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p { (message) }
            p { a href="/" { "All runs" } }
        },
    )
}

fn short(id: uuid::Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

/// A time, in UTC for a reader without script; the script shows it in the
/// reader's own zone and format.
fn when(at: chrono::DateTime<chrono::Utc>) -> Markup {
    html! {
        time.nowrap datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) {
            (backfill_shared::text::minute(at))
        }
    }
}

/// Text with `backticked` commands shown as code, not as Markdown source.
fn code_spans(text: &str) -> Markup {
    html! {
        @for (i, piece) in text.split('`').enumerate() {
            @if i % 2 == 1 { code { (piece) } } @else { (piece) }
        }
    }
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn progress(applied: i64, total: i64) -> Markup {
    let pct = if total > 0 {
        applied as f64 * 100.0 / total as f64
    } else {
        0.0
    };
    html! {
        span.bar title=(format!("{pct:.1} %")) { span class=(format!("w{}", stepped(applied, total))) {} }
        " " (applied) "/" (total)
    }
}

fn maintenance_banner(under: &[maintenance::Current]) -> Markup {
    html! {
        @if !under.is_empty() {
            div.banner {
                strong { "Under maintenance:" }
                ul { @for m in under {
                    li { code { (m.target) } " by run "
                        a href=(format!("/runs/{}", m.run_id)) { (m.name) }
                        " (" (m.owner) ", since " (when(m.since)) "): " (m.reason) }
                } }
            }
        }
    }
}

/// The runs waiting for the signed-in person's decision.
fn needs_you(name: &str, yours: &[Row]) -> Markup {
    html! {
        section.needs {
            h2 { "Needs you" }
            @if yours.is_empty() {
                p { "No run waits for " (name) "." }
            } @else {
                ul { @for r in yours { @if let Some(a) = &r.awaiting {
                    li { a href=(format!("/runs/{}", r.run_id)) { (r.name) } " on " code { (r.target) }
                         " (" span class=(format!("badge s-{}", r.state)) { (r.state) } "): "
                         strong { (a.step.words()) }
                         @if a.by.len() > 1 { " — " (a.who()) " may" } }
                } } }
            }
        }
    }
}

pub(super) fn runs(
    viewer: &Viewer,
    rows: &[Row],
    yours: Option<&[Row]>,
    under: &[maintenance::Current],
    filter: &Filter,
) -> Markup {
    let states: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
    let chosen = filter.state.as_deref().unwrap_or("");
    let body = html! {
        h1 { "Runs" }
        @if let (Some(yours), Some(person)) = (yours, &viewer.person) { (needs_you(&person.name, yours)) }
        (maintenance_banner(under))
        form.filter method="get" action="/" {
            label { "State"
                select name="state" {
                    option value="" selected[chosen.is_empty()] { "any" }
                    @for s in &states { option value=(s) selected[*s == chosen] { (s) } }
                }
            }
            label { "Target" input name="target" placeholder="schema.table" value=(filter.target.as_deref().unwrap_or("")); }
            label { "Owner" input name="owner" value=(filter.owner.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p { "No run matches." }
        } @else {
            div.scroll { table {
                thead { tr {
                    th { "Run" } th { "Target" } th { "Owner" } th { "Reviewer" } th { "Risk" }
                    th { "State" } th { "Progress" } th.num { "Rows written" } th { "Started" }
                    th { "ETA" } th.num { "Accepted breaches" } th { "Now" }
                } }
                tbody {
                    @for r in rows {
                        @let maint = under.iter().any(|m| m.run_id == r.run_id);
                        tr class=[maint.then_some("maint")] {
                            td { a href=(format!("/runs/{}", r.run_id)) { (r.name) } br; code { (short(r.run_id)) } }
                            td { code { (r.target) } @if maint { br; span.badge { "under maintenance" } } }
                            td { (r.owner) } td { (r.reviewer) } td { (r.risk) }
                            td { span class=(format!("badge s-{}", r.state)) { (r.state) } }
                            td { (progress(r.applied, r.batches)) }
                            td.num { (r.rows_written) }
                            td { (when(r.started)) }
                            td.nowrap { @if let Some(eta) = r.eta_seconds { (duration(eta)) } }
                            td.num { (r.accepted_breaches) }
                            td { (code_spans(&r.holds)) }
                        }
                    }
                }
            } }
        }
    };
    layout("Runs", Some(viewer), &body)
}

pub(super) fn run(viewer: &Viewer, view: &RunView) -> Markup {
    let run = &view.live.run;
    let brief = &run.brief;
    let changing = !matches!(
        run.state,
        RunState::CutOver | RunState::RolledBack | RunState::Cancelled | RunState::Done
    );
    let body = html! {
        h1 { (brief.meta.name) }
        @if view.under_maintenance {
            div.banner { strong { "Under maintenance: " } code { (brief.scope.target.to_string()) } " is being rewritten by this run." }
        }
        p { a href=(format!("/runs/{}/note", run.run_id)) { "Change note" } " · "
            a href=(format!("/api/runs/{}", run.run_id)) { "JSON" } }
        dl {
            dt { "Run" } dd { code { (run.run_id) } }
            dt { "Reason" } dd { (brief.meta.reason) }
            dt { "Owner" } dd { (brief.meta.owner) }
            dt { "Reviewer" } dd { (brief.meta.reviewer)
                @if let (Some(by), Some(at)) = (&run.approved_by, run.approved_at) { " (approved by " (by) ", " (when(at)) ")" } }
            dt { "Risk" } dd { (brief.meta.risk.as_str()) }
            dt { "Target" } dd { code { (brief.scope.target.to_string()) } }
            dt { "Scope" } dd { code { (brief.scope.batch_by.column) } " from " (brief.scope.batch_by.start.to_string())
                " until " (brief.scope.batch_by.end.to_string()) ", " (run.batch_count) " batches" }
            dt { "Strategy" } dd { (brief.write.strategy.as_str()) ", missing rows: " (brief.write.on_missing.as_str())
                @if !brief.write.snapshot { " (no before-images)" } }
            dt { "Rollback plan" } dd { (brief.rollback.plan) " (copies kept " (brief.rollback.retain_days) " days)" }
            dt { "Started" } dd { (when(run.created_at)) " by " (run.operator) " (" (run.code_version) ")" }
        }
        div #live data-live=[changing.then(|| format!("/runs/{}/live", run.run_id))] { (live(viewer, &view.live)) }
        @if !brief.validation.metrics.is_empty() {
            h2 { "Metrics, before and after" }
            p { "Summed over the applied batches, per group." }
            @for (i, m) in brief.validation.metrics.iter().enumerate() {
                p { strong { (m.name) } code { " " (m.expr) } @if let Some(by) = &m.by { " by " code { (by) } } ": "
                    @if let Some(limit) = m.max_change_pct { "the run halts when a group moves more than " (limit) " %" }
                    @else { "no limit" } }
                img.chart src=(format!("/runs/{}/charts/{i}", run.run_id)) loading="lazy"
                    alt=(format!("{}: before and after by group", m.name));
            }
        }
        h2 { "People told, and the way back" }
        dl {
            dt { "Announced" } dd { (view.announced.as_deref().unwrap_or("no announcement recorded")) }
            dt { "Told after" } dd {
                @if view.told.is_empty() { "not yet (" code { "backfill report --send" } " or " code { "backfill done --told" } ")" }
                @for (i, t) in view.told.iter().enumerate() { @if i > 0 { br; } (t) }
            }
            dt { "Stakeholders" } dd { (brief.dependencies.stakeholders.join(", ")) }
            dt { "Rollback copies" } dd {
                @if let Some(at) = run.cleaned_at { "dropped at " (when(at)) }
                @else if view.copies.is_empty() { "none" }
                @else {
                    @for (i, c) in view.copies.iter().enumerate() { @if i > 0 { ", " } code { (c) } }
                    " — kept " (brief.rollback.retain_days) " days after the run finishes"
                    @if let Some(until) = run.retained_until() { " (until " (until.format("%Y-%m-%d")) ")" }
                }
            }
        }
        @if !deciding_on_validation(run.state) { (checklist(&view.live.checks)) }
        h2 { "Source" }
        pre { code { (highlight(&brief.scope.source)) } }
        details {
            summary { "The brief as recorded (" code { (run.brief_hash.get(..12).unwrap_or(&run.brief_hash)) } ")" }
            pre { (run.brief_text) }
        }
        h2 { "Run log" }
        p { "Newest first; each applied batch's entry is in the grid above."
            @if view.log.1 > 0 { " " (view.log.1) " more entries, applied batches among them, are in " code { "backfill.run_log" } "." } }
        div.scroll { table.log {
            thead { tr { th { "When" } th { "Who" } th { "What" } th.num { "Batch" } th { "Detail" } } }
            tbody { @for e in &view.log.0 {
                tr { td { (when(e.at)) } td { (e.actor) } td { (e.event) }
                     td.num { @if let Some(b) = e.batch_no { (b) } }
                     td { @if !e.detail.is_null() { code { (e.detail.to_string()) } } } }
            } }
        } }
    };
    layout(&brief.meta.name, Some(viewer), &body)
}

/// Who is signed in, with a way out; or a way in.
fn who(v: &Viewer) -> Markup {
    html! {
        @if let Some(login) = &v.login {
            "signed in as " (login)
            @if let Some(p) = &v.person { @if p.name != *login { " (" (p.name) ")" } }
            " "
            form method="post" action="/logout" {
                input type="hidden" name="csrf" value=(v.csrf);
                button type="submit" { "log out" }
            }
        } @else if v.can_log_in {
            a href="/login" { "log in" }
        }
    }
}

/// The actions the viewer may take on the run in its state, each a form that
/// posts with their CSRF token.
fn actions(viewer: &Viewer, live: &Live) -> Markup {
    let state = live.run.state;
    // Approving waits for a validation that passed (or whose failures the
    // reviewer accepted): until then the run awaits its validation.
    let approvable = live
        .row
        .awaiting
        .as_ref()
        .is_some_and(|a| a.step == Step::Approve);
    let fitting: Vec<Action> = Action::ALL
        .into_iter()
        .filter(|a| a.fits(state) && (*a != Action::Approve || approvable))
        .collect();
    html! {
        @if fitting.is_empty() {
            p { "Nothing to do in state " (state.as_str()) "." }
        } @else if let Some(person) = &viewer.person {
            @let allowed: Vec<&Action> = fitting.iter().filter(|a| a.refusal(person, &live.run.brief).is_none()).collect();
            @if allowed.is_empty() {
                p { (person.name) " may not act on this run in state " (state.as_str()) "." }
            }
            @for action in allowed {
                form.act method="post" action=(format!("/runs/{}/actions/{}", live.run.run_id, action.as_str())) {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    @if action.wants_reason(state) {
                        input name="reason" required placeholder="why the breach is acceptable (recorded with your name)";
                    }
                    @if action.is_dangerous() {
                        button.danger type="submit" { (action.as_str()) "…" }
                    } @else {
                        button type="submit" { (action.as_str()) }
                    }
                }
            }
        } @else if let Some(login) = &viewer.login {
            p { "Login " (login) " is nobody in backfill.people, so it cannot act." }
        } @else if viewer.can_log_in {
            p { a href="/login" { "Log in" } " to act on this run." }
        } @else {
            p { "This console has no login; act with the CLI." }
        }
    }
}

/// What the run's state asks, first on its page: the state, the fact behind
/// it (why it halted, which checks failed), and whose decision it waits for.
fn decision(viewer: &Viewer, live: &Live) -> Markup {
    let state = live.run.state;
    let row = &live.row;
    let yours = viewer
        .person
        .as_ref()
        .zip(row.awaiting.as_ref())
        .is_some_and(|(p, a)| a.is_for(&p.name));
    html! {
        p.decision {
            span class=(format!("badge s-{}", state.as_str())) { (state.as_str()) } " "
            @if let Some(reason) = &live.status.halt_reason { "Halted: " (reason) ". " }
            @if state == RunState::Applied && !row.open_checks.is_empty() {
                "The latest validation failed: " (row.open_checks.join(", ")) ". "
            }
            @if let Some(a) = &row.awaiting {
                "Waiting for " strong { (a.who()) } " to " (a.step.words()) "."
                @if yours { " " span.you { "Your decision." } }
            } @else {
                (code_spans(&capitalized(&row.holds))) "."
            }
        }
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Whether the run's decision is taken on its validation, whose checklist
/// then leads its page.
fn deciding_on_validation(state: RunState) -> bool {
    matches!(state, RunState::Applied | RunState::Approved)
}

/// The latest validation's checks.
fn checklist(checks: &[(String, bool, String, chrono::DateTime<chrono::Utc>)]) -> Markup {
    html! {
        h2 { "Validation" }
        @if checks.is_empty() {
            p { "Not validated yet." }
        } @else {
            div.scroll { table {
                thead { tr { th { "Check" } th { "Result" } th { "Summary" } th { "When" } } }
                tbody { @for (name, passed, summary, at) in checks {
                    tr { td { (name) } td { @if *passed { "passed" } @else { span.fail { "failed" } } } td { (summary) } td { (when(*at)) } }
                } }
            } }
        }
    }
}

/// The canary's figures, for the reviewer who promotes it: its batches, the
/// pace and the whole run at that pace, the metrics by group, the edge cases.
fn canary(c: &crate::canary::Figures, zone: Option<&str>) -> Markup {
    use crate::report::{fmt_num, group_label};
    let done = c.batches.iter().filter(|b| b.applied).count();
    html! {
        h2 { "Canary" }
        p { (done) " of " (c.batches.len()) " canary batch(es) applied, " (c.rows_written) " rows written"
            @if let (Some(per), Some(whole)) = (c.seconds_per_batch, c.projected_run_seconds) {
                "; " (format!("{per:.2}")) " s per batch: the whole run about " (duration(whole.round() as i64)) " at this pace"
            } "."
            @if c.auto { " It promotes itself if no limit is breached (canary.auto)." } }
        div.scroll { table {
            thead { tr { th.num { "Batch" } th { "Range" @if let Some(zone) = zone { " (" (zone) ")" } } th.num { "Rows written" } th.num { "Seconds" } } }
            tbody { @for b in &c.batches {
                tr { td.num { (b.batch_no) } td { code { (b.lo) " .. " (b.hi) } }
                     @if let Some(secs) = b.seconds { td.num { (b.rows_written) } td.num { (format!("{secs:.2}")) } }
                     @else { td colspan="2" { "not applied yet" } } }
            } }
        } }
        @if !c.metrics.is_empty() {
            h3 { "Metrics of the canary batches, by group" }
            div.scroll { table {
                thead { tr { th { "Metric" } th { "Group" } th.num { "Before" } th.num { "After" } th.num { "Change" } } }
                tbody { @for m in &c.metrics {
                    tr { td { (m.metric) } td { (group_label(&m.group)) } td.num { (fmt_num(m.before)) } td.num { (fmt_num(m.after)) }
                         td.num { @if let Some(p) = m.delta_pct() { (format!("{p:+.2} %")) } } }
                } }
            } }
        }
        @if let Some(cases) = c.edge_cases.as_array().filter(|c| !c.is_empty()) {
            h3 { "Edge cases" }
            div.scroll { table {
                thead { tr { th { "Key" } th { "Before the run" } th { "Now" } } }
                tbody { @for case in cases {
                    @let text = |v: &serde_json::Value| v.as_str().unwrap_or("(absent)").to_owned();
                    tr { td { code { (text(&case["key"])) } }
                         @if case["changed"] == true { td { (text(&case["before"])) } td { (text(&case["now"])) } }
                         @else { td { "the same" } td { (text(&case["now"])) } } }
                } }
            } }
        }
    }
}

fn breaches(s: &Status) -> Markup {
    html! {
        h2 { "Breaches" }
        div.scroll { table {
            thead { tr { th { "Limit" } th.num { "Batch" } th { "Figures" } th { "Accepted" } } }
            tbody { @for b in &s.breaches {
                tr { td { (b.breach.limit) } td.num { (b.breach.batch_no) } td { (b.breach.message) }
                     td { @if b.accepted { "yes" } @else { span.fail { "no" } } } }
            } }
        } }
    }
}

pub(super) fn login(viewer: &Viewer, tokens: bool, error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Log in" }
        @if let Some(error) = error { p.fail { (error) } }
        @if let Some(login) = &viewer.login {
            p { "You are signed in as " (login) "." }
        } @else if tokens {
            form method="post" action="/login" {
                label { "Your console token " input type="password" name="token" required autocomplete="current-password"; }
                " " button type="submit" { "Log in" }
            }
        } @else {
            p { "This console takes no tokens: it knows you from the authenticating proxy in front of it, or not at all." }
        }
    };
    layout("Log in", Some(viewer), &body)
}

/// The part of a run's page that changes while it runs: the state and the
/// decision it waits for with its facts (a canary's figures, a halt's
/// breaches) first, then the actions, the progress and the grid.
pub(super) fn live(viewer: &Viewer, live: &Live) -> Markup {
    let s = &live.status;
    let state = live.run.state;
    let c = &s.batches;
    let grid = &live.grid;
    let per_batch = grid.first().map_or(1, Cell::batches);
    let halted = state == RunState::Halted;
    html! {
        (decision(viewer, live))
        @if state == RunState::Canary { @if let Some(figures) = &s.canary { (canary(figures, s.bounds_zone)) } }
        @if halted && !s.breaches.is_empty() { (breaches(s)) }
        @if deciding_on_validation(state) { (checklist(&live.checks)) }
        h2 { "Actions" }
        (actions(viewer, live))
        h2 { "Progress" }
        @if let Some(advice) = &s.no_workers { p.fail { (advice) } }
        @if let Some(since) = s.throttled_since { p { "Throttled by pause_when since " (when(since)) } }
        dl {
            dt { "Batches" } dd { (progress(c.applied, i64::from(s.batch_count)))
                " — " (c.running) " running, " (c.queued) " queued, " (c.pending) " pending, " (c.failed) " failed" }
            dt { "Rows" } dd { (c.rows.source) " from the source: " (c.rows.inserted) " inserted, "
                (c.rows.updated) " updated, " (c.rows.deleted) " deleted" }
            dt { "ETA" } dd { @match (s.eta_seconds, s.eta_range_seconds) {
                (Some(eta), Some((lo, hi))) => { (duration(eta)) " (" (duration(lo)) " to " (duration(hi)) ")" }
                (Some(eta), None) => { (duration(eta)) }
                _ => { @if let Some(why) = &s.eta_withheld { "none while " (why) } @else { "—" } }
            } }
        }
        h3 { "Batches" }
        p.legend {
            "One cell per " @if per_batch > 1 { (per_batch) " batches" } @else { "batch" } ":"
            i.key.pending {} "pending" i.key.queued {} "queued" i.key.running {} "running"
            i.key.applied {} "applied" i.key.failed {} "failed" i.key.rolled_back {} "rolled back"
        }
        div.grid role="img" aria-label="batches by state" { @for cell in grid { (grid_cell(cell)) } }
        @if !s.failures.is_empty() {
            h3 { "Failures" }
            div.scroll { table {
                thead { tr { th.num { "Batch" } th { "Range" @if let Some(zone) = s.bounds_zone { " (" (zone) ")" } } th { "State" } th.num { "Attempts" } th { "Error" } } }
                tbody { @for f in &s.failures {
                    tr { td.num { (f.batch_no) } td { code { (f.lo) " .. " (f.hi) } } td { (f.state.as_str()) }
                         td.num { (f.attempts) } td { (f.last_error) } }
                } }
            } }
        }
        @if !halted && !s.breaches.is_empty() { (breaches(s)) }
    }
}

/// One cell: coloured by its most pressing state (failed, then in flight),
/// else filled in proportion to its applied batches; its figures on hover.
fn grid_cell(cell: &Cell) -> Markup {
    let n = cell.batches().max(1);
    let class = if cell.failed > 0 {
        "failed".to_owned()
    } else if cell.running > 0 {
        "running".to_owned()
    } else if cell.queued > 0 {
        "queued".to_owned()
    } else if cell.rolled_back == n {
        "rolled_back".to_owned()
    } else if cell.applied == n {
        "applied".to_owned()
    } else if cell.applied > 0 {
        // Neither empty nor full, however it rounds.
        let pct = stepped(cell.applied, n).clamp(100 / STEPS, 100 - 100 / STEPS);
        format!("p{pct}")
    } else {
        "pending".to_owned()
    };
    let batches = if cell.first == cell.last {
        format!("batch {}", cell.first)
    } else {
        format!("batches {}–{}", cell.first, cell.last)
    };
    let mut title = format!(
        "{batches}: {} .. {}\n{} applied, {} running, {} queued, {} pending, {} failed\n{} rows, {} ms, {} attempts",
        cell.lo,
        cell.hi,
        cell.applied,
        cell.running,
        cell.queued,
        cell.pending,
        cell.failed,
        cell.rows,
        cell.duration_ms,
        cell.attempts
    );
    if let Some(error) = &cell.error {
        title.push('\n');
        title.push_str(error);
    }
    html! { i class=(class) title=(title) {} }
}

const KEYWORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "join",
    "left",
    "right",
    "full",
    "inner",
    "outer",
    "on",
    "and",
    "or",
    "not",
    "group",
    "by",
    "order",
    "having",
    "as",
    "case",
    "when",
    "then",
    "else",
    "end",
    "with",
    "union",
    "all",
    "distinct",
    "in",
    "is",
    "null",
    "between",
    "like",
    "limit",
    "over",
    "partition",
    "exists",
    "coalesce",
    "sum",
    "count",
    "avg",
    "min",
    "max",
    "cast",
    "using",
    "lateral",
    "filter",
    "interval",
    "date",
    "true",
    "false",
];

/// The source SQL with keywords, strings and comments marked for colour, every
/// piece escaped.
fn highlight(sql: &str) -> Markup {
    let mut parts: Vec<(Option<&str>, &str)> = Vec::new();
    let mut rest = sql;
    while !rest.is_empty() {
        let (class, len) = if rest.starts_with("--") {
            (Some("cm"), rest.find('\n').unwrap_or(rest.len()))
        } else if rest.starts_with('\'') {
            let close = rest
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == '\'')
                .map_or(rest.len(), |(i, _)| i + 1);
            (Some("str"), close)
        } else if rest.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            let len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let word = rest.get(..len).unwrap_or_default();
            let kw = KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word));
            (kw.then_some("kw"), len)
        } else {
            let len = rest
                .find(|c: char| c.is_alphabetic() || c == '_' || c == '\'' || c == '-')
                .unwrap_or(rest.len())
                .max(rest.chars().next().map_or(1, char::len_utf8));
            (None, len)
        };
        let (piece, tail) = rest.split_at(len);
        parts.push((class, piece));
        rest = tail;
    }
    html! {
        @for (class, piece) in parts {
            @if let Some(class) = class { span class=(class) { (piece) } } @else { (piece) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::highlight;

    #[test]
    fn highlighting_escapes_and_keeps_every_character() {
        let sql = "SELECT '<b>' AS x, a-1 -- </script>\nFROM t WHERE é = 'it''s'";
        let html = highlight(sql).into_string();
        assert!(
            !html.contains("<b>") && !html.contains("</script>"),
            "{html}"
        );
        let text = html
            .replace(r#"<span class="kw">"#, "")
            .replace(r#"<span class="str">"#, "")
            .replace(r#"<span class="cm">"#, "")
            .replace("</span>", "")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        assert_eq!(text, sql);
        assert!(html.contains(r#"<span class="kw">SELECT</span>"#), "{html}");
        assert!(
            html.contains(r#"<span class="cm">-- &lt;/script&gt;</span>"#),
            "{html}"
        );
    }
}

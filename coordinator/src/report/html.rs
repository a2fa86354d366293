//! The report as one HTML page: the Markdown rendered by `pulldown-cmark` (any
//! HTML in it, from a brief's text, shown as text), with a before/after bar chart
//! per metric in inline SVG, readable without a server.

use super::Report;
use super::markdown::fmt_num;
use crate::validate::GroupDelta;
use pulldown_cmark::{Event, Options, Parser};
use std::fmt::Write as _;

/// Where the page's style sheet is.
#[derive(Debug, Clone, Copy)]
pub enum Styles<'a> {
    /// In the page: a file that reads the same without a server.
    Inline,
    /// At a URL: a page served under a Content-Security-Policy that allows no
    /// inline style (the console's `/static/note.css`).
    Linked(&'a str),
}

impl Report {
    /// The report as a page of its own, its style sheet in it.
    #[must_use]
    pub fn html(&self) -> String {
        self.html_styled(Styles::Inline)
    }

    /// The report as a page with its style sheet where `styles` says; no
    /// element carries a style of its own (table columns align by class).
    #[must_use]
    pub fn html_styled(&self, styles: Styles<'_>) -> String {
        let body = markdown_to_html(&self.markdown());
        let charts: String = self
            .metric_names()
            .iter()
            .map(|m| {
                let groups: Vec<(String, &GroupDelta)> = self
                    .metrics
                    .iter()
                    .filter(|d| &d.metric == m)
                    .map(|d| (self.label(m, &d.group), d))
                    .collect();
                chart(m, &groups)
            })
            .collect();
        let marker = "<h2>What changed</h2>";
        let body = body.replacen(marker, &format!("{marker}\n{charts}"), 1);
        let style = match styles {
            Styles::Inline => format!("<style>{STYLE_SHEET}</style>"),
            Styles::Linked(href) => format!("<link rel=\"stylesheet\" href=\"{}\">", escape(href)),
        };
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>Backfill report: {}</title>\n{style}</head>\n<body>\n{body}\n</body></html>\n",
            escape(&self.name)
        )
    }
}

/// The report page's style sheet.
pub const STYLE_SHEET: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;vertical-align:top}\
th{background:#f6f8fa}code{background:#f6f8fa;padding:0 .2rem}.fail{color:#b42318;font-weight:bold}\
td,li,p{overflow-wrap:break-word}td:first-child{white-space:nowrap}table{display:block;max-width:100%;overflow-x:auto}\
svg{display:block;margin:1rem 0;max-width:100%;height:auto}.left{text-align:left}.center{text-align:center}.right{text-align:right}";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A figure in a few characters: 1.2M, 350k, 12.5.
fn compact(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "B")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let digits = if scaled.abs() >= 100.0 || scaled.fract() == 0.0 {
        0
    } else {
        1
    };
    format!("{scaled:.digits$}{suffix}")
}

/// The font of the charts' text: an SVG shown as an image takes no font from
/// the page around it.
const FONT: &str = "system-ui,-apple-system,Segoe UI,Roboto,sans-serif";

/// A grouped bar chart (before, after) of one metric, as inline SVG: its name,
/// the legend on a line of its own beneath, a value axis on the left, each
/// group's change above its bars, its label below. With no group yet, a frame
/// that says so.
pub(super) fn chart(metric: &str, groups: &[(String, &GroupDelta)]) -> String {
    let max = groups
        .iter()
        .flat_map(|(_, g)| [g.before.abs(), g.after.abs()])
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (bar, gap, height, top, left) = (18.0, 14.0, 220.0, 60.0, 70.0);
    let width = left + groups.len() as f64 * (2.0 * bar + gap) + 20.0;
    let width = width.max(300.0);
    let base = top + height;
    // The name, cut to the chart's width (about 8 px a character); whole on hover.
    let room = ((width - 10.0) / 8.0) as usize;
    let name: String = if metric.chars().count() > room {
        metric
            .chars()
            .take(room.saturating_sub(1))
            .chain(['…'])
            .collect()
    } else {
        metric.to_owned()
    };
    if groups.is_empty() {
        return format!(
            "<svg role=\"img\" aria-label=\"{m}: nothing applied yet\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"70\" viewBox=\"0 0 {width:.0} 70\" font-family=\"{FONT}\">\
             <title>{m}</title><text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{n}</text>\
             <text x=\"10\" y=\"46\" font-size=\"12\" fill=\"#57606a\">No batch applied yet: nothing to compare.</text></svg>\n",
            m = escape(metric),
            n = escape(&name),
        );
    }
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{m}: before and after by group\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {width:.0} {h:.0}\" font-family=\"{FONT}\">\
         <title>{m}</title><text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{n}</text>\
         <rect x=\"{left}\" y=\"28\" width=\"10\" height=\"10\" fill=\"#8c959f\"/><text x=\"{lx2:.0}\" y=\"37\" font-size=\"11\">before</text>\
         <rect x=\"{lx3:.0}\" y=\"28\" width=\"10\" height=\"10\" fill=\"#0969da\"/><text x=\"{lx4:.0}\" y=\"37\" font-size=\"11\">after</text>",
        m = escape(metric),
        n = escape(&name),
        h = base + 60.0,
        lx2 = left + 14.0,
        lx3 = left + 60.0,
        lx4 = left + 74.0,
    );
    // The value axis: 0, a quarter, half, three quarters and the largest value.
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = base - height * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{width:.0}\" y2=\"{y:.1}\" stroke=\"{}\"/>\
             <text class=\"tick\" x=\"{:.0}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            if i == 0 { "#57606a" } else { "#eaeef2" },
            left - 6.0,
            y + 3.0,
            compact(v)
        );
    }
    for (i, (label, g)) in groups.iter().enumerate() {
        let x = left + i as f64 * (2.0 * bar + gap);
        for (j, (v, color)) in [(g.before, "#8c959f"), (g.after, "#0969da")]
            .into_iter()
            .enumerate()
        {
            let h = v.abs() / max * height;
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bar}\" height=\"{h:.1}\" fill=\"{color}\"><title>{}: {}</title></rect>",
                x + j as f64 * bar,
                base - h,
                escape(label),
                fmt_num(v)
            );
        }
        let change = g
            .delta_pct()
            .map_or_else(|| "new".to_owned(), |p| format!("{p:+.1}%"));
        let top_of_pair = base - g.before.abs().max(g.after.abs()) / max * height;
        let _ = write!(
            s,
            "<text class=\"change\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
            x + bar,
            top_of_pair - 4.0,
            escape(&change)
        );
        let short: String = label.chars().take(12).collect();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" transform=\"rotate(45 {:.1} {:.1})\">{}</text>",
            x,
            base + 12.0,
            x,
            base + 12.0,
            escape(&short)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The Markdown as HTML (tables on). Raw HTML in the Markdown — it can only come
/// from a brief's text — is shown as text, never run.
fn markdown_to_html(md: &str) -> String {
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    // A table column's alignment as a class, not a style attribute.
    for side in ["left", "center", "right"] {
        html = html.replace(
            &format!(" style=\"text-align: {side}\">"),
            &format!(" class=\"{side}\">"),
        );
    }
    html.replace("<strong>FAIL</strong>", "<span class=\"fail\">FAIL</span>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_become_html_tables_and_html_stays_text() {
        let html = markdown_to_html(
            "# T\n\n| a | b |\n| --- | --- |\n| 1 | **FAIL** |\n| x \\| y | <b>z</b> |\n\n- x `y`\n\n<script>alert(1)</script>\n",
        );
        assert!(html.contains("<h1>T</h1>"), "{html}");
        assert!(html.contains("<th>a</th>"), "{html}");
        assert!(html.contains("<span class=\"fail\">FAIL</span>"), "{html}");
        assert!(html.contains("<td>x | y</td>"), "{html}");
        assert!(html.contains("&lt;b&gt;z&lt;/b&gt;"), "{html}");
        assert!(html.contains("<li>x <code>y</code></li>"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
    }

    #[test]
    fn chart_has_bars_an_axis_and_the_changes() {
        let g = GroupDelta {
            metric: "m".into(),
            group: "1992".into(),
            before: 1_000_000.0,
            after: 500_000.0,
        };
        let svg = chart("m<x>", &[("1992".into(), &g), ("1993".into(), &g)]);
        assert_eq!(svg.matches("class=\"bar\"").count(), 4);
        assert_eq!(svg.matches("class=\"tick\"").count(), 5);
        assert!(
            svg.contains(">1M</text>") && svg.contains(">500k</text>"),
            "{svg}"
        );
        assert_eq!(svg.matches(">-50.0%</text>").count(), 2, "{svg}");
        assert!(svg.contains("m&lt;x&gt;"));
        assert!(svg.contains(&format!("font-family=\"{FONT}\"")), "{svg}");
    }

    #[test]
    fn a_chart_with_nothing_applied_says_so_and_a_long_name_fits() {
        let empty = chart("revenue", &[]);
        assert!(empty.contains("No batch applied yet"), "{empty}");
        assert!(
            !empty.contains("class=\"tick\""),
            "no axis of zeros: {empty}"
        );
        let g = GroupDelta {
            metric: "m".into(),
            group: "1992".into(),
            before: 1.0,
            after: 2.0,
        };
        let long = "net revenue of every order shipped by air, refunds subtracted, in euros";
        let svg = chart(long, &[("1992".into(), &g)]);
        assert!(svg.contains(&format!("<title>{long}</title>")), "{svg}");
        // The title is cut to the chart's width; the legend sits on a line below it.
        let width: f64 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|w| w.split('"').next())
            .and_then(|w| w.parse().ok())
            .unwrap();
        let shown = svg
            .split("font-weight=\"bold\">")
            .nth(1)
            .and_then(|t| t.split('<').next())
            .unwrap();
        assert!(
            shown.ends_with('…') && shown.chars().count() as f64 * 8.0 <= width,
            "{shown} in {width}"
        );
        assert!(svg.contains("y=\"37\" font-size=\"11\">before"), "{svg}");
    }

    #[test]
    fn figures_are_compact() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(1_260_000.0), "1.3M");
        assert_eq!(compact(350_000.0), "350k");
        assert_eq!(compact(12.5), "12.5");
    }
}

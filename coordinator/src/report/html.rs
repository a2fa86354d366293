//! The report as one HTML page: the Markdown rendered, with a before/after bar
//! chart per metric in inline SVG, readable without a server.

use super::Report;
use super::markdown::{fmt_num, group_label};
use crate::validate::GroupDelta;
use std::fmt::Write as _;

impl Report {
    #[must_use]
    pub fn html(&self) -> String {
        let body = markdown_to_html(&self.markdown());
        let charts: String = self
            .metric_names()
            .iter()
            .map(|m| {
                chart(
                    m,
                    &self
                        .metrics
                        .iter()
                        .filter(|d| &d.metric == m)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let marker = "<h2>What changed</h2>";
        let body = body.replacen(marker, &format!("{marker}\n{charts}"), 1);
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Backfill report: {}</title>\n<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n",
            escape(&self.name)
        )
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1b1f24}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem}\
th{background:#f6f8fa}code{background:#f6f8fa;padding:0 .2rem}.fail{color:#b42318;font-weight:bold}\
svg{display:block;margin:1rem 0}";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A grouped bar chart (before, after) of one metric, as inline SVG.
fn chart(metric: &str, groups: &[&GroupDelta]) -> String {
    let max = groups
        .iter()
        .flat_map(|g| [g.before.abs(), g.after.abs()])
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (bar, gap, height, top, left) = (18.0, 14.0, 220.0, 30.0, 70.0);
    let width = left + groups.len() as f64 * (2.0 * bar + gap) + 20.0;
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"{m}: before and after by group\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {width:.0} {h:.0}\">\
         <text x=\"{left}\" y=\"18\" font-size=\"14\" font-weight=\"bold\">{m}</text>\
         <rect x=\"{lx:.0}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#8c959f\"/><text x=\"{lx2:.0}\" y=\"17\" font-size=\"11\">before</text>\
         <rect x=\"{lx3:.0}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#0969da\"/><text x=\"{lx4:.0}\" y=\"17\" font-size=\"11\">after</text>\
         <line x1=\"{left}\" y1=\"{base}\" x2=\"{width:.0}\" y2=\"{base}\" stroke=\"#57606a\"/>",
        m = escape(metric),
        h = height + top + 60.0,
        base = top + height,
        lx = width - 140.0,
        lx2 = width - 126.0,
        lx3 = width - 80.0,
        lx4 = width - 66.0,
    );
    for (i, g) in groups.iter().enumerate() {
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
                top + height - h,
                escape(group_label(&g.group)),
                fmt_num(v)
            );
        }
        let label: String = group_label(&g.group).chars().take(10).collect();
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" transform=\"rotate(45 {:.1} {:.1})\">{}</text>",
            x,
            top + height + 12.0,
            x,
            top + height + 12.0,
            escape(&label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Just enough Markdown for the report: headings, tables, lists, paragraphs.
fn markdown_to_html(md: &str) -> String {
    let inline = |t: &str| {
        let mut out = String::new();
        let mut code = false;
        let mut bold = false;
        let esc = escape(t);
        let mut rest = esc.as_str();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("**") {
                out.push_str(if bold { "</strong>" } else { "<strong>" });
                bold = !bold;
                rest = r;
            } else if let Some(r) = rest.strip_prefix('`') {
                out.push_str(if code { "</code>" } else { "<code>" });
                code = !code;
                rest = r;
            } else {
                let c = rest.chars().next().unwrap_or(' ');
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out.replace("<strong>FAIL</strong>", "<span class=\"fail\">FAIL</span>")
    };
    let mut html = String::new();
    let mut in_table = false;
    let mut in_list = false;
    for line in md.lines() {
        let trimmed = line.trim();
        if in_table && !trimmed.starts_with('|') {
            html.push_str("</table>\n");
            in_table = false;
        }
        if in_list && !trimmed.starts_with("- ") {
            html.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(h) = trimmed.strip_prefix("## ") {
            let _ = writeln!(html, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = trimmed.strip_prefix("# ") {
            let _ = writeln!(html, "<h1>{}</h1>", inline(h));
        } else if trimmed.starts_with('|') {
            let cells: Vec<&str> = trimmed
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':') && !c.is_empty())
            {
                continue;
            }
            let tag = if in_table { "td" } else { "th" };
            if !in_table {
                html.push_str("<table>\n");
                in_table = true;
            }
            html.push_str("<tr>");
            for c in cells {
                let _ = write!(html, "<{tag}>{}</{tag}>", inline(c));
            }
            html.push_str("</tr>\n");
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            if !in_list {
                html.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(html, "<li>{}</li>", inline(item));
        } else if !trimmed.is_empty() {
            let _ = writeln!(html, "<p>{}</p>", inline(trimmed));
        }
    }
    if in_table {
        html.push_str("</table>\n");
    }
    if in_list {
        html.push_str("</ul>\n");
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_become_html_tables() {
        let html =
            markdown_to_html("# T\n\n| a | b |\n| --- | --- |\n| 1 | **FAIL** |\n\n- x `y`\n");
        assert!(html.contains("<h1>T</h1>"));
        assert!(html.contains("<th>a</th><th>b</th>"));
        assert!(html.contains("<td>1</td><td><span class=\"fail\">FAIL</span></td>"));
        assert!(html.contains("<li>x <code>y</code></li>"));
    }

    #[test]
    fn chart_has_a_bar_per_value() {
        let g = GroupDelta {
            metric: "m".into(),
            group: "1992".into(),
            before: 10.0,
            after: 5.0,
        };
        let svg = chart("m<x>", &[&g, &g]);
        assert_eq!(svg.matches("class=\"bar\"").count(), 4);
        assert!(svg.contains("m&lt;x&gt;"));
    }
}

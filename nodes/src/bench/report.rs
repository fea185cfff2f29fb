//! The benchmark's report: a table on the terminal, the figures in `docs/BENCHMARKS.md`
//! (between markers, so the hand-written analysis around them stays), and a PNG of
//! latency against concurrency.

use std::{fmt::Write as _, path::Path};

use plotters::prelude::*;

use super::{platform::EchoRun, stats::Samples, stream::StreamRun};

/// Everything one run measured.
pub(crate) struct Report {
    pub(crate) machine: String,
    pub(crate) versions: String,
    pub(crate) floor_rr: Vec<(usize, Samples)>,
    pub(crate) floor_js: Vec<(usize, Samples)>,
    /// The flood of refusals, when measured.
    pub(crate) flood: Option<super::flood::Flood>,
    /// An idle worker's pull requests, when measured.
    pub(crate) idle: Option<super::platform::IdlePulls>,
    pub(crate) echo: Vec<EchoRun>,
    pub(crate) model: String,
    pub(crate) platform: Vec<StreamRun>,
    pub(crate) direct: Vec<StreamRun>,
    pub(crate) elapsed_secs: f64,
}

/// One line of the plot: label, points, colour.
type Line = (String, Vec<(f64, f64)>, RGBColor);

/// Where the generated part of the document starts and ends.
const BEGIN: &str = "<!-- bench:begin (written by `bitinglip bench`; edit outside these markers) -->";
const END: &str = "<!-- bench:end -->";

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

impl Report {
    fn echo(&self, transport: &str, clients: usize) -> Option<&EchoRun> {
        self.echo.iter().find(|r| r.transport == transport && r.clients == clients)
    }

    fn rr(&self, clients: usize) -> Option<&Samples> {
        self.floor_rr.iter().find(|(c, _)| *c == clients).map(|(_, s)| s)
    }

    fn js(&self, clients: usize) -> Option<&Samples> {
        self.floor_js.iter().find(|(c, _)| *c == clients).map(|(_, s)| s)
    }

    /// The ratios the targets are about: (name, value, target, met).
    pub(crate) fn ratios(&self) -> Vec<(String, f64, String, bool)> {
        let mut out = Vec::new();
        let rr1 = self.rr(1).map(Samples::p50).unwrap_or(0.0);
        if let Some(nats) = self.echo("nats", 1) {
            let r = ratio(nats.done.p50(), rr1);
            out.push((
                "echo submit→completion p50 ÷ NATS request/reply p50 (1 client)".into(),
                r,
                "(context)".into(),
                true,
            ));
        }
        // Like for like: a task against one JetStream hop (publish with PubAck, pull, ack)
        // at the same concurrency, latency and throughput.
        for clients in [1, 16, 64] {
            let (Some(nats), Some(js)) = (self.echo("nats", clients), self.js(clients)) else { continue };
            let r = ratio(nats.done.p50(), js.p50());
            let (target, met) = if clients == 1 { ("≤ 1.5".into(), r <= 1.5) } else { ("(context)".into(), true) };
            out.push((
                format!("echo submit→completion p50 ÷ JetStream publish+consume p50 ({clients} client(s))"),
                r,
                target,
                met,
            ));
            let t = ratio(nats.done.per_sec(), js.per_sec());
            let (target, met) = if clients == 64 { ("≥ 0.5".into(), t >= 0.5) } else { ("(context)".into(), true) };
            out.push((
                format!("echo tasks/s ÷ JetStream publish+consume per second ({clients} client(s))"),
                t,
                target,
                met,
            ));
        }
        for clients in [1, 16, 64] {
            if let (Some(n), Some(h)) = (self.echo("nats", clients), self.echo("http", clients)) {
                let d = h.done.p50() - n.done.p50();
                out.push((
                    format!("HTTP − NATS submit→completion p50, {clients} client(s), ms"),
                    d,
                    if clients == 16 { "< 1 ms".into() } else { "(context)".into() },
                    d < 1.0 || clients != 16,
                ));
            }
        }
        if let (Some(plain), Some(limited)) = (self.echo("http", 16), self.echo("http-limited", 16)) {
            out.push((
                "HTTP submit→completion p50 with a rate-limited key ÷ without, 16 clients".into(),
                ratio(limited.done.p50(), plain.done.p50()),
                "(context)".into(),
                true,
            ));
        }
        for (p, d) in self.platform.iter().zip(&self.direct) {
            let r = ratio(p.tokens_per_sec(), d.tokens_per_sec());
            out.push((format!("platform ÷ direct tokens/s, {} stream(s)", p.streams), r, "≥ 0.95".into(), r >= 0.95));
        }
        if let Some(idle) = &self.idle {
            let r = ratio(idle.per_sec, f64::from(idle.slots));
            out.push((format!("idle pull requests/s ÷ slots, {} slots", idle.slots), r, "≤ 0.1".into(), r <= 0.1));
        }
        let accepted1 = self.echo("nats", 1).and_then(|r| r.accepted.as_ref()).map(Samples::p50);
        if let (Some(flood), Some(accepted1)) = (&self.flood, accepted1) {
            let r = ratio(flood.refused.p99(), accepted1);
            out.push((
                format!(
                    "refusal p99 under a {}× flood ÷ submit→accepted p50 (1 client)",
                    flood.requests / flood.admitted.max(1)
                ),
                r,
                "≤ 10".into(),
                r <= 10.0,
            ));
        }
        out
    }

    /// The generated Markdown.
    pub(crate) fn markdown(&self, png: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{BEGIN}\n");
        let _ = writeln!(s, "Machine: {}  ", self.machine);
        let _ = writeln!(s, "Versions: {}  ", self.versions);
        let _ = writeln!(s, "Run took {:.0} s.\n", self.elapsed_secs);
        let _ = writeln!(s, "### Ratios\n\n| ratio | value | target | |\n| --- | ---: | --- | --- |");
        for (name, value, target, met) in self.ratios() {
            let verdict = if target.starts_with('(') {
                ""
            } else if met {
                "met"
            } else {
                "**missed**"
            };
            let _ = writeln!(s, "| {name} | {value:.2} | {target} | {verdict} |");
        }
        let _ = writeln!(s, "\n### Floor: the same nats-server, nothing of BitingLip\n");
        let _ = writeln!(s, "| path | clients | p50 ms | p99 ms | per second |\n| --- | ---: | ---: | ---: | ---: |");
        for (c, r) in &self.floor_rr {
            let _ = writeln!(
                s,
                "| core NATS request/reply (256 B) | {c} | {:.3} | {:.3} | {:.0} |",
                r.p50(),
                r.p99(),
                r.per_sec()
            );
        }
        for (c, js) in &self.floor_js {
            let _ = writeln!(
                s,
                "| JetStream publish (PubAck) + pull + ack | {c} | {:.3} | {:.3} | {:.0} |",
                js.p50(),
                js.p99(),
                js.per_sec()
            );
        }
        let _ = writeln!(s, "\n### Platform, echo engine (8 words, 8 chunks)\n");
        let _ = writeln!(
            s,
            "| transport | clients | accepted p50 ms | first chunk p50 ms | first chunk p99 ms | completion p50 ms | completion p99 ms | tasks/s | failed |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.echo {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
                r.transport,
                r.clients,
                r.accepted.as_ref().map_or("-".to_string(), |a| format!("{:.2}", a.p50())),
                r.first.p50(),
                r.first.p99(),
                r.done.p50(),
                r.done.p99(),
                r.done.per_sec(),
                r.failed
            );
        }
        for transport in ["nats", "http"] {
            let most = self
                .echo
                .iter()
                .filter(|r| r.transport == transport)
                .max_by(|a, b| a.done.per_sec().total_cmp(&b.done.per_sec()));
            if let Some(r) = most {
                let _ = writeln!(
                    s,
                    "{}Most tasks per second over {transport}: {:.0}, at {} clients.",
                    if transport == "nats" { "\n" } else { "" },
                    r.done.per_sec(),
                    r.clients
                );
            }
        }
        if let Some(flood) = &self.flood {
            let _ = writeln!(s, "\n### {}\n", flood.title());
            let _ = writeln!(s, "{}", flood.table());
        }
        if let Some(idle) = &self.idle {
            let _ = writeln!(
                s,
                "\nAn idle worker with {} slots makes {:.1} pull requests a second (one fetcher per worker; one pull loop per slot made about three per slot).",
                idle.slots, idle.per_sec
            );
        }
        let _ = writeln!(s, "\n### Streaming, {}\n", self.model);
        let _ = writeln!(s, "| streams | platform tokens/s | direct mistral.rs tokens/s | platform ÷ direct |\n| ---: | ---: | ---: | ---: |");
        for (p, d) in self.platform.iter().zip(&self.direct) {
            let _ = writeln!(
                s,
                "| {} | {:.1} ({} tokens in {:.1} s) | {:.1} ({} tokens in {:.1} s) | {:.3} |",
                p.streams,
                p.tokens_per_sec(),
                p.tokens,
                p.secs,
                d.tokens_per_sec(),
                d.tokens,
                d.secs,
                ratio(p.tokens_per_sec(), d.tokens_per_sec())
            );
        }
        if let Some(png) = png {
            let _ = writeln!(s, "\n![submit to completion latency against concurrency]({png})");
        }
        let _ = writeln!(s, "\n{END}");
        s
    }

    /// Prints the tables and ratios.
    pub(crate) fn print(&self) {
        println!("{}", self.markdown(None).replace(BEGIN, "").replace(END, "").trim());
    }

    /// Writes the generated part into `doc`, keeping what is outside the markers.
    pub(crate) fn write_doc(&self, doc: &Path, png: Option<&str>) -> std::io::Result<()> {
        let generated = self.markdown(png);
        let old = std::fs::read_to_string(doc).unwrap_or_default();
        let text = match (old.find(BEGIN), old.find(END)) {
            (Some(b), Some(e)) if e > b => format!("{}{}{}", &old[..b], generated.trim_end(), &old[e + END.len()..]),
            _ => format!("# Benchmarks\n\nMeasured by `bitinglip bench`.\n\n{generated}"),
        };
        if let Some(dir) = doc.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(doc, text)
    }

    /// Draws p50 and p99 submit-to-completion latency against clients, with the floor.
    pub(crate) fn plot(&self, png: &Path) -> anyhow::Result<()> {
        register_a_font()?;
        let root = BitMapBackend::new(png, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut all: Vec<f64> = self.echo.iter().flat_map(|r| [r.done.p50(), r.done.p99()]).collect();
        all.extend(self.floor_rr.iter().map(|(_, s)| s.p50()));
        all.extend(self.floor_js.iter().map(|(_, s)| s.p50()));
        let max = all.iter().cloned().fold(1.0, f64::max) * 2.0;
        let min = all.iter().cloned().filter(|v| *v > 0.0).fold(max, f64::min) / 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption("Submit to completion latency (echo engine) and the NATS floor", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((0.8f64..80.0).log_scale(), (min.max(0.001)..max).log_scale())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("concurrent clients")
            .y_desc("latency, ms (log)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut series: Vec<Line> = Vec::new();
        series.push((
            "core NATS request/reply p50 (floor)".into(),
            self.floor_rr.iter().map(|(c, s)| (*c as f64, s.p50())).collect(),
            BLACK,
        ));
        series.push((
            "JetStream publish + consume p50 (floor of a durable hop)".into(),
            self.floor_js.iter().map(|(c, s)| (*c as f64, s.p50())).collect(),
            GREEN,
        ));
        let colors =
            [(("nats", "p50"), BLUE), (("nats", "p99"), CYAN), (("http", "p50"), RED), (("http", "p99"), MAGENTA)];
        for ((transport, pct), color) in colors {
            let points: Vec<(f64, f64)> = self
                .echo
                .iter()
                .filter(|r| r.transport == transport)
                .map(|r| (r.clients as f64, if pct == "p50" { r.done.p50() } else { r.done.p99() }))
                .collect();
            series.push((format!("platform over {transport}, {pct}"), points, color));
        }
        for (label, points, color) in series {
            line_with_points(&mut chart, label, &points, color)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// Plotters draws text with a font it is given: the first of the usual sans-serif fonts
/// found on this machine.
/// Draws one labelled line through `points`, with a dot at each (the plots' one style).
pub(crate) fn line_with_points<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    label: impl Into<String>,
    points: &[(f64, f64)],
    color: RGBColor,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .draw_series(LineSeries::new(points.to_vec(), color.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

pub(crate) fn register_a_font() -> anyhow::Result<()> {
    const CANDIDATES: [&str; 5] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            // Registered once per process; the font lives as long as the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| anyhow::anyhow!("{path} is not a usable font"));
        }
    }
    Err(anyhow::anyhow!("no TrueType font found (looked for DejaVu Sans, Liberation Sans, Arial)"))
}

//! A run's job graph drawn as an SVG picture, server-side: each job a box coloured by its phase
//! and named, each dependency an arrow from the dependency down to the job that waits for it.
//!
//! This module owns the drawing only: a pure function from the jobs of a run (id, phase, an
//! optional label) and their [`Dag`] to an SVG string. It does not read the store, serve pages or
//! update anything live; a page restyles a job by swapping its `phase-*` class (every job is a
//! `<g class="job phase-Succeeded" id="job-ID" data-job="ID">`).
//!
//! The layered (Sugiyama) layout comes from the `rust-sugiyama` crate: layering, barycenter
//! crossing reduction and Brandes-Köpf coordinates, the pipeline of Graphviz `dot` and dagre
//! (docs/web-ui.md says why this crate). The layers are the graph's [`Dag::levels`]; this module
//! adds the bend vertices of long edges itself so the arrows go around the boxes they pass. The
//! crate lays out each weakly connected component on its own; this module packs the components
//! into rows so a run of many independent jobs does not become one endless line.
//!
//! Every text that reaches the SVG is XML-escaped, names longer than [`MAX_NAME_CHARS`] are cut
//! with the full text in the job's `<title>` (the hover), and node boxes have a fixed size, so a
//! 1,000-job run stays readable: the `viewBox` covers the whole graph and the page scrolls.

use std::fmt::Write as _;

use rust_sugiyama::configure::{Config, CrossingMinimization, RankingType};

use crate::dag::Dag;
use crate::spec::JobId;
use crate::status::JobPhase;

/// One job as the picture shows it, at the same index as in the [`Dag`].
#[derive(Debug, Clone, Copy)]
pub struct DagJob<'a> {
    pub id: &'a JobId,
    pub phase: JobPhase,
    /// Free text shown on hover (a description); may hold anything, it is escaped.
    pub label: Option<&'a str>,
}

/// Why a picture cannot be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagSvgError {
    #[error("the graph has {graph} jobs but {jobs} were given to draw")]
    LengthMismatch { graph: usize, jobs: usize },
}

/// Names longer than this many characters are cut (with `…`) inside their box.
pub const MAX_NAME_CHARS: usize = 22;

const NODE_W: f64 = 170.0;
const NODE_H: f64 = 40.0;
/// Vertical room between layers, for the arrows.
const LAYER_GAP: f64 = 36.0;
/// Horizontal room between boxes of one layer (the layout adds it to every box).
const NODE_SPACING: f64 = 20.0;
/// Width a bend point of a long edge takes in its layer.
const BEND_W: f64 = 8.0;
const MARGIN: f64 = 16.0;
const LEGEND_H: f64 = 28.0;
/// Components are packed left to right until a row is this wide, then a new row starts.
const MAX_ROW_W: f64 = 4000.0;

/// Fill and text colour of a phase: the Okabe-Ito palette (distinguishable with the common colour
/// vision deficiencies), each text colour at a contrast of at least 4.5:1 on its fill. The phase
/// is also written in every box and hover, so colour is never the only cue.
pub fn phase_colours(phase: JobPhase) -> (&'static str, &'static str) {
    match phase {
        JobPhase::Pending => ("#d9d9d9", "#000000"),
        JobPhase::Waiting => ("#f0e442", "#000000"),
        JobPhase::Running => ("#56b4e9", "#000000"),
        JobPhase::Succeeded => ("#009e73", "#000000"),
        JobPhase::Failed => ("#d55e00", "#000000"),
        JobPhase::Skipped => ("#ffffff", "#000000"),
        JobPhase::Cancelled => ("#cc79a7", "#000000"),
        JobPhase::Lost => ("#e69f00", "#000000"),
        JobPhase::Interrupted => ("#0072b2", "#ffffff"),
    }
}

/// Where the layout put a vertex: the centre of its box, relative to the graph area.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Centre {
    x: f64,
    y: f64,
}

/// The laid-out graph: vertices `0..n` are the jobs, the rest are the bend points of edges that
/// span more than one layer.
#[derive(Debug)]
struct Layout {
    centres: Vec<Centre>,
    /// One per edge: (dependency, job, the bend vertices between them, top to bottom).
    routes: Vec<(usize, usize, Vec<usize>)>,
    width: f64,
    height: f64,
}

/// Draws `jobs` (indexed like `dag`) as a standalone SVG document.
pub fn render(jobs: &[DagJob<'_>], dag: &Dag) -> Result<String, DagSvgError> {
    if jobs.len() != dag.len() {
        return Err(DagSvgError::LengthMismatch {
            graph: dag.len(),
            jobs: jobs.len(),
        });
    }
    let layout = layout(dag);
    let width = (layout.width + 2.0 * MARGIN).max(legend_width());
    let height = layout.height + 2.0 * MARGIN + LEGEND_H;

    let mut svg = String::with_capacity(512 + jobs.len() * 640);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="dag" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="job graph, {n} jobs" font-family="ui-monospace, monospace" font-size="12">"#,
        w = px(width),
        h = px(height),
        n = jobs.len(),
    );
    svg.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555555"/></marker></defs>"##);
    push_style(&mut svg);
    push_legend(&mut svg);

    let top = MARGIN + LEGEND_H;
    svg.push_str(r#"<g class="edges">"#);
    for (dep, job, bends) in &layout.routes {
        let points: Vec<Centre> = bends.iter().map(|&b| layout.centres[b]).collect();
        let ends = (layout.centres[*dep], layout.centres[*job]);
        push_edge(&mut svg, (jobs[*dep].id, jobs[*job].id), ends, &points, top);
    }
    svg.push_str("</g>");

    svg.push_str(r#"<g class="jobs">"#);
    for (job, &at) in jobs.iter().zip(&layout.centres) {
        push_job(&mut svg, job, at, top);
    }
    svg.push_str("</g></svg>");
    Ok(svg)
}

/// Lays the graph out in layers. An edge that spans several layers gets one bend vertex in each
/// layer it crosses (Sugiyama's "dummy" vertices, added here rather than inside the crate so that
/// their positions come back and the arrow can follow them around the boxes in between). Layers
/// are [`Dag::levels`], which is also what the crate's `RankingType::Up` computes, so the picture's
/// rows are the run's waves: row k holds the jobs whose longest chain of dependencies is k long.
fn layout(dag: &Dag) -> Layout {
    let n = dag.len();
    let mut sizes: Vec<(f64, f64)> = vec![(NODE_W, NODE_H + LAYER_GAP); n];
    let mut edges: Vec<(u32, u32)> = Vec::new();
    let mut routes = Vec::new();
    // A cyclic graph has no levels; it cannot reach a run (validation rejects it), but draw it
    // anyway with straight edges (the crate reverses a feedback arc set to lay it out).
    let levels = dag.levels();
    for job in 0..n {
        for &dep in dag.deps(job) {
            let span = levels
                .as_ref()
                .map_or(1, |l| l[job].saturating_sub(l[dep]).max(1));
            let mut bends = Vec::with_capacity(span - 1);
            let mut from = dep;
            for _ in 1..span {
                let bend = sizes.len();
                sizes.push((BEND_W, NODE_H + LAYER_GAP));
                edges.push((index_u32(from), index_u32(bend)));
                bends.push(bend);
                from = bend;
            }
            edges.push((index_u32(from), index_u32(job)));
            routes.push((dep, job, bends));
        }
    }
    let vertices: Vec<(u32, (f64, f64))> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| (index_u32(i), size))
        .collect();
    let config = Config {
        minimum_length: 1,
        vertex_spacing: NODE_SPACING,
        // Every edge already spans one layer: the crate has no dummies of its own to add.
        dummy_vertices: false,
        dummy_size: 1.0,
        // Longest-path layering, i.e. `Dag::levels`; network simplex (`MinimizeEdgeLength`) draws
        // shorter edges but took 0.4 s for 1,000 jobs and 2,900 edges against 0.06 s.
        ranking_type: RankingType::Up,
        c_minimization: CrossingMinimization::Barycenter,
        // Transposition sweeps are quadratic per layer (4x the time at 1,000 jobs): barycenter
        // alone keeps big runs fast and small ones already read well.
        transpose: false,
    };
    let mut components: Vec<Vec<(usize, (f64, f64))>> =
        rust_sugiyama::from_vertices_and_edges(&vertices, &edges, &config)
            .into_iter()
            .map(|(coords, _, _)| coords)
            .filter(|coords| !coords.is_empty())
            .collect();
    // The crate returns components in no promised order: draw them in declaration order.
    for coords in &mut components {
        coords.sort_by_key(|&(id, _)| id);
    }
    components.sort_by_key(|coords| coords.first().map(|&(id, _)| id));

    let half_w = |id: usize| sizes.get(id).map_or(0.0, |s| s.0 / 2.0);
    let mut centres = vec![Centre { x: 0.0, y: 0.0 }; sizes.len()];
    let (mut row_x, mut row_y, mut row_h) = (0.0f64, 0.0f64, 0.0f64);
    let (mut width, mut height) = (0.0f64, 0.0f64);
    for coords in &components {
        // Normalise each component to its own top-left corner, then pack it into the current row.
        let left = coords
            .iter()
            .map(|&(id, (x, _))| x - half_w(id))
            .fold(f64::INFINITY, f64::min);
        let right = coords
            .iter()
            .map(|&(id, (x, _))| x + half_w(id))
            .fold(f64::NEG_INFINITY, f64::max);
        let top = coords.iter().map(|c| c.1.1).fold(f64::INFINITY, f64::min) - NODE_H / 2.0;
        let bottom = coords
            .iter()
            .map(|c| c.1.1)
            .fold(f64::NEG_INFINITY, f64::max)
            + NODE_H / 2.0;
        let (comp_w, comp_h) = (right - left, bottom - top);
        if row_x > 0.0 && row_x + comp_w > MAX_ROW_W {
            row_y += row_h + LAYER_GAP;
            row_x = 0.0;
            row_h = 0.0;
        }
        for &(id, (x, y)) in coords {
            if let Some(slot) = centres.get_mut(id) {
                *slot = Centre {
                    x: row_x + x - left,
                    y: row_y + y - top,
                };
            }
        }
        width = width.max(row_x + comp_w);
        height = height.max(row_y + comp_h);
        row_x += comp_w + NODE_SPACING;
        row_h = row_h.max(comp_h);
    }
    Layout {
        centres,
        routes,
        width,
        height,
    }
}

/// Job indices fit in `u32`: a pipeline cannot hold four billion jobs.
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn push_style(svg: &mut String) {
    svg.push_str("<style>");
    svg.push_str(".job rect,.legend-entry rect{stroke:#333333;stroke-width:1}.phase-Skipped rect{stroke-dasharray:4 3}.edge{fill:none;stroke:#555555;stroke-width:1.2}");
    for &phase in JobPhase::ALL {
        let (fill, text) = phase_colours(phase);
        let _ = write!(
            svg,
            ".phase-{phase} rect{{fill:{fill}}}.job.phase-{phase} text{{fill:{text}}}"
        );
    }
    svg.push_str("</style>");
}

/// Swatch size plus the longest phase name, per legend entry.
const LEGEND_ENTRY_W: f64 = 104.0;

fn legend_width() -> f64 {
    2.0 * MARGIN + LEGEND_ENTRY_W * JobPhase::ALL.len() as f64
}

fn push_legend(svg: &mut String) {
    svg.push_str(r#"<g class="legend">"#);
    for (i, &phase) in JobPhase::ALL.iter().enumerate() {
        let (fill, _) = phase_colours(phase);
        let x = MARGIN + LEGEND_ENTRY_W * i as f64;
        let _ = write!(
            svg,
            r##"<g class="legend-entry phase-{phase}"><rect x="{x}" y="{y}" width="14" height="14" rx="2" fill="{fill}"/><text x="{tx}" y="{ty}" fill="#000000">{phase}</text></g>"##,
            x = px(x),
            y = px(MARGIN),
            tx = px(x + 19.0),
            ty = px(MARGIN + 11.0),
        );
    }
    svg.push_str("</g>");
}

/// An arrow from the bottom of the dependency's box to the top of the job's, through the bend
/// points of the layers in between (straight down through each, curved between layers).
fn push_edge(
    svg: &mut String,
    (from, to): (&JobId, &JobId),
    (a, b): (Centre, Centre),
    bends: &[Centre],
    top: f64,
) {
    let _ = write!(
        svg,
        r#"<path class="edge" data-from="{}" data-to="{}" d="M{},{}"#,
        Escaped(from.as_str()),
        Escaped(to.as_str()),
        px(MARGIN + a.x),
        px(top + a.y + NODE_H / 2.0),
    );
    let (mut x, mut y) = (MARGIN + a.x, top + a.y + NODE_H / 2.0);
    for (i, p) in bends.iter().chain(std::iter::once(&b)).enumerate() {
        let (nx, ny) = (MARGIN + p.x, top + p.y - NODE_H / 2.0);
        let mid = (y + ny) / 2.0;
        let _ = write!(
            svg,
            " C{},{} {},{} {},{}",
            px(x),
            px(mid),
            px(nx),
            px(mid),
            px(nx),
            px(ny)
        );
        (x, y) = (nx, ny);
        if i < bends.len() {
            y += NODE_H;
            let _ = write!(svg, " L{},{}", px(x), px(y));
        }
    }
    svg.push_str(r#"" marker-end="url(#arrow)"/>"#);
}

fn push_job(svg: &mut String, job: &DagJob<'_>, at: Centre, top: f64) {
    let id = job.id.as_str();
    let phase = job.phase;
    let (fill, text) = phase_colours(phase);
    let (x, y) = (MARGIN + at.x - NODE_W / 2.0, top + at.y - NODE_H / 2.0);
    let _ = write!(
        svg,
        r#"<g class="job phase-{phase}" id="job-{id}" data-job="{id}"><title>{id} ({phase})"#,
        id = Escaped(id),
    );
    if let Some(label) = job.label {
        let _ = write!(svg, "\n{}", Escaped(label));
    }
    let _ = write!(
        svg,
        r#"</title><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="4" fill="{fill}"/><text x="{tx}" y="{ty1}" fill="{text}" font-weight="bold">{name}</text><text x="{tx}" y="{ty2}" fill="{text}" font-size="10">{phase}</text></g>"#,
        x = px(x),
        y = px(y),
        w = px(NODE_W),
        h = px(NODE_H),
        tx = px(x + 8.0),
        ty1 = px(y + 17.0),
        ty2 = px(y + 32.0),
        name = Escaped(&truncate(id, MAX_NAME_CHARS)),
    );
}

/// `text` cut to at most `max` characters, the last one `…` when something was cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A coordinate with at most one decimal, so the SVG stays small.
fn px(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Writes its text XML-escaped (for element content and double-quoted attributes alike).
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '&' => f.write_str("&amp;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&apos;")?,
                // XML 1.0 forbids most control characters even as references: drop them.
                c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job as read back from the SVG.
    #[derive(Debug)]
    struct Drawn {
        id: String,
        class: String,
        title: String,
        name: String,
        fill: String,
        x: f64,
        y: f64,
        w: f64,
        h: f64,
    }

    fn ids(names: &[&str]) -> Vec<JobId> {
        names
            .iter()
            .map(|n| JobId::parse(n).expect("valid job id"))
            .collect()
    }

    fn draw(
        ids: &[JobId],
        phases: &[JobPhase],
        labels: &[Option<&str>],
        deps: Vec<Vec<usize>>,
    ) -> String {
        let dag = Dag::new(deps).expect("valid graph");
        let jobs: Vec<DagJob<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| DagJob {
                id,
                phase: phases.get(i).copied().unwrap_or(JobPhase::Pending),
                label: labels.get(i).copied().flatten(),
            })
            .collect();
        render(&jobs, &dag).expect("renders")
    }

    fn attr(node: roxmltree::Node<'_, '_>, name: &str) -> f64 {
        node.attribute(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("numeric attribute {name}"))
    }

    /// Parses the SVG (failing on invalid XML) and returns its jobs in document order.
    fn drawn(svg: &str) -> Vec<Drawn> {
        let doc = roxmltree::Document::parse(svg).expect("the SVG is valid XML");
        let jobs = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("jobs"))
            .expect("a jobs group");
        jobs.children()
            .filter(|n| n.is_element())
            .map(|g| {
                let child = |tag: &str| {
                    g.children()
                        .find(|c| c.has_tag_name(tag))
                        .unwrap_or_else(|| panic!("a <{tag}> in each job"))
                };
                let rect = child("rect");
                Drawn {
                    id: g.attribute("data-job").expect("data-job").to_owned(),
                    class: g.attribute("class").expect("class").to_owned(),
                    title: child("title").text().unwrap_or_default().to_owned(),
                    name: child("text").text().unwrap_or_default().to_owned(),
                    fill: rect.attribute("fill").expect("fill").to_owned(),
                    x: attr(rect, "x"),
                    y: attr(rect, "y"),
                    w: attr(rect, "width"),
                    h: attr(rect, "height"),
                }
            })
            .collect()
    }

    /// Edges as (from, to) job ids, parsed from the SVG.
    fn edges(svg: &str) -> Vec<(String, String)> {
        edge_paths(svg)
            .into_iter()
            .map(|(from, to, _)| (from, to))
            .collect()
    }

    /// An edge read back: from, to, and the end point of each segment of its path.
    type DrawnEdge = (String, String, Vec<(f64, f64)>);

    fn edge_paths(svg: &str) -> Vec<DrawnEdge> {
        let doc = roxmltree::Document::parse(svg).expect("valid XML");
        doc.descendants()
            .filter(|n| n.attribute("class") == Some("edge"))
            .map(|n| {
                assert_eq!(n.attribute("marker-end"), Some("url(#arrow)"));
                let d = n.attribute("d").expect("a path");
                // "M x,y C x,y x,y x,y L x,y ...": a segment ends at the last pair of each command.
                let ends = d
                    .split(['M', 'C', 'L'])
                    .filter_map(|cmd| cmd.split_whitespace().last())
                    .map(|pair| {
                        let (x, y) = pair.split_once(',').expect("x,y");
                        (x.parse().expect("x"), y.parse().expect("y"))
                    })
                    .collect();
                (
                    n.attribute("data-from").expect("data-from").to_owned(),
                    n.attribute("data-to").expect("data-to").to_owned(),
                    ends,
                )
            })
            .collect()
    }

    /// Every job drawn once, no two boxes overlap, every edge goes down (dependency above).
    fn assert_well_formed(svg: &str, deps: &[Vec<usize>], names: &[JobId]) {
        let jobs = drawn(svg);
        assert_eq!(jobs.len(), names.len());
        for (job, name) in jobs.iter().zip(names) {
            assert_eq!(job.id, name.as_str());
        }
        // Sort by x so the overlap check stays near-linear for 1,000 jobs.
        let mut by_x: Vec<&Drawn> = jobs.iter().collect();
        by_x.sort_by(|a, b| a.x.total_cmp(&b.x));
        for (i, a) in by_x.iter().enumerate() {
            for b in &by_x[i + 1..] {
                if b.x >= a.x + a.w {
                    break;
                }
                let apart_y = b.y >= a.y + a.h || a.y >= b.y + b.h;
                assert!(apart_y, "boxes of {} and {} overlap", a.id, b.id);
            }
        }
        for (job, list) in deps.iter().enumerate() {
            for &dep in list {
                let (upper, lower) = (&jobs[dep], &jobs[job]);
                assert!(
                    upper.y + upper.h < lower.y,
                    "{} should be drawn above {}",
                    upper.id,
                    lower.id
                );
            }
        }
        let expected: usize = deps.iter().map(Vec::len).sum();
        let paths = edge_paths(svg);
        assert_eq!(paths.len(), expected);
        // A long edge bends beside the boxes of the layers it crosses, never through one.
        for (from, to, ends) in &paths {
            for &(x, y) in &ends[1..ends.len() - 1] {
                let hit = by_x
                    .iter()
                    .take_while(|j| j.x <= x)
                    .find(|j| x < j.x + j.w && j.y <= y && y <= j.y + j.h);
                assert!(hit.is_none(), "edge {from}->{to} runs through {hit:?}");
            }
        }
        // The rows are the run's waves: within a connected part, one row per level of the graph.
        let dag = Dag::new(deps.to_vec()).expect("valid graph");
        let levels = dag.levels().expect("acyclic");
        let part = components(&dag);
        for (i, a) in jobs.iter().enumerate() {
            for (j, b) in jobs.iter().enumerate().skip(i + 1).take(100) {
                if part[i] == part[j] {
                    let (la, lb) = (levels[i], levels[j]);
                    assert_eq!(la.cmp(&lb), a.y.total_cmp(&b.y), "{} vs {}", a.id, b.id);
                }
            }
        }
    }

    /// The weakly connected part each job belongs to (the smallest job index in it).
    fn components(dag: &Dag) -> Vec<usize> {
        let mut part: Vec<usize> = (0..dag.len()).collect();
        fn root(part: &mut [usize], mut i: usize) -> usize {
            while part[i] != i {
                part[i] = part[part[i]];
                i = part[i];
            }
            i
        }
        for job in 0..dag.len() {
            for &dep in dag.deps(job) {
                let (a, b) = (root(&mut part, job), root(&mut part, dep));
                part[a.max(b)] = a.min(b);
            }
        }
        (0..dag.len()).map(|i| root(&mut part, i)).collect()
    }

    #[test]
    fn a_chain_is_drawn_top_down_with_one_arrow_per_dependency() {
        let names = ids(&["fetch", "build", "test", "ship"]);
        let deps = vec![vec![], vec![0], vec![1], vec![2]];
        let svg = draw(&names, &[], &[], deps.clone());
        assert_well_formed(&svg, &deps, &names);
        let e = edges(&svg);
        assert!(e.contains(&("fetch".to_owned(), "build".to_owned())));
        assert!(e.contains(&("test".to_owned(), "ship".to_owned())));
        let jobs = drawn(&svg);
        // A chain is one column.
        assert!(jobs.windows(2).all(|w| (w[0].x - w[1].x).abs() < 1.0));
    }

    #[test]
    fn an_edge_over_several_layers_goes_around_the_jobs_in_between() {
        // lint -> package skips the two layers of test and verify.
        let names = ids(&["checkout", "lint", "build", "test", "verify", "package"]);
        let deps = vec![vec![], vec![0], vec![0], vec![2], vec![3], vec![4, 1]];
        let svg = draw(&names, &[], &[], deps.clone());
        assert_well_formed(&svg, &deps, &names);
        let paths = edge_paths(&svg);
        let long = paths
            .iter()
            .find(|(from, to, _)| from == "lint" && to == "package")
            .expect("the long edge");
        // Two layers crossed: a curve and a straight stretch through each, then the last curve.
        assert_eq!(long.2.len(), 1 + 2 * 2 + 1);
    }

    #[test]
    fn a_diamond_puts_the_two_branches_side_by_side() {
        let names = ids(&["a", "left", "right", "z"]);
        let deps = vec![vec![], vec![0], vec![0], vec![1, 2]];
        let svg = draw(&names, &[], &[], deps.clone());
        assert_well_formed(&svg, &deps, &names);
        let jobs = drawn(&svg);
        assert!(
            (jobs[1].y - jobs[2].y).abs() < 1.0,
            "branches share a layer"
        );
        assert!(jobs[0].y < jobs[1].y && jobs[1].y < jobs[3].y);
    }

    #[test]
    fn a_wide_fan_out_keeps_every_child_in_one_layer_without_overlap() {
        let mut list = vec!["root".to_owned()];
        list.extend((0..60).map(|i| format!("child-{i}")));
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let names = ids(&refs);
        let mut deps = vec![vec![]];
        deps.extend((0..60).map(|_| vec![0]));
        let svg = draw(&names, &[], &[], deps.clone());
        assert_well_formed(&svg, &deps, &names);
        let jobs = drawn(&svg);
        assert!(jobs[1..].iter().all(|j| (j.y - jobs[1].y).abs() < 1.0));
    }

    #[test]
    fn a_thousand_job_layered_graph_is_complete_and_untangled() {
        // 20 layers of 50; each job depends on one or two jobs of the layer above.
        let (layers, width) = (20, 50);
        let list: Vec<String> = (0..layers * width).map(|i| format!("job-{i}")).collect();
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let names = ids(&refs);
        let deps: Vec<Vec<usize>> = (0..layers * width)
            .map(|i| {
                let (layer, col) = (i / width, i % width);
                if layer == 0 {
                    return vec![];
                }
                let above = (layer - 1) * width;
                let mut d = vec![above + col];
                if col % 3 == 0 {
                    d.push(above + (col * 7 + 3) % width);
                }
                // Long edges, skipping layers.
                if col % 5 == 0 && layer >= 3 {
                    d.push((layer - 3) * width + (col * 11 + 1) % width);
                }
                d.dedup();
                d
            })
            .collect();
        let phases: Vec<JobPhase> = (0..layers * width)
            .map(|i| JobPhase::ALL[i % JobPhase::ALL.len()])
            .collect();
        let svg = draw(&names, &phases, &[], deps.clone());
        assert_well_formed(&svg, &deps, &names);
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let root = doc.root_element();
        assert!(root.attribute("viewBox").is_some());
    }

    #[test]
    fn independent_jobs_wrap_into_rows() {
        let list: Vec<String> = (0..200).map(|i| format!("solo-{i}")).collect();
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let names = ids(&refs);
        let deps = vec![vec![]; 200];
        let svg = draw(&names, &[], &[], deps.clone());
        assert_well_formed(&svg, &deps, &names);
        let right = drawn(&svg).iter().map(|j| j.x + j.w).fold(0.0, f64::max);
        assert!(right <= MARGIN + MAX_ROW_W, "rows wrap at {MAX_ROW_W}px");
    }

    #[test]
    fn every_text_is_escaped_and_long_names_are_cut_with_the_full_name_on_hover() {
        let long = "a-very-long-job-name-that-goes-on-and-on";
        let names = ids(&["x", long]);
        let hostile = r#"<script>alert("x&y")</script>'"#;
        let svg = draw(&names, &[], &[Some(hostile), None], vec![vec![], vec![0]]);
        assert!(!svg.contains("<script"), "raw markup leaked: {svg}");
        let jobs = drawn(&svg);
        assert!(
            jobs[0].title.contains(hostile),
            "the label reads back as text"
        );
        assert_eq!(jobs[1].name.chars().count(), MAX_NAME_CHARS);
        assert!(jobs[1].name.ends_with('…'));
        assert!(jobs[1].title.starts_with(long));
        assert_eq!(
            Escaped("a<b>&\"'\u{1}").to_string(),
            "a&lt;b&gt;&amp;&quot;&apos;"
        );
    }

    #[test]
    fn each_job_is_coloured_and_classed_by_its_phase_and_the_legend_lists_every_phase() {
        let list: Vec<String> = JobPhase::ALL.iter().map(|p| format!("j-{p}")).collect();
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let names = ids(&refs);
        let svg = draw(
            &names,
            JobPhase::ALL,
            &[],
            vec![vec![]; JobPhase::ALL.len()],
        );
        for (job, &phase) in drawn(&svg).iter().zip(JobPhase::ALL) {
            assert_eq!(job.class, format!("job phase-{phase}"));
            assert_eq!(job.fill, phase_colours(phase).0);
            assert!(job.title.contains(phase.as_str()));
            assert!(svg.contains(&format!("id=\"job-j-{phase}\"")));
        }
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let legend = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("legend"))
            .expect("a legend");
        let entries: Vec<&str> = legend
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        let all: Vec<&str> = JobPhase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(entries, all);
        // Colours are distinct, so no two phases look alike.
        let mut fills: Vec<&str> = JobPhase::ALL.iter().map(|&p| phase_colours(p).0).collect();
        fills.sort_unstable();
        fills.dedup();
        assert_eq!(fills.len(), JobPhase::ALL.len());
    }

    #[test]
    fn an_empty_run_and_a_mismatch_are_handled() {
        let svg = draw(&[], &[], &[], vec![]);
        assert!(drawn(&svg).is_empty());
        let dag = Dag::new(vec![vec![]]).expect("valid");
        assert_eq!(
            render(&[], &dag),
            Err(DagSvgError::LengthMismatch { graph: 1, jobs: 0 })
        );
    }
}

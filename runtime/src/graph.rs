//! The stage DAG of a pipeline as declared (sweeps as single nodes), and its renderings for
//! `lortflow graph`: text, Graphviz dot and Mermaid.

use std::fmt::Write;

use lortflow_lang::StageKind;
use lortflow_lang::ir::{Pipeline, StageSpec};
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};

/// The declared stages and the edges between them; an edge points from an input to the stage
/// that reads it.
#[derive(Debug)]
pub struct StageGraph<'p> {
    pipeline: &'p Pipeline,
    graph: StableDiGraph<usize, &'static str>,
    nodes: Vec<NodeIndex>,
}

impl<'p> StageGraph<'p> {
    /// Builds the graph of a checked pipeline. References that do not resolve are skipped;
    /// lint reports them.
    pub fn build(pipeline: &'p Pipeline) -> Self {
        let mut graph = StableDiGraph::new();
        let nodes: Vec<NodeIndex> = (0..pipeline.stages.len())
            .map(|i| graph.add_node(i))
            .collect();
        let index = pipeline.index_by_name();
        for (i, stage) in pipeline.stages.iter().enumerate() {
            for (role, name) in pipeline.reads(stage) {
                if let Some(&j) = index.get(name) {
                    graph.add_edge(nodes[j], nodes[i], role);
                }
            }
        }
        StageGraph {
            pipeline,
            graph,
            nodes,
        }
    }

    /// Stage indices in an order where every stage comes after its inputs (declaration order
    /// among independent stages). `None` when the graph has a cycle.
    pub fn topological_order(&self) -> Option<Vec<usize>> {
        self.pipeline.topological_order()
    }

    /// The stages a stage reads, as (stage index, role).
    pub fn inputs(&self, stage: usize) -> Vec<(usize, &'static str)> {
        let mut inputs: Vec<(usize, &'static str)> = self
            .graph
            .edges_directed(self.nodes[stage], Direction::Incoming)
            .map(|e| {
                use petgraph::visit::EdgeRef;
                (self.graph[e.source()], *e.weight())
            })
            .collect();
        inputs.sort_unstable();
        inputs
    }

    fn label(&self, i: usize) -> String {
        let stage = &self.pipeline.stages[i];
        match &stage.spec {
            StageSpec::Sweep(sweep) => {
                let size: usize = sweep.vary.iter().map(|v| v.values.len()).product();
                let params: Vec<&str> = sweep.vary.iter().map(|v| v.param.value.as_str()).collect();
                format!(
                    "{} [{} variants over {}]",
                    stage.name.value,
                    size,
                    params.join(" × ")
                )
            }
            _ => stage.name.value.clone(),
        }
    }

    /// Plain text, one stage per line with its inputs.
    pub fn to_text(&self) -> String {
        let order = self
            .topological_order()
            .unwrap_or_else(|| (0..self.nodes.len()).collect());
        let labels: Vec<String> = order.iter().map(|&i| self.label(i)).collect();
        let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (&i, label) in order.iter().zip(&labels) {
            let stage = &self.pipeline.stages[i];
            let inputs: Vec<&str> = self
                .inputs(i)
                .iter()
                .map(|&(j, _)| self.pipeline.stages[j].name.value.as_str())
                .collect();
            let _ = write!(out, "{:<9} {label:<width$}", stage.kind.as_str());
            if !inputs.is_empty() {
                let _ = write!(out, "  ← {}", inputs.join(", "));
            }
            out = out.trim_end().to_string();
            out.push('\n');
        }
        out
    }

    /// Graphviz dot.
    pub fn to_dot(&self) -> String {
        let mut out =
            String::from("digraph pipeline {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
        for (i, stage) in self.pipeline.stages.iter().enumerate() {
            let shape = match stage.kind {
                StageKind::Dataset => "cylinder",
                StageKind::Backbone => "box3d",
                StageKind::Features => "folder",
                StageKind::Head => "box",
                StageKind::Sweep => "box, style=dashed",
                StageKind::Evaluate => "note",
            };
            let _ = writeln!(
                out,
                "  s{i} [label=\"{}\\n{}\", shape={shape}];",
                stage.kind,
                escape(&self.label(i))
            );
        }
        for i in 0..self.nodes.len() {
            for (j, role) in self.inputs(i) {
                let _ = writeln!(out, "  s{j} -> s{i} [label=\"{role}\"];");
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (i, stage) in self.pipeline.stages.iter().enumerate() {
            let label = format!("{}: {}", stage.kind, self.label(i)).replace('"', "'");
            let (open, close) = match stage.kind {
                StageKind::Dataset => ("[(", ")]"),
                StageKind::Features => ("[/", "/]"),
                StageKind::Sweep => ("{{", "}}"),
                StageKind::Evaluate => ("([", "])"),
                _ => ("[", "]"),
            };
            let _ = writeln!(out, "  s{i}{open}\"{label}\"{close}");
        }
        for i in 0..self.nodes.len() {
            for (j, _) in self.inputs(i) {
                let _ = writeln!(out, "  s{j} --> s{i}");
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

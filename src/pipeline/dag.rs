//! The stage graph: edges from `needs`, cycle reporting with the full cycle
//! path, a deterministic topological order, and text/mermaid/dot renderings.
use std::collections::HashMap;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

/// Stage names as nodes, `upstream -> downstream` edges.
#[derive(Debug, Clone)]
pub struct StageGraph {
    pub graph: DiGraph<String, ()>,
    index: HashMap<String, NodeIndex>,
}

impl StageGraph {
    /// `stages` in declaration order with their `needs`; unknown needs must
    /// have been rejected before.
    pub fn new(stages: &[(String, Vec<String>)]) -> StageGraph {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for (name, _) in stages {
            index.insert(name.clone(), graph.add_node(name.clone()));
        }
        for (name, needs) in stages {
            for need in needs {
                if let (Some(&from), Some(&to)) = (index.get(need), index.get(name)) {
                    graph.update_edge(from, to, ());
                }
            }
        }
        StageGraph { graph, index }
    }

    /// Every cycle's path, like `["load", "train", "load"]`, one per
    /// strongly connected component.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut sccs = tarjan_scc(&self.graph);
        sccs.sort_by_key(|c| c.iter().map(|n| n.index()).min());
        for scc in sccs {
            let start = *scc
                .iter()
                .min_by_key(|n| n.index())
                .expect("scc is non-empty");
            let self_loop = self.graph.contains_edge(start, start);
            if scc.len() == 1 && !self_loop {
                continue;
            }
            out.push(self.cycle_through(start, &scc));
        }
        out
    }

    /// A simple cycle from `start` back to itself inside one component.
    fn cycle_through(&self, start: NodeIndex, scc: &[NodeIndex]) -> Vec<String> {
        let mut path = vec![start];
        let mut visited = vec![start];
        if self.dfs_back(start, start, scc, &mut path, &mut visited) {
            path.iter().map(|n| self.graph[*n].clone()).collect()
        } else {
            vec![self.graph[start].clone(), self.graph[start].clone()]
        }
    }

    fn dfs_back(
        &self,
        node: NodeIndex,
        start: NodeIndex,
        scc: &[NodeIndex],
        path: &mut Vec<NodeIndex>,
        visited: &mut Vec<NodeIndex>,
    ) -> bool {
        let mut next: Vec<NodeIndex> = self.graph.neighbors(node).collect();
        next.sort();
        for n in next {
            if n == start {
                path.push(n);
                return true;
            }
            if scc.contains(&n) && !visited.contains(&n) {
                visited.push(n);
                path.push(n);
                if self.dfs_back(n, start, scc, path, visited) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }

    /// Kahn's algorithm with ties broken by declaration order, so the order
    /// is stable across runs. None if the graph has a cycle.
    pub fn topological_order(&self) -> Option<Vec<String>> {
        let mut indegree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|n| {
                self.graph
                    .neighbors_directed(n, Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: Vec<NodeIndex> = self
            .graph
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .collect();
        let mut order = Vec::new();
        while !ready.is_empty() {
            ready.sort_by(|a, b| b.cmp(a));
            let n = ready.pop().expect("non-empty");
            order.push(self.graph[n].clone());
            for m in self.graph.neighbors(n) {
                indegree[m.index()] -= 1;
                if indegree[m.index()] == 0 {
                    ready.push(m);
                }
            }
        }
        (order.len() == self.graph.node_count()).then_some(order)
    }

    /// Every stage downstream of `name` (not including it).
    pub fn descendants(&self, name: &str) -> Vec<String> {
        let Some(&start) = self.index.get(name) else {
            return Vec::new();
        };
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack = vec![start];
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            for m in self.graph.neighbors(n) {
                if !seen[m.index()] {
                    seen[m.index()] = true;
                    out.push(self.graph[m].clone());
                    stack.push(m);
                }
            }
        }
        out
    }

    fn edges(&self) -> Vec<(String, String)> {
        let mut edges: Vec<(usize, usize)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (a.index(), b.index()))
            .collect();
        edges.sort();
        edges
            .into_iter()
            .map(|(a, b)| {
                (
                    self.graph[NodeIndex::new(a)].clone(),
                    self.graph[NodeIndex::new(b)].clone(),
                )
            })
            .collect()
    }

    /// Graphviz dot source.
    pub fn to_dot(&self, kinds: &HashMap<String, String>) -> String {
        let mut s = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
        for n in self.graph.node_indices() {
            let name = &self.graph[n];
            let kind = kinds.get(name).map(String::as_str).unwrap_or("");
            s.push_str(&format!(
                "  \"{}\" [label=\"{}\\n({})\"];\n",
                dot_escape(name),
                dot_escape(name),
                dot_escape(kind)
            ));
        }
        for (a, b) in self.edges() {
            s.push_str(&format!(
                "  \"{}\" -> \"{}\";\n",
                dot_escape(&a),
                dot_escape(&b)
            ));
        }
        s.push_str("}\n");
        s
    }

    /// Mermaid flowchart source (renders on GitHub and in many docs tools).
    pub fn to_mermaid(&self, kinds: &HashMap<String, String>) -> String {
        let id = |n: NodeIndex| format!("s{}", n.index());
        let mut s = String::from("flowchart LR\n");
        for n in self.graph.node_indices() {
            let name = &self.graph[n];
            let kind = kinds.get(name).map(String::as_str).unwrap_or("");
            s.push_str(&format!(
                "  {}[\"{}<br/>({})\"]\n",
                id(n),
                mermaid_escape(name),
                mermaid_escape(kind)
            ));
        }
        for e in self.graph.edge_indices() {
            if let Some((a, b)) = self.graph.edge_endpoints(e) {
                s.push_str(&format!("  {} --> {}\n", id(a), id(b)));
            }
        }
        s
    }

    /// One line per stage in topological order with what it needs.
    pub fn to_text(&self, order: &[String], kinds: &HashMap<String, String>) -> String {
        let mut s = String::new();
        for name in order {
            let n = self.index[name];
            let mut needs: Vec<&String> = self
                .graph
                .neighbors_directed(n, Direction::Incoming)
                .map(|m| &self.graph[m])
                .collect();
            needs.sort();
            let kind = kinds.get(name).map(String::as_str).unwrap_or("");
            if needs.is_empty() {
                s.push_str(&format!("{name} ({kind})\n"));
            } else {
                let needs: Vec<&str> = needs.iter().map(|s| s.as_str()).collect();
                s.push_str(&format!("{name} ({kind}) <- {}\n", needs.join(", ")));
            }
        }
        s
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(spec: &[(&str, &[&str])]) -> StageGraph {
        let stages: Vec<(String, Vec<String>)> = spec
            .iter()
            .map(|(n, needs)| (n.to_string(), needs.iter().map(|s| s.to_string()).collect()))
            .collect();
        StageGraph::new(&stages)
    }

    #[test]
    fn reports_the_full_cycle_path() {
        let g = graph(&[
            ("load", &["eval"]),
            ("train", &["load"]),
            ("eval", &["train"]),
            ("x", &[]),
        ]);
        assert_eq!(g.cycles(), vec![vec!["load", "train", "eval", "load"]]);
        assert!(g.topological_order().is_none());
        let g = graph(&[("a", &["a"])]);
        assert_eq!(g.cycles(), vec![vec!["a", "a"]]);
    }

    #[test]
    fn order_is_topological_and_stable() {
        let g = graph(&[("d", &["b", "c"]), ("b", &["a"]), ("c", &["a"]), ("a", &[])]);
        assert_eq!(g.topological_order().unwrap(), vec!["a", "b", "c", "d"]);
        assert!(g.cycles().is_empty());
        let mut desc = g.descendants("b");
        desc.sort();
        assert_eq!(desc, vec!["d"]);
    }
}

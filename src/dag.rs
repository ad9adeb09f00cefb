//! The job graph of one pipeline: jobs are indices `0..n` in declaration order, edges are
//! "job depends on dep".
//!
//! This module owns the pure graph questions the rest of the engine asks: is there a cycle (and
//! which one, for the error message), in which order can jobs run, how deep is each job, what lies
//! downstream of a failure, and which jobs became ready when one finished ([`ReadyCounter`]).
//! It knows nothing of job ids, triggers or outcomes; callers map indices to names and decide
//! what "finished" means.
//!
//! Every traversal is iterative, so graphs of 100,000 jobs (or a chain that long) cannot overflow
//! the stack, and every result is deterministic: ties are broken by declaration order.
//!
//! Edge convention used throughout: `x -> y` means "`x` depends on `y`". A cycle is returned as a
//! list in which each element depends on the next one and the last depends on the first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Why a list of dependency lists is not a valid graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("dependency index {dep} of job {job} is out of range")]
    OutOfRange { job: usize, dep: usize },
    #[error("job {0} depends on itself")]
    SelfDependency(usize),
}

/// A directed graph of jobs, possibly cyclic (cycles are detected, not rejected, so validation can
/// name them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dag {
    /// `deps[i]`: the jobs `i` depends on, without duplicates, in the order first declared.
    deps: Vec<Vec<usize>>,
    /// `dependents[i]`: the jobs that depend on `i`, ascending.
    dependents: Vec<Vec<usize>>,
}

/// Depth-first search colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Unvisited,
    OnPath,
    Done,
}

impl Dag {
    /// Builds the graph from `deps[i]` = the indices job `i` depends on. Duplicate edges are
    /// collapsed (the first occurrence keeps its place).
    pub fn new(deps: Vec<Vec<usize>>) -> Result<Dag, DagError> {
        let n = deps.len();
        // `last_seen[d] == job` when the edge job -> d was already kept: O(1) dedup without sorting.
        let mut last_seen = vec![usize::MAX; n];
        let mut dependents = vec![Vec::new(); n];
        let mut kept_deps = Vec::with_capacity(n);
        for (job, list) in deps.into_iter().enumerate() {
            let mut kept = Vec::with_capacity(list.len());
            for dep in list {
                if dep >= n {
                    return Err(DagError::OutOfRange { job, dep });
                }
                if dep == job {
                    return Err(DagError::SelfDependency(job));
                }
                if last_seen[dep] != job {
                    last_seen[dep] = job;
                    kept.push(dep);
                    dependents[dep].push(job);
                }
            }
            kept_deps.push(kept);
        }
        Ok(Dag {
            deps: kept_deps,
            dependents,
        })
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// Whether the graph has no jobs.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// The jobs `i` depends on (empty when `i` is out of range).
    pub fn deps(&self, i: usize) -> &[usize] {
        self.deps.get(i).map_or(&[], Vec::as_slice)
    }

    /// The jobs that depend on `i`, ascending (empty when `i` is out of range).
    pub fn dependents(&self, i: usize) -> &[usize] {
        self.dependents.get(i).map_or(&[], Vec::as_slice)
    }

    /// Finds a dependency cycle, if any.
    ///
    /// The result `[a, c, b]` means `a` depends on `c`, `c` depends on `b` and `b` depends on `a`
    /// (each element depends on the next, the last on the first); [`format_cycle`] prints it as
    /// `a -> c -> b -> a`. The cycle reported is the first one met by a depth-first search that
    /// starts from jobs in declaration order and follows dependencies in their declared order.
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        let n = self.len();
        let mut mark = vec![Mark::Unvisited; n];
        // Position of a job on the current path, valid while its mark is `OnPath`.
        let mut position = vec![0usize; n];
        // (job, index of the next dependency to look at)
        let mut path: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if mark[root] != Mark::Unvisited {
                continue;
            }
            mark[root] = Mark::OnPath;
            position[root] = 0;
            path.push((root, 0));
            while let Some(top) = path.last_mut() {
                let job = top.0;
                let next = self.deps(job).get(top.1).copied();
                top.1 += 1;
                match next {
                    None => {
                        mark[job] = Mark::Done;
                        path.pop();
                    }
                    Some(dep) => match mark[dep] {
                        Mark::Unvisited => {
                            mark[dep] = Mark::OnPath;
                            position[dep] = path.len();
                            path.push((dep, 0));
                        }
                        Mark::OnPath => {
                            let start = position[dep];
                            return Some(path[start..].iter().map(|&(v, _)| v).collect());
                        }
                        Mark::Done => {}
                    },
                }
            }
        }
        None
    }

    /// A topological order (every job after all its dependencies), computed with Kahn's algorithm;
    /// among jobs ready at the same time the lowest index comes first. `None` if the graph is
    /// cyclic.
    pub fn topo_order(&self) -> Option<Vec<usize>> {
        let mut remaining: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> = remaining
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count == 0)
            .map(|(i, _)| Reverse(i))
            .collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(Reverse(job)) = ready.pop() {
            order.push(job);
            for &dependent in self.dependents(job) {
                remaining[dependent] -= 1;
                if remaining[dependent] == 0 {
                    ready.push(Reverse(dependent));
                }
            }
        }
        (order.len() == self.len()).then_some(order)
    }

    /// `level[i]` is 0 for a job without dependencies, else 1 + the highest level of its
    /// dependencies. `None` if the graph is cyclic.
    pub fn levels(&self) -> Option<Vec<usize>> {
        let order = self.topo_order()?;
        let mut level = vec![0usize; self.len()];
        for job in order {
            // Dependencies come earlier in the order, so their levels are final.
            level[job] = self
                .deps(job)
                .iter()
                .map(|&dep| level[dep] + 1)
                .max()
                .unwrap_or(0);
        }
        Some(level)
    }

    /// Marks every job reachable from `roots` by following dependents (what a failure of the
    /// roots can affect). A root is marked only if it is itself downstream of another root.
    /// Out-of-range roots are ignored.
    pub fn downstream(&self, roots: &[usize]) -> Vec<bool> {
        let mut reached = vec![false; self.len()];
        let mut pending: Vec<usize> = Vec::new();
        for &root in roots {
            for &dependent in self.dependents(root) {
                if !reached[dependent] {
                    reached[dependent] = true;
                    pending.push(dependent);
                }
            }
        }
        while let Some(job) = pending.pop() {
            for &dependent in self.dependents(job) {
                if !reached[dependent] {
                    reached[dependent] = true;
                    pending.push(dependent);
                }
            }
        }
        reached
    }
}

/// Prints a cycle from [`Dag::find_cycle`] as `a -> c -> b -> a` (the first job repeated at the
/// end), naming jobs with `name`. An empty cycle prints as an empty string.
pub fn format_cycle(cycle: &[usize], name: impl Fn(usize) -> String) -> String {
    cycle
        .iter()
        .chain(cycle.first())
        .map(|&i| name(i))
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Counts the unfinished dependencies of every job, so the scheduler learns which jobs became
/// ready when one finishes. O(V + E) over a whole run.
///
/// "Finished" is whatever the caller says it is (succeeded, failed, skipped): this type only
/// counts. Finishing a job twice, or an out-of-range index, changes nothing.
#[derive(Debug, Clone)]
pub struct ReadyCounter {
    remaining: Vec<u32>,
    dependents: Vec<Vec<usize>>,
    finished: Vec<bool>,
    roots: Vec<usize>,
}

impl ReadyCounter {
    /// Starts a count where nothing has finished.
    pub fn new(dag: &Dag) -> Self {
        let remaining: Vec<u32> = dag
            .deps
            .iter()
            .map(|deps| u32::try_from(deps.len()).unwrap_or(u32::MAX))
            .collect();
        let roots = remaining
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count == 0)
            .map(|(i, _)| i)
            .collect();
        ReadyCounter {
            remaining,
            dependents: dag.dependents.clone(),
            finished: vec![false; dag.len()],
            roots,
        }
    }

    /// The jobs without dependencies, ascending: ready before anything has finished.
    pub fn initially_ready(&self) -> Vec<usize> {
        self.roots.clone()
    }

    /// Records that job `i` finished and returns the dependents whose last unfinished
    /// dependency it was, ascending.
    pub fn finish(&mut self, i: usize) -> Vec<usize> {
        match self.finished.get_mut(i) {
            Some(done) if !*done => *done = true,
            _ => return Vec::new(),
        }
        let mut ready = Vec::new();
        for &dependent in self.dependents.get(i).map_or(&[][..], Vec::as_slice) {
            let count = &mut self.remaining[dependent];
            *count = count.saturating_sub(1);
            if *count == 0 {
                ready.push(dependent);
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dag(deps: &[&[usize]]) -> Dag {
        Dag::new(deps.iter().map(|d| d.to_vec()).collect()).expect("valid graph")
    }

    fn letters(i: usize) -> String {
        ["a", "b", "c", "d", "e", "f"][i].to_string()
    }

    #[test]
    fn rejects_out_of_range_and_self_dependency() {
        assert_eq!(
            Dag::new(vec![vec![], vec![2]]),
            Err(DagError::OutOfRange { job: 1, dep: 2 })
        );
        assert_eq!(
            Dag::new(vec![vec![], vec![1]]),
            Err(DagError::SelfDependency(1))
        );
        assert_eq!(
            DagError::OutOfRange { job: 1, dep: 2 }.to_string(),
            "dependency index 2 of job 1 is out of range"
        );
        assert_eq!(
            DagError::SelfDependency(3).to_string(),
            "job 3 depends on itself"
        );
    }

    #[test]
    fn collapses_duplicate_edges_and_indexes_dependents() {
        let g = dag(&[&[], &[0, 0], &[1, 0, 1]]);
        assert_eq!(g.len(), 3);
        assert!(!g.is_empty());
        assert_eq!(g.deps(1), &[0]);
        assert_eq!(g.deps(2), &[1, 0]);
        assert_eq!(g.dependents(0), &[1, 2]);
        assert_eq!(g.dependents(1), &[2]);
        assert_eq!(g.dependents(2), &[] as &[usize]);
        assert_eq!(g.deps(9), &[] as &[usize]);
        assert_eq!(g.dependents(9), &[] as &[usize]);
    }

    #[test]
    fn empty_graph() {
        let g = dag(&[]);
        assert!(g.is_empty());
        assert_eq!(g.find_cycle(), None);
        assert_eq!(g.topo_order(), Some(vec![]));
        assert_eq!(g.levels(), Some(vec![]));
        assert_eq!(g.downstream(&[0]), Vec::<bool>::new());
        assert!(ReadyCounter::new(&g).initially_ready().is_empty());
    }

    #[test]
    fn finds_and_formats_a_cycle() {
        // a depends on c, c on b, b on a; d is outside the cycle.
        let g = dag(&[&[2], &[0], &[1], &[0]]);
        let cycle = g.find_cycle().expect("cyclic");
        assert_eq!(cycle, vec![0, 2, 1]);
        assert_eq!(format_cycle(&cycle, letters), "a -> c -> b -> a");
        assert_eq!(g.topo_order(), None);
        assert_eq!(g.levels(), None);
    }

    #[test]
    fn cycle_found_first_in_declaration_order() {
        // Two disjoint cycles: {1, 2} and {3, 4}; job 0 leads into the second one first.
        let g = dag(&[&[4], &[2], &[1], &[4], &[3]]);
        assert_eq!(g.find_cycle(), Some(vec![4, 3]));
        let g = dag(&[&[], &[2], &[1], &[4], &[3]]);
        assert_eq!(g.find_cycle(), Some(vec![1, 2]));
    }

    #[test]
    fn format_cycle_edge_cases() {
        assert_eq!(format_cycle(&[], letters), "");
        assert_eq!(format_cycle(&[3], letters), "d -> d");
    }

    #[test]
    fn topo_order_breaks_ties_by_declaration_order() {
        // 0 depends on 3; 1 and 2 have no deps; 3 depends on 2.
        let g = dag(&[&[3], &[], &[], &[2]]);
        assert_eq!(g.topo_order(), Some(vec![1, 2, 3, 0]));
        assert_eq!(g.levels(), Some(vec![2, 0, 0, 1]));
    }

    #[test]
    fn levels_use_the_longest_path() {
        // 3 depends on 0 directly and through 1 -> 2.
        let g = dag(&[&[], &[0], &[1], &[0, 2]]);
        assert_eq!(g.levels(), Some(vec![0, 1, 2, 3]));
    }

    #[test]
    fn downstream_follows_dependents_only() {
        // 0 <- 1 <- 2, 0 <- 3, 4 alone, 5 depends on 4 and 2.
        let g = dag(&[&[], &[0], &[1], &[0], &[], &[4, 2]]);
        assert_eq!(
            g.downstream(&[1]),
            vec![false, false, true, false, false, true]
        );
        assert_eq!(
            g.downstream(&[0, 2]),
            vec![false, true, true, true, false, true]
        );
        assert_eq!(g.downstream(&[]), vec![false; 6]);
        assert_eq!(g.downstream(&[42]), vec![false; 6]);
    }

    #[test]
    fn ready_counter_releases_dependents_once() {
        // 2 depends on 0 and 1; 3 depends on 0.
        let g = dag(&[&[], &[], &[0, 1], &[0]]);
        let mut ready = ReadyCounter::new(&g);
        assert_eq!(ready.initially_ready(), vec![0, 1]);
        assert_eq!(ready.finish(0), vec![3]);
        assert_eq!(ready.finish(0), Vec::<usize>::new());
        assert_eq!(ready.finish(1), vec![2]);
        assert_eq!(ready.finish(2), Vec::<usize>::new());
        assert_eq!(ready.finish(99), Vec::<usize>::new());
    }

    #[test]
    fn hundred_thousand_chain_does_not_overflow() {
        const N: usize = 100_000;
        let deps: Vec<Vec<usize>> = (0..N)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        let g = Dag::new(deps).expect("valid");
        assert_eq!(g.find_cycle(), None);
        let order = g.topo_order().expect("acyclic");
        assert!(order.iter().copied().eq(0..N));
        let levels = g.levels().expect("acyclic");
        assert_eq!(levels[N - 1], N - 1);
        let down = g.downstream(&[0]);
        assert!(!down[0] && down[1..].iter().all(|&b| b));

        // Reversed chain, closed into one big cycle: job i depends on i + 1, the last on 0.
        let deps: Vec<Vec<usize>> = (0..N).map(|i| vec![(i + 1) % N]).collect();
        let g = Dag::new(deps).expect("valid");
        let cycle = g.find_cycle().expect("cyclic");
        assert_eq!(cycle.len(), N);
        assert_eq!(cycle[0], 0);
        assert_eq!(cycle[N - 1], N - 1);
    }

    /// Reference cycle check: the textbook recursive DFS (fine for the small proptest graphs).
    fn reference_has_cycle(deps: &[Vec<usize>]) -> bool {
        fn visit(v: usize, deps: &[Vec<usize>], state: &mut [u8]) -> bool {
            match state[v] {
                1 => return true,
                2 => return false,
                _ => {}
            }
            state[v] = 1;
            for &d in &deps[v] {
                if visit(d, deps, state) {
                    return true;
                }
            }
            state[v] = 2;
            false
        }
        let mut state = vec![0u8; deps.len()];
        (0..deps.len()).any(|v| visit(v, deps, &mut state))
    }

    /// Reference topological order: repeatedly take the lowest-index job whose deps are all done.
    fn reference_topo(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
        let n = deps.len();
        let mut done = vec![false; n];
        let mut order = Vec::new();
        while order.len() < n {
            let next = (0..n).find(|&v| !done[v] && deps[v].iter().all(|&d| done[d]))?;
            done[next] = true;
            order.push(next);
        }
        Some(order)
    }

    /// Graphs of up to 40 nodes: a random DAG (edges to lower indices), relabelled by a random
    /// permutation, plus 0-2 arbitrary extra edges, so roughly a third of the cases are acyclic.
    fn graphs() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..40)
            .prop_flat_map(|n| {
                (
                    proptest::collection::vec(proptest::collection::vec(0..n, 0..4), n),
                    Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                    proptest::collection::vec((0..n, 0..n), 0..3),
                )
            })
            .prop_map(|(raw, perm, extra)| {
                let n = raw.len();
                let mut deps = vec![Vec::new(); n];
                for (i, list) in raw.into_iter().enumerate() {
                    for d in list {
                        // Keep only edges to lower indices: acyclic before relabelling.
                        if d < i {
                            deps[perm[i]].push(perm[d]);
                        }
                    }
                }
                for (a, b) in extra {
                    if a != b {
                        deps[a].push(b);
                    }
                }
                deps
            })
    }

    proptest! {
        #[test]
        fn cycle_detection_matches_reference(deps in graphs()) {
            let g = Dag::new(deps.clone()).expect("generated graphs are valid");
            let cycle = g.find_cycle();
            prop_assert_eq!(cycle.is_some(), reference_has_cycle(&deps));
            prop_assert_eq!(g.topo_order().is_some(), cycle.is_none());
            prop_assert_eq!(g.levels().is_some(), cycle.is_none());
            if let Some(cycle) = cycle {
                prop_assert!(cycle.len() >= 2);
                for k in 0..cycle.len() {
                    let from = cycle[k];
                    let to = cycle[(k + 1) % cycle.len()];
                    prop_assert!(g.deps(from).contains(&to), "{} -> {} is not an edge", from, to);
                }
                let mut distinct = cycle.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), cycle.len());
            }
        }

        #[test]
        fn acyclic_orders_respect_every_edge(deps in graphs()) {
            let g = Dag::new(deps.clone()).expect("generated graphs are valid");
            let (Some(order), Some(levels)) = (g.topo_order(), g.levels()) else {
                return Ok(());
            };
            prop_assert_eq!(Some(order.clone()), reference_topo(&deps));
            let mut position = vec![usize::MAX; g.len()];
            for (p, &job) in order.iter().enumerate() {
                prop_assert_eq!(position[job], usize::MAX, "job listed twice");
                position[job] = p;
            }
            for job in 0..g.len() {
                for &dep in g.deps(job) {
                    prop_assert!(levels[dep] < levels[job]);
                    prop_assert!(position[dep] < position[job]);
                }
                if g.deps(job).is_empty() {
                    prop_assert_eq!(levels[job], 0);
                } else {
                    prop_assert!(g.deps(job).iter().any(|&d| levels[d] + 1 == levels[job]));
                }
            }
        }

        #[test]
        fn ready_counter_visits_each_node_once(deps in graphs(), pick in any::<u64>()) {
            let g = Dag::new(deps).expect("generated graphs are valid");
            let mut counter = ReadyCounter::new(&g);
            let mut ready = counter.initially_ready();
            let mut visits = vec![0u32; g.len()];
            let mut seed = pick;
            while !ready.is_empty() {
                // Finish ready jobs in a pseudo-random order, like a parallel scheduler would.
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let idx = usize::try_from(seed >> 33).unwrap_or(0) % ready.len();
                let job = ready.swap_remove(idx);
                visits[job] += 1;
                for &dep in g.deps(job) {
                    prop_assert_eq!(visits[dep], 1, "released before its dependency finished");
                }
                let released = counter.finish(job);
                prop_assert!(released.windows(2).all(|w| w[0] < w[1]));
                ready.extend(released);
            }
            prop_assert!(visits.iter().all(|&v| v <= 1));
            if g.find_cycle().is_none() {
                prop_assert!(visits.iter().all(|&v| v == 1));
            } else {
                prop_assert!(visits.contains(&0));
            }
        }

        #[test]
        fn downstream_matches_reachability(deps in graphs(), roots in proptest::collection::vec(0usize..45, 0..4)) {
            let g = Dag::new(deps).expect("generated graphs are valid");
            // Reference: least fixpoint of "some dependency is a root or downstream".
            let mut expected = vec![false; g.len()];
            let mut changed = true;
            while changed {
                changed = false;
                for job in 0..g.len() {
                    if !expected[job] && g.deps(job).iter().any(|&d| roots.contains(&d) || expected[d]) {
                        expected[job] = true;
                        changed = true;
                    }
                }
            }
            prop_assert_eq!(g.downstream(&roots), expected);
        }
    }
}

//! Which of a source's rules can match a line, decided before any regex runs.
//!
//! All prefilter literals of the source's rules go into one Aho-Corasick automaton with
//! leftmost-first semantics (the kind that gets the SIMD "Teddy" packed searcher for small
//! literal sets), so a line without any literal costs one fast scan however many rules the
//! source has. Only when it hits are the rules checked one by one, each with its own
//! precompiled `memmem` finders (which also sees literals that overlap each other, which a
//! non-overlapping automaton search would hide). Rules without a prefilter are candidates for
//! every line.
//!
//! For bulk input ([`Matcher::next_hit`]) the automaton runs over a whole buffer instead of
//! line by line: only the lines around a literal hit are cut out and examined, the rest of
//! the buffer is only counted for newlines.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind};
use memchr::memmem::Finder;

use super::rules::Rule;
use super::window::RuleId;

/// Prefilter for one source's rule list.
#[derive(Debug, Clone)]
pub struct Matcher {
    ac: Option<AhoCorasick>,
    /// Per prefiltered rule: its id and one finder per literal.
    finders: Vec<(RuleId, Vec<Finder<'static>>)>,
    /// Rules without prefilter (always candidates).
    always: Vec<RuleId>,
    /// All rules of this matcher, in order.
    rules: Vec<RuleId>,
}

impl Matcher {
    /// A matcher for `ids`, indices into `rules`.
    pub fn new(rules: &[Rule], ids: &[RuleId]) -> Matcher {
        let mut literals: Vec<&str> = Vec::new();
        let mut finders = Vec::new();
        let mut always = Vec::new();
        for &id in ids {
            let Some(rule) = rules.get(id) else { continue };
            if rule.prefilter.is_empty() {
                always.push(id);
                continue;
            }
            let mut fs = Vec::new();
            for lit in &rule.prefilter {
                if !literals.contains(&lit.as_str()) {
                    literals.push(lit);
                }
                fs.push(Finder::new(lit.as_bytes()).into_owned());
            }
            finders.push((id, fs));
        }
        let ac = if literals.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&literals)
                .ok()
        };
        if ac.is_none() {
            // No automaton (no literals, or too big to build): every rule sees every line.
            always = ids.to_vec();
            finders.clear();
        }
        Matcher {
            ac,
            finders,
            always,
            rules: ids.to_vec(),
        }
    }

    /// A matcher over every rule in `rules`.
    pub fn all(rules: &[Rule]) -> Matcher {
        let ids: Vec<RuleId> = (0..rules.len()).collect();
        Matcher::new(rules, &ids)
    }

    /// True when every rule has a prefilter, so lines without a literal hit can be skipped
    /// unseen (the bulk path).
    pub fn filters_every_line(&self) -> bool {
        self.always.is_empty() && self.ac.is_some()
    }

    /// The candidate rules for `line`, in rule order, into `out` (cleared first).
    pub fn candidates(&self, line: &[u8], out: &mut Vec<RuleId>) {
        out.clear();
        out.extend_from_slice(&self.always);
        if let Some(ac) = &self.ac
            && ac.is_match(line)
        {
            for (id, fs) in &self.finders {
                if fs.iter().any(|f| f.find(line).is_some()) {
                    out.push(*id);
                }
            }
        }
        // Keep the configured order (first rule first) whatever order literals were found in.
        if out.len() > 1 {
            out.sort_by_key(|id| self.rules.iter().position(|r| r == id));
        }
    }

    /// Like [`candidates`](Self::candidates) for a line known to contain a prefilter literal
    /// (found by [`next_hit`](Self::next_hit)): skips the automaton pass over the line.
    pub fn candidates_after_hit(&self, line: &[u8], out: &mut Vec<RuleId>) {
        out.clear();
        out.extend_from_slice(&self.always);
        if let [(id, _)] = self.finders.as_slice() {
            // One prefiltered rule: the hit was its literal.
            out.push(*id);
            return;
        }
        for (id, fs) in &self.finders {
            if fs.iter().any(|f| f.find(line).is_some()) {
                out.push(*id);
            }
        }
        if out.len() > 1 {
            out.sort_by_key(|id| self.rules.iter().position(|r| r == id));
        }
    }

    /// Offset of the next prefilter literal in `hay` at or after `from`, or `None`.
    pub fn next_hit(&self, hay: &[u8], from: usize) -> Option<usize> {
        let ac = self.ac.as_ref()?;
        ac.find(Input::new(hay).span(from..hay.len()))
            .map(|m| m.start())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::rules::builtins;

    #[test]
    fn candidates_follow_literals() {
        let rules = builtins();
        let m = Matcher::all(&rules);
        assert!(m.filters_every_line());
        let mut out = Vec::new();
        m.candidates(b"2026-12-03 16:13:57 H=[198.51.100.12] rejected connection in \"connect\" ACL: Rate limited: 198.51.100.12", &mut out);
        assert_eq!(out, vec![0]);
        m.candidates(b"nothing to see", &mut out);
        assert!(out.is_empty());
        m.candidates(
            b"Failed password for x from 1.2.3.4 port 2 ssh2 Rate limited: ",
            &mut out,
        );
        let names: Vec<&str> = out.iter().map(|&i| rules[i].name.as_str()).collect();
        assert_eq!(names, ["exim-ratelimit", "sshd"]);
        assert_eq!(m.next_hit(b"abc Invalid user x", 0), Some(4));
        assert_eq!(m.next_hit(b"abc Invalid user x", 5), None);
    }
}

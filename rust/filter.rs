//! Include/exclude filtering with `aws s3 sync` semantics.
//!
//! Patterns are shell globs matched (like Python's `fnmatch`) against the whole relative path:
//! `*` matches any run of characters *including* `/`, `?` one character, `[abc]`, `[a-z]` and
//! `[!abc]` one character of (or not of) a set. Every path starts out included; the rules are
//! applied in order and the last one that matches decides, so `--exclude '*' --include '*.txt'`
//! keeps only the text files.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Char(char),
    Any,
    Star,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    toks: Vec<Tok>,
}

impl Pattern {
    pub fn new(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::Any),
                '[' => match parse_set(&chars, i + 1) {
                    Some((tok, next)) => {
                        toks.push(tok);
                        i = next;
                        continue;
                    }
                    // An unclosed '[' is literal, as in fnmatch.
                    None => toks.push(Tok::Char('[')),
                },
                c => toks.push(Tok::Char(c)),
            }
            i += 1;
        }
        Pattern {
            source: pattern.to_string(),
            toks,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `text` matches. Linear-time backtracking on the last `*`.
    pub fn matches(&self, text: &str) -> bool {
        let t: Vec<char> = text.chars().collect();
        let p = &self.toks;
        let (mut ti, mut pi) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() {
                match &p[pi] {
                    Tok::Star => {
                        star = Some((pi, ti));
                        pi += 1;
                        continue;
                    }
                    tok if tok_matches(tok, t[ti]) => {
                        ti += 1;
                        pi += 1;
                        continue;
                    }
                    _ => {}
                }
            }
            match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|t| *t == Tok::Star)
    }
}

fn tok_matches(tok: &Tok, c: char) -> bool {
    match tok {
        Tok::Char(x) => *x == c,
        Tok::Any => true,
        Tok::Star => true,
        Tok::Set { negated, ranges } => ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated,
    }
}

/// Parses a set starting after '['; returns the token and the index after ']'.
fn parse_set(chars: &[char], mut i: usize) -> Option<(Tok, usize)> {
    let negated = matches!(chars.get(i), Some('!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        // A ']' right after '[' or '[!' is a literal member, as in fnmatch.
        if c == ']' && !first {
            return Some((Tok::Set { negated, ranges }, i + 1));
        }
        first = false;
        if i + 2 < chars.len() && chars[i + 1] == '-' && chars[i + 2] != ']' {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// One include or exclude rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub include: bool,
    pub pattern: Pattern,
}

/// An ordered list of rules; the last matching rule decides.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    rules: Vec<Rule>,
}

impl Filter {
    pub fn new(rules: Vec<Rule>) -> Self {
        Filter { rules }
    }

    /// `excludes` then `includes`: an include always wins over an exclude, which is what
    /// `aws s3 sync --exclude … --include …` does when excludes come first.
    pub fn from_lists(include: &[String], exclude: &[String]) -> Self {
        let mut rules: Vec<Rule> = exclude
            .iter()
            .map(|p| Rule {
                include: false,
                pattern: Pattern::new(p),
            })
            .collect();
        rules.extend(include.iter().map(|p| Rule {
            include: true,
            pattern: Pattern::new(p),
        }));
        Filter { rules }
    }

    /// Rules given as `("include" | "exclude", pattern)` pairs, in order.
    pub fn from_pairs(pairs: &[(String, String)]) -> crate::error::Result<Self> {
        let rules = pairs
            .iter()
            .map(|(kind, pattern)| {
                let include = match kind.as_str() {
                    "include" => true,
                    "exclude" => false,
                    other => {
                        return Err(crate::error::Error::InvalidValue(format!(
                            "filter kind must be 'include' or 'exclude', not {other:?}"
                        )))
                    }
                };
                Ok(Rule {
                    include,
                    pattern: Pattern::new(pattern),
                })
            })
            .collect::<crate::error::Result<Vec<_>>>()?;
        Ok(Filter { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn is_included(&self, path: &str) -> bool {
        let mut included = true;
        for r in &self.rules {
            if r.include != included && r.pattern.matches(path) {
                included = r.include;
            }
        }
        included
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::new(p).matches(t)
    }

    #[test]
    fn fnmatch_semantics() {
        assert!(m("*", "a/b/c.txt"));
        assert!(m("*.txt", "dir/sub/x.txt"));
        assert!(!m("*.txt", "x.txt.gz"));
        assert!(m("dir/*", "dir/a/b"));
        assert!(m("?.bin", "a.bin"));
        assert!(!m("?.bin", "ab.bin"));
        assert!(m("[ab]*", "b-file"));
        assert!(!m("[!ab]*", "b-file"));
        assert!(m("[a-c]x", "bx"));
        assert!(m("[]]", "]"));
        assert!(m("a[", "a["));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("**x", "abx"));
        assert!(m("é*", "été"));
    }

    #[test]
    fn last_matching_rule_wins() {
        let f = Filter::new(vec![
            Rule {
                include: false,
                pattern: Pattern::new("*"),
            },
            Rule {
                include: true,
                pattern: Pattern::new("*.txt"),
            },
            Rule {
                include: false,
                pattern: Pattern::new("secret/*"),
            },
        ]);
        assert!(f.is_included("a/b.txt"));
        assert!(!f.is_included("a/b.bin"));
        assert!(!f.is_included("secret/x.txt"));
        assert!(Filter::default().is_included("anything"));
        let pairs = [
            ("exclude".to_string(), "*".to_string()),
            ("include".into(), "*.txt".into()),
        ];
        let f = Filter::from_pairs(&pairs).unwrap();
        assert!(f.is_included("x.txt") && !f.is_included("x.bin"));
        assert!(Filter::from_pairs(&[("keep".into(), "*".into())]).is_err());
    }
}

//! What the README and `docs/` show works: every command of ours in their shell blocks
//! parses for the tool that runs it, and the README's verified fleet run passes against a
//! real Mosquitto. Pages added to `docs/` later are read too: the test lists the directory.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use test_support::{shell_words, workspace_bin, workspace_root, Mosquitto, TempDir, TlsFiles};

/// The workspace's tools: a command that starts with one of these is checked.
const TOOLS: &[&str] = &[
    "loadgen",
    "frontend1-pub",
    "frontend2-pub",
    "backend-sub",
    "job-pub",
];

/// A command of ours as a document shows it.
#[derive(Debug, Clone)]
struct DocCommand {
    file: String,
    line: usize,
    /// The heading of the section it stands in.
    section: String,
    /// `VAR=value` assignments before the program.
    env: Vec<(String, String)>,
    /// The program (one of [`TOOLS`]) and its arguments, placeholders given sample values.
    argv: Vec<String>,
}

impl DocCommand {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// README.md and every `docs/*.md`, as (name relative to the workspace, text).
fn documents() -> Vec<(String, String)> {
    let root = workspace_root();
    let mut paths = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is there")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    paths.extend(pages);
    paths
        .into_iter()
        .map(|p| {
            let name = p
                .strip_prefix(&root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, text)
        })
        .collect()
}

/// The logical lines of a document's shell: ```sh, ```bash, ```shell and ```console blocks,
/// and the `run:` steps of ```yaml blocks (GitHub Actions): (line number, section heading,
/// text), a line continued by a trailing `\` joined with the next. In a console block only
/// the lines after a `$ ` prompt are commands.
fn shell_lines(text: &str) -> Vec<(usize, String, String)> {
    let mut out: Vec<(usize, String, String)> = Vec::new();
    let mut section = String::new();
    // Inside a fenced block: its fence and its kind.
    let mut fence: Option<(String, Block)> = None;
    let mut continued = false;
    // In a YAML block: the indentation of the `run: |` key whose body the lines are.
    let mut yaml_run: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim_start();
        let indent = raw.len() - t.len();
        if let Some((f, kind)) = &fence {
            if t.trim_end() == f {
                fence = None;
                continued = false;
                yaml_run = None;
                continue;
            }
            let command = match kind {
                Block::Other => continue,
                Block::Shell => Some(raw),
                Block::Console if continued => Some(raw),
                Block::Console => t.strip_prefix("$ "),
                Block::Yaml => {
                    if yaml_run.is_some_and(|key| indent <= key && !t.is_empty()) {
                        yaml_run = None;
                        continued = false;
                    }
                    if yaml_run.is_some() {
                        Some(raw)
                    } else {
                        let key = t.trim_start_matches("- ");
                        match key.strip_prefix("run:").map(str::trim) {
                            Some("|" | "|-" | ">" | ">-") => {
                                yaml_run = Some(indent + (t.len() - key.len()));
                                None
                            }
                            Some(line) if !line.is_empty() => Some(line),
                            _ => None,
                        }
                    }
                }
            };
            let Some(command) = command else { continue };
            if continued {
                if let Some(last) = out.last_mut() {
                    last.2.push('\n');
                    last.2.push_str(command);
                }
            } else {
                out.push((i + 1, section.clone(), command.to_string()));
            }
            let end = command.trim_end();
            continued = (end.ends_with('\\') && !end.ends_with("\\\\"))
                || out.last().is_some_and(|l| in_quotes(&l.2));
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            let mark = if t.starts_with('`') { '`' } else { '~' };
            let ticks: String = t.chars().take_while(|c| *c == mark).collect();
            let lang = t[ticks.len()..].trim().to_ascii_lowercase();
            let lang = lang.split([' ', ',', '{']).next().unwrap_or("");
            // Every fence is tracked, so that a `#` inside another block is no heading.
            let kind = match lang {
                "sh" | "bash" | "shell" => Block::Shell,
                "console" => Block::Console,
                "yaml" | "yml" => Block::Yaml,
                _ => Block::Other,
            };
            fence = Some((ticks, kind));
            continued = false;
            continue;
        }
        if let Some(h) = t.strip_prefix('#') {
            section = h.trim_start_matches('#').trim().to_string();
        }
    }
    out
}

/// Whether a shell text ends inside quotes (a quoted value that runs onto the next line).
/// A comment runs to the end of its line, apostrophes and all.
fn in_quotes(text: &str) -> bool {
    let (mut single, mut double, mut escaped, mut comment) = (false, false, false, false);
    let mut word_start = true;
    for c in text.chars() {
        match c {
            '\n' if comment => comment = false,
            _ if comment => {}
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && word_start => comment = true,
            _ => {}
        }
        word_start = c.is_whitespace() && !single && !double;
    }
    single || double
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Shell,
    Console,
    Yaml,
    Other,
}

/// The sample value of a placeholder a command uses, or `None` when the test does not know it.
fn sample_value(name: &str) -> Option<String> {
    Some(match name {
        // A start instant two minutes ahead, as `date -u -d '+2 min' ...` gives.
        "START_AT" | "LOADGEN_START_AT" | "at" | "AT" => start_instant(),
        "i" | "I" | "SHARD" | "shard" | "JOB_COMPLETION_INDEX" => "0".into(),
        "BROKER" => "mqtt://127.0.0.1:1883".into(),
        "DATABASE_URL" => "postgres://app@127.0.0.1:5432/jobs".into(),
        "PGPASSWORD" | "PASSWORD" => "secret".into(),
        "PWD" => workspace_root().display().to_string(),
        _ => return None,
    })
}

fn start_instant() -> String {
    let ahead = std::time::SystemTime::now() + Duration::from_secs(120);
    let secs = ahead
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    secs.to_string()
}

/// Replaces `$(...)`, `$VAR` and `${VAR}` outside single quotes by sample values: a command
/// substitution that runs `date` is a start instant; anything else unknown is an error
/// that says where to give it a value.
fn substitute(line: &str) -> Result<String, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut single = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            single = !single;
        }
        if c != '$' || single {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('(') => {
                let mut depth = 0;
                let mut j = i + 1;
                while j < chars.len() {
                    match chars[j] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                let inner: String = chars[i + 2..j.min(chars.len())].iter().collect();
                if inner.trim_start().starts_with("date") {
                    out.push_str(&start_instant());
                } else {
                    return Err(format!(
                        "no sample value for $({inner}); give it one in tests/it/docs.rs"
                    ));
                }
                i = j + 1;
            }
            Some('{') => {
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == '}')
                    .map(|p| i + p)
                    .ok_or_else(|| "unclosed ${".to_string())?;
                let name: String = chars[i + 2..end].iter().collect();
                out.push_str(&sample_value(&name).ok_or_else(|| {
                    format!("no sample value for ${{{name}}}; give it one in tests/it/docs.rs")
                })?);
                i = end + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                out.push_str(&sample_value(&name).ok_or_else(|| {
                    format!("no sample value for ${name}; give it one in tests/it/docs.rs")
                })?);
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Cuts a shell line into its simple commands: at unquoted `;`, `&`, `&&`, `|`, `||`, with
/// comments and redirections (`> file`, `2>&1`, `< file`) left out.
fn simple_commands(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at_word_start = cur.is_empty() || cur.ends_with([' ', '\t', '\n']);
        match c {
            '\\' if !single => {
                cur.push(c);
                if let Some(n) = chars.get(i + 1) {
                    cur.push(*n);
                }
                i += 2;
                continue;
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && at_word_start => {
                // A comment runs to the end of its physical line.
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            ';' | '&' | '|' if !single && !double => {
                out.push(std::mem::take(&mut cur));
                while i < chars.len() && matches!(chars[i], ';' | '&' | '|') {
                    i += 1;
                }
                continue;
            }
            '>' | '<' if !single && !double => {
                // A file descriptor number right before it belongs to the redirection.
                let trimmed = cur.trim_end_matches(|c: char| c.is_ascii_digit());
                if trimmed.is_empty() || trimmed.ends_with([' ', '\t', '\n']) {
                    cur.truncate(trimmed.len());
                }
                while i < chars.len() && matches!(chars[i], '>' | '<' | '&') {
                    i += 1;
                }
                while i < chars.len() && chars[i] == ' ' {
                    i += 1;
                }
                // The target word, quotes and all.
                let (mut s, mut d) = (false, false);
                while i < chars.len() {
                    match chars[i] {
                        '\'' if !d => s = !s,
                        '"' if !s => d = !d,
                        ' ' | '\t' | '\n' | ';' | '&' | '|' if !s && !d => break,
                        _ => {}
                    }
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The workspace's tool a command runs, directly or through `cargo run ... --bin X --`,
/// with its arguments: `None` for anyone else's command.
fn our_argv(words: &[String]) -> Option<Vec<String>> {
    let first = words.first()?;
    if first == "cargo" && words.get(1).is_some_and(|w| w == "run") {
        let bin = words
            .iter()
            .position(|w| w == "--bin")
            .and_then(|p| words.get(p + 1))?;
        let bin = bin.rsplit('/').next().unwrap_or(bin);
        if !TOOLS.contains(&bin) {
            return None;
        }
        let rest = match words.iter().position(|w| w == "--") {
            Some(p) => &words[p + 1..],
            None => &[][..],
        };
        return Some(
            std::iter::once(bin.to_string())
                .chain(rest.iter().cloned())
                .collect(),
        );
    }
    let program = first.rsplit('/').next().unwrap_or(first);
    TOOLS
        .contains(&program)
        .then(|| words.to_vec())
        .map(|mut w| {
            w[0] = program.to_string();
            w
        })
}

/// Every command of ours in the documents, or the places where one could not be read.
fn doc_commands() -> (Vec<DocCommand>, Vec<String>) {
    let mut commands = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in documents() {
        // What `export VAR=value` set, for the document's later commands.
        let mut exported: Vec<(String, String)> = Vec::new();
        for (line, section, logical) in shell_lines(&text) {
            for simple in simple_commands(&logical) {
                let at = format!("{file}:{line}");
                let substituted = match substitute(&simple) {
                    Ok(s) => s,
                    Err(e) => {
                        // Only a problem when the command is one of ours.
                        let words = shell_words(&simple).unwrap_or_default();
                        let ours = words
                            .iter()
                            .find(|w| !is_assignment(w) && !is_keyword(w))
                            .is_some_and(|w| {
                                our_argv(std::slice::from_ref(w)).is_some() || w == "cargo"
                            });
                        if ours {
                            problems.push(format!("{at}: {e}\n    {}", simple.trim()));
                        }
                        continue;
                    }
                };
                let words = match shell_words(&substituted) {
                    Ok(w) => w,
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        continue;
                    }
                };
                if words.first().is_some_and(|w| w == "export") {
                    for w in words.iter().skip(1).filter(|w| is_assignment(w)) {
                        let (k, v) = w.split_once('=').unwrap_or((w, ""));
                        exported.retain(|(e, _)| e != k);
                        exported.push((k.to_string(), v.to_string()));
                    }
                    continue;
                }
                let mut env = exported.clone();
                let mut rest = &words[..];
                while let Some((w, tail)) = rest.split_first() {
                    if is_keyword(w) {
                        rest = tail;
                    } else if is_assignment(w) {
                        let (k, v) = w.split_once('=').unwrap_or((w, ""));
                        env.push((k.to_string(), v.to_string()));
                        rest = tail;
                    } else {
                        break;
                    }
                }
                if let Some(argv) = our_argv(rest) {
                    commands.push(DocCommand {
                        file: file.clone(),
                        line,
                        section: section.clone(),
                        env,
                        argv,
                    });
                }
            }
        }
    }
    (commands, problems)
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit())
    })
}

fn is_keyword(word: &str) -> bool {
    matches!(
        word,
        "do" | "then" | "else" | "time" | "exec" | "!" | "env" | "sudo"
    )
}

/// The files a sample command names that are not in the workspace: a CA, a client
/// certificate and key, as the TLS recipe makes them.
struct SampleFiles {
    dir: TempDir,
    tls: TlsFiles,
}

impl SampleFiles {
    fn new() -> SampleFiles {
        let dir = TempDir::new("docs-samples");
        let tls = TlsFiles::new(&dir);
        std::fs::write(dir.path("password.txt"), "secret\n").expect("sample password file");
        SampleFiles { dir, tls }
    }

    /// An argument that names a file of the workspace or a sample file, made absolute:
    /// `check` reads the files a command names, relative to where it would run.
    fn resolve(&self, arg: &str) -> String {
        let (prefix, value) = match arg.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") => (format!("{flag}="), v),
            _ => (String::new(), arg),
        };
        if value.is_empty() || value.starts_with('-') || value.contains("://") {
            return arg.to_string();
        }
        for base in [workspace_root(), self.dir.0.clone()] {
            let p = base.join(value);
            if Path::new(value).is_relative() && p.is_file() {
                return format!("{prefix}{}", p.display());
            }
        }
        arg.to_string()
    }
}

/// Runs `check` on a command with its `VAR=value` assignments in the environment, as a shell
/// would give them (and nothing else of `LOADGEN_*`).
fn check(cmd: &DocCommand, samples: &SampleFiles) -> Result<(), String> {
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let argv: Vec<OsString> = cmd
        .argv
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                OsString::from(a)
            } else {
                OsString::from(samples.resolve(a))
            }
        })
        .collect();
    // What the tool does at start and `check` does not: read `DATABASE_URL` as
    // `LOADGEN_DATABASE_URL`, `JOB_PUB_<FLAG>` as `LOADGEN_<FLAG>`.
    let mut env = cmd.env.clone();
    for (k, v) in &cmd.env {
        for alias in [mqtt_tool::cli::DATABASE_URL, mqtt_tool::cli::JOB_PUB_NAMES] {
            let to = if alias.from.ends_with('_') {
                k.strip_prefix(alias.from).map(|f| format!("LOADGEN_{f}"))
            } else {
                (k == alias.from).then(|| alias.to.to_string())
            };
            if let Some(to) = to.filter(|to| !cmd.env.iter().any(|(e, _)| e == to)) {
                env.push((to, v.clone()));
            }
        }
    }
    let saved: Vec<(String, Option<OsString>)> = env
        .iter()
        .map(|(k, _)| (k.clone(), std::env::var_os(k)))
        .collect();
    for (k, v) in &env {
        std::env::set_var(k, samples.resolve(v));
    }
    let result = loadgen::check(argv);
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(&k, v),
            None => std::env::remove_var(&k),
        }
    }
    result
}

#[test]
fn every_command_in_the_readme_and_docs_parses_for_the_tool_that_runs_it() {
    let (commands, mut failures) = doc_commands();
    let samples = SampleFiles::new();
    for cmd in &commands {
        if let Err(e) = check(cmd, &samples) {
            failures.push(format!("{}: {}\n    -> {e}", cmd.at(), cmd.argv.join(" ")));
        }
    }
    assert!(
        failures.is_empty(),
        "commands in the documents that do not parse:\n{}",
        failures.join("\n")
    );
    // The quick start, the recipes and the pages: a lost block or a reader that finds
    // nothing would pass empty.
    let in_readme = commands.iter().filter(|c| c.file == "README.md").count();
    assert!(
        in_readme >= 10,
        "only {in_readme} commands found in README.md"
    );
    for tool in ["pub", "sub", "jobs", "merge"] {
        assert!(
            commands
                .iter()
                .any(|c| c.argv[0] == "loadgen" && c.argv.get(1).is_some_and(|a| a == tool)),
            "no loadgen {tool} command in the documents"
        );
    }
}

/// The reader's rules, held to the shapes the documents use.
#[test]
fn the_docs_reader_finds_our_commands_behind_cargo_assignments_and_continuations() {
    let text = "# A\n```sh\nLOADGEN_PASSWORD=... cargo run --release --bin loadgen -- pub \\\n  --rate 10k   # a comment\nmosquitto -c x.conf &\nfor i in 0 1; do loadgen pub --shard $i --start-at \"$(date -u +%s)\" & done; wait\ncat report.md >> \"$GITHUB_STEP_SUMMARY\"\n```\n```console\n$ backend-sub --expect 5 2>&1 | tee out\nverdict: ok\n```\n```toml\nloadgen = 1\n```\n```yaml\n- name: gate\n  run: |\n    loadgen sub --expect 1 \\\n      --quiet\n  env:\n    loadgen: x\n- run: job-pub migrate\n```\n";
    let lines = shell_lines(text);
    assert_eq!(lines.len(), 7, "{lines:?}");
    let mut found = Vec::new();
    for (_, section, logical) in &lines {
        assert_eq!(section, "A");
        for simple in simple_commands(logical) {
            let Ok(s) = substitute(&simple) else { continue };
            let words = shell_words(&s).unwrap();
            let rest: Vec<String> = words
                .into_iter()
                .skip_while(|w| is_keyword(w) || is_assignment(w))
                .collect();
            if let Some(argv) = our_argv(&rest) {
                found.push(argv.join(" "));
            }
        }
    }
    assert_eq!(found.len(), 5, "{found:?}");
    assert_eq!(found[0], "loadgen pub --rate 10k");
    assert!(
        found[1].starts_with("loadgen pub --shard 0 --start-at "),
        "{found:?}"
    );
    assert_eq!(found[2], "backend-sub --expect 5");
    assert_eq!(found[3], "loadgen sub --expect 1 --quiet");
    assert_eq!(found[4], "job-pub migrate");
}

/// A count as the tools write it (`600k`, `1.5M`).
fn parse_count(s: &str) -> Option<f64> {
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.replace(',', "").parse::<f64>().ok().map(|n| n * mult)
}

/// A duration as the tools write it (`60s`, `5m`, `500ms`), in seconds.
fn parse_secs(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    })
}

fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|p| argv.get(p + 1))
        .map(String::as_str)
}

fn set_flag(argv: &mut Vec<String>, flag: &str, value: String) {
    match argv.iter().position(|a| a == flag) {
        Some(p) if p + 1 < argv.len() => argv[p + 1] = value,
        _ => {
            argv.push(flag.to_string());
            argv.push(value);
        }
    }
}

/// The `loadgen sub` and `loadgen pub` of a README section whose heading holds `heading`.
fn readme_pair(heading: &str) -> (Vec<String>, Vec<String>) {
    let (commands, _) = doc_commands();
    let in_section: Vec<&DocCommand> = commands
        .iter()
        .filter(|c| c.file == "README.md" && c.section.to_ascii_lowercase().contains(heading))
        .collect();
    let find = |sub: &str| -> Vec<String> {
        in_section
            .iter()
            .find(|c| c.argv[0] == "loadgen" && c.argv.get(1).is_some_and(|a| a == sub))
            .unwrap_or_else(|| {
                panic!("the README's section \"{heading}\" has no loadgen {sub}: {in_section:?}")
            })
            .argv
            .clone()
    };
    (find("sub"), find("pub"))
}

/// The same run, short: a `--duration` cut to 2 s or a `--total` to 5,000 points, and the
/// subscriber's `--expect` with it; both pointed at `broker`.
fn shortened(
    mut sub: Vec<String>,
    mut publ: Vec<String>,
    broker: &str,
) -> (Vec<String>, Vec<String>) {
    let expect = flag_value(&sub, "--expect")
        .and_then(parse_count)
        .expect("the subscriber has an --expect");
    let scale = if let Some(long) = flag_value(&publ, "--duration").and_then(parse_secs) {
        set_flag(&mut publ, "--duration", "2s".into());
        2.0 / long
    } else if let Some(total) = flag_value(&publ, "--total").and_then(parse_count) {
        let short = total.min(5000.0);
        set_flag(&mut publ, "--total", format!("{short}"));
        short / total
    } else {
        panic!("the publisher has neither --duration nor --total: {publ:?}");
    };
    let scaled = expect * scale;
    assert!(
        scaled.fract() == 0.0 && scaled >= 1.0,
        "--expect {expect} does not scale by {scale}"
    );
    set_flag(&mut sub, "--expect", format!("{scaled}"));
    set_flag(&mut publ, "--broker", broker.to_string());
    set_flag(&mut sub, "--broker", broker.to_string());
    (sub, publ)
}

#[test]
fn the_readmes_verified_fleet_run_passes_against_mosquitto() {
    let (sub, publ) = readme_pair("verified fleet run");
    let broker = Mosquitto::start();
    let (sub, publ) = shortened(sub, publ, &broker.url());
    run_verified(&sub, &publ, None);
}

#[test]
fn the_readmes_tls_recipe_passes_against_a_mosquitto_tls_listener() {
    let (sub, publ) = readme_pair("tls");
    // The recipe's ca.crt is the sample CA, which signed the listener's certificate (for
    // 127.0.0.1, where the test's broker is).
    let samples = SampleFiles::new();
    let port = test_support::free_port();
    let _broker = Mosquitto::start_with(&samples.tls.listener(port, false));
    assert!(test_support::wait_for_listener(
        port,
        Duration::from_secs(5)
    ));
    let (sub, publ) = shortened(sub, publ, &format!("mqtts://127.0.0.1:{port}"));
    run_verified(&sub, &publ, Some(&samples));
}

/// Runs a subscriber, waits until it says it subscribed (what the README tells the reader to
/// wait for), runs the publisher to its end, and holds both to exit 0 and the subscriber's
/// verdict to "every point arrived exactly once". Arguments naming sample files are made
/// absolute.
fn run_verified(sub: &[String], publ: &[String], samples: Option<&SampleFiles>) {
    let resolve = |argv: &[String]| -> Vec<String> {
        argv.iter()
            .map(|a| samples.map_or_else(|| a.clone(), |s| s.resolve(a)))
            .collect()
    };
    let (sub, publ) = (resolve(sub), resolve(publ));
    let mut subscriber = Command::new(workspace_bin("loadgen"))
        .args(&sub[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen sub");
    let (tx, rx) = mpsc::channel();
    let err = subscriber.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("subscribed to") => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = subscriber.kill();
                panic!("loadgen sub never subscribed: {}", seen.join("\n"));
            }
        }
    }

    let out = Command::new(workspace_bin("loadgen"))
        .args(&publ[1..])
        .arg("--quiet")
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen pub");
    let pub_err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() != Some(0) {
        let _ = subscriber.kill();
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{pub_err}",
        publ.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );

    // The subscriber stops once the points expected arrived.
    let pid = subscriber.id();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(subscriber.wait_with_output());
    });
    let out = match done_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.expect("wait loadgen sub"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("loadgen sub did not end within 20 s of the publisher");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr: Vec<String> = rx.try_iter().collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{stdout}\n{}",
        sub.join(" "),
        stderr.join("\n")
    );
    assert!(
        stdout.contains("every point arrived exactly once"),
        "{stdout}"
    );
}

/// A document's lines outside fenced code blocks, as (line number, text): links and
/// headings are read only there (a `#` in a shell block is a comment, a `](x)` in code is
/// code).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim_start();
        if let Some(f) = &fence {
            if t.trim_end() == f {
                fence = None;
            }
            continue;
        }
        if t.starts_with("```") || t.starts_with("~~~") {
            let mark = if t.starts_with('`') { '`' } else { '~' };
            fence = Some(t.chars().take_while(|c| *c == mark).collect());
            continue;
        }
        out.push((i + 1, raw));
    }
    out
}

/// A line without its inline code spans (`` `x` ``), which hold no links.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of a document's inline links `[text](target)` and reference definitions
/// `[name]: target`, as (line number, target).
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, raw) in prose_lines(text) {
        let line = without_code_spans(raw);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
        let t = line.trim_start();
        if let Some((label, target)) = t.strip_prefix('[').and_then(|r| r.split_once("]:")) {
            if !label.is_empty() && !label.contains('[') {
                let target = target.split_whitespace().next().unwrap_or("");
                out.push((n, target.trim_matches(['<', '>']).to_string()));
            }
        }
    }
    out
}

/// The anchor GitHub gives a heading: its text without markup, lower-cased, every
/// character but letters, digits, spaces, `-` and `_` dropped, spaces as `-`.
fn github_slug(heading: &str) -> String {
    // A link in a heading keeps only its text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(at) = rest.find("](") {
        text.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        rest = after.find(')').map_or("", |end| &after[end + 1..]);
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a document's headings, a repeated one numbered as GitHub does
/// (`x`, `x-1`, `x-2`).
fn heading_anchors(text: &str) -> Vec<String> {
    let mut anchors: Vec<String> = Vec::new();
    for (_, raw) in prose_lines(text) {
        let t = raw.trim_start();
        let hashes = t.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || raw.len() - t.len() > 3 {
            continue;
        }
        let Some(heading) = t[hashes..].strip_prefix(' ') else {
            continue;
        };
        let slug = github_slug(heading.trim_end().trim_end_matches('#'));
        let taken = anchors.iter().filter(|a| **a == slug).count();
        let mut anchor = slug.clone();
        let mut k = taken;
        while anchors.contains(&anchor) {
            anchor = format!("{slug}-{k}");
            k += 1;
        }
        anchors.push(anchor);
    }
    anchors
}

/// Why a relative link of `file` (a path from the workspace root) does not resolve, if it
/// does not: a file that is not there, or an anchor no heading of its page has.
fn dangling(root: &Path, file: &str, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let base = Path::new(file).parent().unwrap_or(Path::new(""));
    let joined = if path.is_empty() {
        PathBuf::from(file)
    } else {
        base.join(path)
    };
    // Lexically: `docs/../README.md` is `README.md`, whether or not `docs/` is there.
    let mut name = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::ParentDir => {
                if !name.pop() {
                    return Some(format!("{target}: leaves the repository"));
                }
            }
            std::path::Component::CurDir => {}
            other => name.push(other),
        }
    }
    let full = root.join(&name);
    let shown = name.to_string_lossy().into_owned();
    if !full.exists() {
        return Some(format!("{target}: there is no {shown}"));
    }
    let anchor = anchor?;
    if !shown.ends_with(".md") {
        return None;
    }
    let page = std::fs::read_to_string(&full).ok()?;
    let anchors = heading_anchors(&page);
    if anchors.iter().any(|a| a == anchor) {
        return None;
    }
    Some(format!(
        "{target}: {shown} has no heading with the anchor #{anchor} (it has: {})",
        anchors.join(", ")
    ))
}

#[test]
fn every_relative_link_in_the_readme_and_docs_names_a_file_and_heading_that_exist() {
    let root = workspace_root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (file, text) in documents() {
        for (line, target) in link_targets(&text) {
            let scheme = target
                .split_once(':')
                .is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()));
            if target.is_empty() || scheme || target.starts_with('/') {
                continue;
            }
            checked += 1;
            if let Some(why) = dangling(&root, &file, &target) {
                problems.push(format!("{file}:{line}: {why}"));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} relative links found: the reader misses some"
    );
    assert!(
        problems.is_empty(),
        "{} dangling links:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_link_reader_follows_githubs_anchors_and_skips_code() {
    assert_eq!(
        github_slug("`--until-empty` and its horizon"),
        "--until-empty-and-its-horizon"
    );
    assert_eq!(
        github_slug("Thresholds (`--threshold`)"),
        "thresholds---threshold"
    );
    assert_eq!(
        github_slug("`loadgen jobs` (and `job-pub`)"),
        "loadgen-jobs-and-job-pub"
    );
    assert_eq!(github_slug("See [the page](x.md) now"), "see-the-page-now");
    let page = "# A\n## Limits\n```sh\n# not a heading\nx](nope.md)\n```\n## Limits\n\
                see [b](b.md#limits-1), `[c](code.md)` and [d] \n\n[d]: d.md\n";
    assert_eq!(heading_anchors(page), ["a", "limits", "limits-1"]);
    assert_eq!(
        link_targets(page),
        [(8, "b.md#limits-1".to_string()), (10, "d.md".to_string())]
    );
}

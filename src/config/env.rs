//! `${VAR}` and `${VAR:-default}` interpolation, applied to the file's text before parsing so
//! that numbers and durations can come from the environment too. An unset variable without a
//! default is an error naming it (never its value: values are often secrets).

/// Replace every `${VAR}` / `${VAR:-default}` in `text`, except on comment lines (first
/// non-blank character `#`). Returns the text, or the line and name of every unset variable
/// that has no default.
pub(crate) fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<(usize, String)>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            match lookup(name).or_else(|| default.map(str::to_owned)) {
                Some(value) => out.push_str(&value),
                None => missing.push((n + 1, name.to_owned())),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    type Case<'a> = (&'a str, Result<&'a str, Vec<(usize, &'a str)>>);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            ("plain", Ok("plain")),
            ("a ${SET} b", Ok("a value b")),
            ("${SET}${SET}", Ok("valuevalue")),
            ("${UNSET:-dflt}", Ok("dflt")),
            ("${SET:-dflt}", Ok("value")),
            ("${EMPTY:-dflt}", Ok("")),
            ("${UNSET:-}", Ok("")),
            ("x: ${UNSET:-amqp://h:1/%2f}", Ok("x: amqp://h:1/%2f")),
            ("no close ${SET", Ok("no close ${SET")),
            ("a\n${UNSET}\n${ALSO}", Err(vec![(2, "UNSET"), (3, "ALSO")])),
            (
                "  # ${UNSET} in a comment\nx",
                Ok("  # ${UNSET} in a comment\nx"),
            ),
        ];
        for (input, want) in cases {
            let got = interpolate(input, env);
            let want = want
                .clone()
                .map(str::to_owned)
                .map_err(|v| v.into_iter().map(|(l, n)| (l, n.to_owned())).collect());
            assert_eq!(got, want, "input {input:?}");
        }
    }
}

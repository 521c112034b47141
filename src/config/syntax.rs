//! The pure syntax checks of configured values: durations, octal modes, app names, ARNs,
//! regions, STS session names, endpoint URLs and loopback redirect URIs. Text in, verdict
//! out; no TOML, no positions (the callers in `main_file.rs` / `apps.rs` / `grant.rs` put
//! the message at the value), no I/O.

use std::time::Duration;

/// "90s", "5m", "1h", "1h30m", "250ms", "2d" -> Duration.
///
/// One or more `<digits><unit>` parts, unit one of `ms`, `s`, `m`, `h`, `d`; no spaces,
/// no sign, no fractions. A bare number is refused: "300" could mean seconds or
/// milliseconds, and guessing wrong is a silent 1000x error.
///
/// # Errors
/// A message saying what is wrong and how to write it; it quotes only the offending
/// number or unit, never the whole value.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "write e.g. \"90s\", \"5m\" or \"1h30m\"";
    if s.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    if s.starts_with('-') {
        return Err("a duration cannot be negative".to_string());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "a bare number is not a duration, add a unit; {HINT}"
        ));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(format!("expected a number; {HINT}"));
        }
        let (digits, after) = rest.split_at(digits_len);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if after.starts_with('.') => {
                return Err(format!("fractions are not supported; {HINT}"))
            }
            "" => return Err(format!("missing unit after `{digits}`; {HINT}")),
            _ => {
                return Err(format!(
                    "unknown unit `{}`; use ms, s, m, h or d",
                    unit.escape_debug()
                ))
            }
        };
        let part = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(millis_per_unit))
            .ok_or_else(|| "duration is too large".to_string())?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| "duration is too large".to_string())?;
        rest = after;
    }
    Ok(total)
}

/// `aws`, `aws-cn`, `aws-us-gov`, `aws-iso-b`, ...: "aws" then `-[a-z0-9]+` parts.
fn is_partition(s: &str) -> bool {
    let mut parts = s.split('-');
    parts.next() == Some("aws")
        && parts.all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_alnum(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits `arn:PARTITION:SERVICE::ACCOUNT:RESOURCE` (empty region), checking all but
/// the resource; returns the resource.
fn arn_resource<'s>(s: &'s str, service: &str) -> Option<&'s str> {
    let mut parts = s.splitn(6, ':');
    let ok = parts.next() == Some("arn")
        && parts.next().is_some_and(is_partition)
        && parts.next() == Some(service)
        && parts.next() == Some("")
        && parts.next().is_some_and(is_account_id);
    if ok {
        parts.next()
    } else {
        None
    }
}

/// `arn:<partition>:sso::<12 digits>:application/ssoins-<alnum>/apl-<alnum>`.
pub(crate) fn is_sso_application_arn(s: &str) -> bool {
    let Some(resource) = arn_resource(s, "sso") else {
        return false;
    };
    let parts: Vec<&str> = resource.split('/').collect();
    matches!(
        parts.as_slice(),
        ["application", instance, app]
            if instance.strip_prefix("ssoins-").is_some_and(is_alnum)
                && app.strip_prefix("apl-").is_some_and(is_alnum)
    )
}

/// `arn:<partition>:iam::<12 digits>:role/<path/>name`, name 1-64 of `[\w+=,.@-]`.
pub(crate) fn is_role_arn(s: &str) -> bool {
    let Some(path) = arn_resource(s, "iam").and_then(|r| r.strip_prefix("role/")) else {
        return false;
    };
    let name = path.rsplit('/').next().unwrap_or("");
    name.len() <= 64
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg.chars().all(is_iam_name_char))
}

fn is_iam_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
}

/// STS `RoleSessionName`: 2-64 of `[\w+=,.@-]`.
pub(crate) fn is_session_name(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.chars().all(is_iam_name_char)
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `us-isob-east-1`: two letters, one or
/// more lowercase words, a number.
pub(crate) fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// A port: 1-65535, digits only.
fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && matches!(s.parse::<u16>(), Ok(p) if p > 0)
}

/// `http://` or `https://`, a host, an optional port, then an optional path/query.
pub(crate) fn is_http_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    if s.chars().any(char::is_whitespace) {
        return false;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return false,
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    !host.is_empty() && port.is_none_or(is_port)
}

/// `http://127.0.0.1:PORT[/...]`, `http://localhost:PORT[/...]`, `http://[::1]:PORT[/...]`:
/// the login flow listens there, so it must be loopback, plain http, with an explicit port.
pub(crate) fn is_loopback_redirect(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("http://") else {
        return false;
    };
    if s.chars().any(char::is_whitespace) || s.contains('#') {
        return false;
    }
    let Some(after_host) = ["127.0.0.1:", "localhost:", "[::1]:"]
        .iter()
        .find_map(|host| rest.strip_prefix(host))
    else {
        return false;
    };
    let port_end = after_host.find(['/', '?']).unwrap_or(after_host.len());
    is_port(&after_host[..port_end])
}

/// Parses `credentials_listen`: `IP:PORT` with a loopback IP (127.0.0.0/8 or `[::1]`), any
/// port including 0. Never a name (`localhost` could resolve elsewhere) and never a
/// wildcard: the endpoint serves credentials to whoever holds a token, so it must not be
/// reachable from another host.
pub(crate) fn parse_loopback_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = s.parse().map_err(|_| {
        "must be a loopback address and port like \"127.0.0.1:9911\" or \"[::1]:9911\"".to_string()
    })?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "must be a loopback address (127.0.0.0/8 or [::1]), not {}",
            addr.ip()
        ))
    }
}

/// Parses a file mode written as an octal string: "0660", "660" or "0o660"; at most 0777.
pub(crate) fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("must be an octal string like \"0660\"".to_string());
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 3 {
        return Err("must be at most \"0777\"".to_string());
    }
    // At most three octal digits: always fits.
    Ok(u32::from_str_radix(
        if significant.is_empty() {
            "0"
        } else {
            significant
        },
        8,
    )
    .unwrap_or(0))
}

/// `[a-z0-9][a-z0-9._-]*`: the app's name everywhere (URLs, metrics, logs, state files).
pub(crate) fn is_app_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` over `(input, expected)` rows, naming every row that disagrees.
    fn table(check: fn(&str) -> bool, rows: &[(&str, bool)]) {
        let wrong: Vec<String> = rows
            .iter()
            .filter(|(input, expected)| check(input) != *expected)
            .map(|(input, expected)| format!("{input:?}: expected {expected}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn durations() {
        let ok = [
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("2d", 172_800_000),
            ("0s", 0),
            ("1m30s500ms", 90_500),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        let hint = "write e.g. \"90s\", \"5m\" or \"1h30m\"";
        let bad = [
            ("", format!("empty duration; {hint}")),
            (
                "90",
                format!("a bare number is not a duration, add a unit; {hint}"),
            ),
            ("-5m", "a duration cannot be negative".to_string()),
            ("5x", "unknown unit `x`; use ms, s, m, h or d".to_string()),
            ("5 m", format!("missing unit after `5`; {hint}")),
            ("1h30", format!("missing unit after `30`; {hint}")),
            ("1.5h", format!("fractions are not supported; {hint}")),
            ("h", format!("expected a number; {hint}")),
            (" 5m", format!("expected a number; {hint}")),
            ("99999999999999999999s", "duration is too large".to_string()),
        ];
        for (s, message) in bad {
            assert_eq!(parse_duration(s), Err(message), "{s:?}");
        }
    }

    #[test]
    fn octal_modes() {
        let ok = [
            ("0660", 0o660),
            ("660", 0o660),
            ("0o600", 0o600),
            ("0777", 0o777),
            ("0000", 0),
            ("0000777", 0o777),
        ];
        for (s, mode) in ok {
            assert_eq!(parse_octal_mode(s), Ok(mode), "{s}");
        }
        for bad in ["", "0o", "0x1ff", "0668", "rw-rw----", "-660", " 660"] {
            assert!(
                parse_octal_mode(bad).unwrap_err().contains("octal"),
                "{bad}"
            );
        }
        for big in ["1000", "0o1777", "77777777777777777777"] {
            assert_eq!(
                parse_octal_mode(big),
                Err("must be at most \"0777\"".to_string()),
                "{big}"
            );
        }
    }

    #[test]
    fn sso_application_arns() {
        table(
            is_sso_application_arn,
            &[
                (
                    "arn:aws-cn:sso::123456789012:application/ssoins-abc123/apl-DEF456",
                    true,
                ),
                ("arn:aws:sso::123456789012:application/ssoins-1/apl-2", true),
                (
                    "arn:aws:sso::123456789012:application/ssoins-abc/apl-",
                    false,
                ),
                (
                    "arn:aws:sso::123456789012:application/ssoins-abc/apl-x/y",
                    false,
                ),
                (
                    "arn:aws:sso:us-east-1:123456789012:application/ssoins-abc/apl-def",
                    false,
                ),
                (
                    "arn:aws:iam::123456789012:application/ssoins-abc/apl-def",
                    false,
                ),
                (
                    "arn:aws-:sso::123456789012:application/ssoins-abc/apl-def",
                    false,
                ),
                (
                    "arn:aws:sso::123456789012:application/ssoins-a_b/apl-def",
                    false,
                ),
            ],
        );
    }

    #[test]
    fn role_arns() {
        let too_long = format!("arn:aws:iam::123456789012:role/{}", "r".repeat(65));
        let longest = format!("arn:aws:iam::123456789012:role/{}", "r".repeat(64));
        table(
            is_role_arn,
            &[
                ("arn:aws:iam::123456789012:role/a/b/Name+=,.@-_", true),
                ("arn:aws-us-gov:iam::123456789012:role/R", true),
                (&longest, true),
                ("arn:aws:iam::123456789012:role/", false),
                ("arn:aws:iam::123456789012:role//x", false),
                ("arn:aws:iam::123456789012:role/a b", false),
                ("arn:aws:iam::1234567890123:role/x", false),
                (&too_long, false),
            ],
        );
    }

    #[test]
    fn session_names() {
        let longest = "s".repeat(64);
        let too_long = "s".repeat(65);
        table(
            is_session_name,
            &[
                ("ab", true),
                ("iamtokend-app.1", true),
                ("A_b+c=d,e.f@g-h", true),
                (&longest, true),
                ("a", false),
                ("", false),
                (&too_long, false),
                ("a b", false),
                ("a/b", false),
                ("é1", false),
            ],
        );
    }

    #[test]
    fn regions() {
        table(
            is_region,
            &[
                ("us-east-1", true),
                ("eu-central-2", true),
                ("us-gov-west-1", true),
                ("us-isob-east-1", true),
                ("us-east", false),
                ("useast-1", false),
                ("us-East-1", false),
                ("u-east-1", false),
                ("us--1", false),
                ("us-east-1a", false),
                ("us-east-", false),
            ],
        );
    }

    #[test]
    fn http_urls() {
        table(
            is_http_url,
            &[
                ("https://oidc.us-east-1.amazonaws.com", true),
                ("http://127.0.0.1:8080/x?y", true),
                ("http://[::1]:80", true),
                ("https://user@host", true),
                ("ftp://x", false),
                ("https://", false),
                ("http://:80", false),
                ("http://h:0", false),
                ("http://h:x", false),
                ("http://[::1", false),
                ("https://a b", false),
            ],
        );
    }

    #[test]
    fn loopback_redirects() {
        table(
            is_loopback_redirect,
            &[
                ("http://127.0.0.1:8400/callback", true),
                ("http://localhost:1", true),
                ("http://[::1]:65535/a?b=c", true),
                ("http://127.0.0.1/cb", false),
                ("http://127.0.0.1:/cb", false),
                ("http://localhost:0/cb", false),
                ("http://localhost.evil.com:80/cb", false),
                ("http://127.0.0.1:80#frag", false),
                ("http://127.0.0.1:80x/cb", false),
                ("https://127.0.0.1:8400/cb", false),
                ("http://127.0.0.1:65536/cb", false),
            ],
        );
    }

    #[test]
    fn loopback_listens() {
        table(
            |s| parse_loopback_listen(s).is_ok(),
            &[
                ("127.0.0.1:9911", true),
                ("127.3.4.5:0", true),
                ("[::1]:9911", true),
                ("0.0.0.0:9911", false),
                ("[::]:9911", false),
                ("192.168.1.2:9911", false),
                ("[::ffff:127.0.0.1]:9911", false),
                ("localhost:9911", false),
                ("127.0.0.1", false),
                ("127.0.0.1:65536", false),
                ("", false),
            ],
        );
    }

    #[test]
    fn app_names() {
        table(
            is_app_name,
            &[
                ("a", true),
                ("0a.b_c-d", true),
                ("", false),
                (".a", false),
                ("A", false),
                ("a b", false),
                ("-a", false),
            ],
        );
    }
}

//! NATS server addresses as the operator gives them: one URL or a comma-separated list (as the
//! NATS tools take them), and their credentials kept out of logs and errors.

/// The servers of `urls` (`nats://a:4222,nats://b:4222`), trimmed, empty entries dropped.
pub fn server_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `scheme://user:pass@host…` → `scheme://***@host…` for every URL of a comma-separated list,
/// so credentials never reach logs or error messages.
pub fn redact_userinfo(urls: &str) -> String {
    urls.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // `user:pass@host:4222` without a scheme is a valid NATS address too
        return match url
            .split_once('/')
            .map_or(url, |(authority, _)| authority)
            .rfind('@')
        {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_owned(),
        };
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas_and_trimmed() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4223,,nats://c:4224 "),
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
        assert_eq!(server_list("nats://a:4222"), ["nats://a:4222"]);
        assert!(server_list(" , ").is_empty());
    }

    #[test]
    fn credentials_are_redacted_from_every_url() {
        assert_eq!(
            redact_userinfo("nats://user:pw@nats.local:4222"),
            "nats://***@nats.local:4222"
        );
        assert_eq!(
            redact_userinfo("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(redact_userinfo("tls://a@b/c@d"), "tls://***@b/c@d");
        assert_eq!(redact_userinfo("not a url"), "not a url");
        assert_eq!(
            redact_userinfo("nats://u:p@a:1,nats://b:2,tls://t0ken@c:3"),
            "nats://***@a:1,nats://b:2,tls://***@c:3"
        );
        assert_eq!(redact_userinfo("u:p@a:1"), "***@a:1");
    }
}

//! The one HTML layout every page regate serves is written in (the web pages and browser error
//! pages): a strict Content-Security-Policy whose only script is the copy button's, by hash.

use super::{full, set, Resp};
use ::http::{header, StatusCode};

/// Copies the text of the element a `data-copy` button names (clipboard API, or selecting it
/// where that API is missing, e.g. over plain HTTP).
pub const COPY_SCRIPT: &str = "document.querySelectorAll('button[data-copy]').forEach(function(b){b.hidden=false;b.addEventListener('click',function(){var e=document.getElementById(b.getAttribute('data-copy'));var t=e.textContent.trim();var ok=function(){b.textContent='Copied';};if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t).then(ok);}else{var r=document.createRange();r.selectNodeContents(e);var s=window.getSelection();s.removeAllRanges();s.addRange(r);if(document.execCommand('copy')){ok();}}});});";

fn copy_script_hash() -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(COPY_SCRIPT.as_bytes()))
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A whole HTML document in the layout.
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t} · regate</title><style>body{{font:15px/1.5 system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222}}\
code,pre{{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}}pre{{padding:.6rem;white-space:pre-wrap;overflow-wrap:anywhere;margin:.4rem 0}}\
.wide{{overflow-x:auto}}table{{border-collapse:collapse;width:100%}}\
td,th{{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top}}.nowrap{{white-space:nowrap}}\
.secret{{font-size:1.1rem;background:#fff8d6;word-break:break-all}}.copy{{display:flex;gap:.5rem;align-items:flex-start}}.copy pre{{flex:1;min-width:0}}\
header{{display:flex;flex-wrap:wrap;gap:.5rem;justify-content:space-between;align-items:baseline}}\
form.signin label{{display:block;margin:.4rem 0}}input{{max-width:100%}}.error{{color:#a00}}</style></head><body>{b}<script>{s}</script></body></html>",
        t = esc(title),
        b = body,
        s = COPY_SCRIPT
    )
}

pub fn page(code: StatusCode, title: &str, body: &str) -> Resp {
    let html = document(title, body);
    let mut r = Resp::new(full(html));
    *r.status_mut() = code;
    page_headers(&mut r);
    r
}

/// The headers of every HTML answer.
pub fn page_headers(r: &mut Resp) {
    set(r, header::CONTENT_TYPE, "text/html; charset=utf-8");
    set(r, header::CACHE_CONTROL, "no-store");
    set(
        r,
        header::CONTENT_SECURITY_POLICY,
        &format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            copy_script_hash()
        ),
    );
    set(r, header::REFERRER_POLICY, "no-referrer");
}

/// A whole page saying one thing: a title and one sentence, and the way back to sign in.
pub fn message(title: &str, text: &str) -> String {
    document(
        title,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/login\">Sign in again</a></p>",
            esc(title),
            esc(text)
        ),
    )
}

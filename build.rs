//! The browser page (src/http/page.html) as served: without its comment
//! lines and indentation (smaller, in the binary and on the wire), and the
//! SHA-256 of its inline script and of its inline style, so its
//! Content-Security-Policy allows exactly those two blocks by hash instead of
//! any inline code ('unsafe-inline'). An edit to the page changes both.

use base64::Engine;
use sha2::{Digest, Sha256};

fn main() {
    let path = "src/http/page.html";
    println!("cargo:rerun-if-changed={path}");
    let source = std::fs::read_to_string(path).expect("read the page");
    // Whole-line `//` comments go, and leading blanks; nothing else changes.
    let page: String = source
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .flat_map(|line| [line, "\n"])
        .collect();
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{out}/page.html"), &page).expect("write the page");
    for (tag, var) in [
        ("script", "PAGE_SCRIPT_SHA256"),
        ("style", "PAGE_STYLE_SHA256"),
    ] {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        assert_eq!(
            page.matches(&open).count(),
            1,
            "the page must have one <{tag}>"
        );
        let start = page.find(&open).expect("opening tag") + open.len();
        let end = start + page[start..].find(&close).expect("closing tag");
        let digest = Sha256::digest(&page.as_bytes()[start..end]);
        let hash = base64::engine::general_purpose::STANDARD.encode(digest);
        println!("cargo:rustc-env={var}={hash}");
    }
}

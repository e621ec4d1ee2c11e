//! The status page: what a person (HTML, in English or Simplified Chinese by
//! `Accept-Language`) or a program (JSON) sees of the service mode. Served at
//! `GET /status` in every mode, and instead of any `/api/v1` page a browser asks for
//! while the service is `offline`. Static: no script, no asset, nothing from the
//! database (it works while the database is gone).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use steadyflow_store::mode::Mode;

use crate::modes::ModeView;

/// The languages of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    /// Simplified Chinese.
    ZhHans,
}

impl Lang {
    fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhHans => "zh-Hans",
        }
    }
}

/// The language `Accept-Language` prefers among ours (by `q`, then order); English when
/// it names neither.
pub fn language(headers: &HeaderMap) -> Lang {
    let Some(value) = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Lang::En;
    };
    let mut best: Option<(f32, usize, Lang)> = None;
    for (i, item) in value.split(',').enumerate() {
        let mut parts = item.trim().split(';');
        let tag = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let lang = if tag == "zh" || tag.starts_with("zh-") {
            Lang::ZhHans
        } else if tag == "en" || tag.starts_with("en-") {
            Lang::En
        } else {
            continue;
        };
        if q <= 0.0 {
            continue;
        }
        if best.is_none_or(|(bq, bi, _)| q > bq || (q == bq && i < bi)) {
            best = Some((q, i, lang));
        }
    }
    best.map_or(Lang::En, |(_, _, l)| l)
}

/// Whether the client is a browser asking for a page (`Accept` names `text/html`).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The JSON form.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson<'a> {
    #[serde(flatten)]
    mode: &'a ModeView,
    /// A sentence for people, in English.
    message: String,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

struct Texts {
    title: &'static str,
    headline: &'static str,
    reason: &'static str,
    back: &'static str,
    unknown_back: &'static str,
    spooled: &'static str,
}

fn texts(lang: Lang, mode: Mode) -> Texts {
    let (title, headline) = match (lang, mode) {
        (Lang::En, Mode::Normal) => (
            "Steadyflow is running",
            "All services are running normally.",
        ),
        (Lang::En, Mode::ReadOnly) => (
            "Steadyflow is read-only",
            "You can look at everything, but no changes can be made right now.",
        ),
        (Lang::En, Mode::CoreOnly) => (
            "Steadyflow runs essential work only",
            "Processes and tasks go on; deployments and large listings are paused.",
        ),
        (Lang::En, Mode::Offline) => (
            "Steadyflow is offline",
            "The service is temporarily unavailable.",
        ),
        (Lang::ZhHans, Mode::Normal) => ("Steadyflow 运行正常", "所有服务均正常运行。"),
        (Lang::ZhHans, Mode::ReadOnly) => (
            "Steadyflow 处于只读模式",
            "您可以查看所有内容，但目前无法进行任何更改。",
        ),
        (Lang::ZhHans, Mode::CoreOnly) => (
            "Steadyflow 仅运行核心功能",
            "流程和任务照常进行；部署和大批量查询暂停。",
        ),
        (Lang::ZhHans, Mode::Offline) => ("Steadyflow 暂时离线", "服务暂时不可用。"),
    };
    match lang {
        Lang::En => Texts {
            title,
            headline,
            reason: "Reason",
            back: "Expected back",
            unknown_back: "We will be back as soon as possible.",
            spooled: "Changes sent now are kept and carried out, in order, once the service is back.",
        },
        Lang::ZhHans => Texts {
            title,
            headline,
            reason: "原因",
            back: "预计恢复时间",
            unknown_back: "我们将尽快恢复服务。",
            spooled: "现在提交的更改会被保存，并在服务恢复后按顺序执行。",
        },
    }
}

/// The page as HTML.
pub fn html(view: &ModeView, lang: Lang) -> String {
    let t = texts(lang, view.mode);
    let reason = view
        .reason
        .as_deref()
        .map(|r| {
            format!(
                "<p><strong>{}:</strong> <span id=\"reason\">{}</span></p>",
                t.reason,
                escape(r)
            )
        })
        .unwrap_or_default();
    let back = match view.until {
        Some(u) => {
            let at = u.format("%Y-%m-%d %H:%M UTC");
            let iso = u.to_rfc3339();
            format!(
                "<p><strong>{}:</strong> <time id=\"until\" datetime=\"{iso}\">{at}</time></p>",
                t.back
            )
        }
        None if view.mode != Mode::Normal => format!("<p id=\"until\">{}</p>", t.unknown_back),
        None => String::new(),
    };
    let spooled = if view.mode == Mode::Offline {
        format!("<p>{}</p>", t.spooled)
    } else {
        String::new()
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>body{{font-family:system-ui,sans-serif;max-width:40em;\
         margin:4em auto;padding:0 1em;color:#222}}h1{{font-size:1.6em}}</style>\n</head>\n<body>\n\
         <h1 id=\"title\" data-mode=\"{mode}\">{title}</h1>\n<p id=\"headline\">{headline}</p>\n\
         {reason}\n{back}\n{spooled}\n</body>\n</html>\n",
        lang = lang.tag(),
        title = t.title,
        mode = view.mode,
        headline = t.headline,
    )
}

/// The status page for `headers`: HTML for a browser, else JSON; with `status`.
pub fn page(view: &ModeView, headers: &HeaderMap, status: StatusCode) -> Response {
    if wants_html(headers) {
        let lang = language(headers);
        let mut r = (status, html(view, lang)).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(
            header::CONTENT_LANGUAGE,
            HeaderValue::from_static(lang.tag()),
        );
        h.insert(
            header::VARY,
            HeaderValue::from_static("Accept, Accept-Language"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    let message = texts(Lang::En, view.mode).headline.to_string();
    let mut r = (
        status,
        crate::json::Json(StatusJson {
            mode: view,
            message,
        }),
    )
        .into_response();
    r.headers_mut().insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Language"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_language(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn the_language_follows_accept_language() {
        assert_eq!(language(&HeaderMap::new()), Lang::En);
        assert_eq!(
            language(&accept_language("zh-CN,zh;q=0.9,en;q=0.8")),
            Lang::ZhHans
        );
        assert_eq!(language(&accept_language("en-US,zh-CN;q=0.5")), Lang::En);
        assert_eq!(
            language(&accept_language("de-DE,zh-Hans;q=0.7,en;q=0.6")),
            Lang::ZhHans
        );
        assert_eq!(language(&accept_language("fr")), Lang::En);
        assert_eq!(language(&accept_language("zh;q=0,en;q=0.1")), Lang::En);
    }

    #[test]
    fn the_reason_is_escaped() {
        let view = ModeView {
            mode: Mode::Offline,
            reason: Some("<script>alert(1)</script> & more".into()),
            ..ModeView::default()
        };
        let page = html(&view, Lang::En);
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"),
            "{page}"
        );
        assert!(!page.contains("<script>"));
        let zh = html(&view, Lang::ZhHans);
        assert!(
            zh.contains("lang=\"zh-Hans\"") && zh.contains("暂时离线"),
            "{zh}"
        );
    }
}

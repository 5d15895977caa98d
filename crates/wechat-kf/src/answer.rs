//! Fitting an answer to WeChat: a bot's or a model's answer (often markdown, often long) turned
//! into plain texts WeChat shows well, at most as many as the session still allows, each within
//! WeChat's 2048 bytes, split where a reader would pause.
//!
//! WeChat renders no markdown: `**bold**`, `# headings` and `[links](…)` arrive as punctuation.
//! [`plain_text`] renders them as text (`pulldown-cmark` reads the markdown, so every
//! CommonMark form is understood, not just the common ones). [`fit`] then packs paragraphs, and
//! sentences of paragraphs too long for one message, into as few messages as possible; what
//! cannot fit into the last allowed message is cut at a sentence, with a marker.
//!
//! ```
//! use wechat_kf::answer::{fit, plain_text, MAX_TEXT_BYTES};
//!
//! let text = plain_text("## 退货\n\n1. 打开**订单**\n2. 点击[退货](https://example.com/r)");
//! assert_eq!(text, "退货\n\n1. 打开订单\n2. 点击退货 (https://example.com/r)");
//! let fitted = fit(&text, 5, MAX_TEXT_BYTES, "……");
//! assert_eq!(fitted.texts, vec![text.clone()]);
//! assert!(!fitted.truncated);
//! ```

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// The most bytes of one text message (`send_msg`, official doc 94677).
pub const MAX_TEXT_BYTES: usize = 2048;

/// The smallest limit [`fit`] works with: the widest UTF-8 character.
pub const MIN_TEXT_BYTES: usize = 4;

/// Renders markdown as plain text: headings and paragraphs as lines separated by a blank line,
/// emphasis and code marks dropped, list items as `• item` or `1. item`, links as
/// `text (url)` (just the URL when the text is the URL), images as `[图片: alt]`, table rows
/// with cells joined by ` | `. Text that is not markdown comes back unchanged, except that
/// runs of blank lines become one.
pub fn plain_text(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    // Per open list: the next number of an ordered list, `None` for bullets.
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut links: Vec<String> = Vec::new();
    let mut link_text_start: Vec<usize> = Vec::new();
    let mut in_image = false;
    let parser = Parser::new_ext(
        markdown,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
    );
    for event in parser {
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph
                | Tag::Heading { .. }
                | Tag::BlockQuote(_)
                | Tag::CodeBlock(_)
                | Tag::Table(_)
                    if lists.is_empty() =>
                {
                    block_break(&mut out);
                }
                Tag::List(first) => {
                    if lists.is_empty() {
                        block_break(&mut out);
                    }
                    lists.push(first);
                }
                Tag::Item => {
                    line_break(&mut out);
                    let depth = lists.len().saturating_sub(1);
                    out.push_str(&"  ".repeat(depth));
                    match lists.last_mut() {
                        Some(Some(n)) => {
                            out.push_str(&format!("{n}. "));
                            *n += 1;
                        }
                        _ => out.push_str("• "),
                    }
                }
                Tag::Link { dest_url, .. } => {
                    links.push(dest_url.to_string());
                    link_text_start.push(out.len());
                }
                Tag::Image { .. } => {
                    in_image = true;
                    out.push_str("[图片: ");
                }
                Tag::TableRow | Tag::TableHead => line_break(&mut out),
                Tag::TableCell if !out.ends_with('\n') && !out.is_empty() => {
                    out.push_str(" | ");
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::List(_) => {
                    lists.pop();
                }
                TagEnd::Link => {
                    let url = links.pop().unwrap_or_default();
                    let start = link_text_start.pop().unwrap_or(out.len());
                    let text = out.get(start..).unwrap_or_default().trim();
                    if text.is_empty() {
                        out.push_str(&url);
                    } else if text != url && !url.is_empty() {
                        out.push_str(&format!(" ({url})"));
                    }
                }
                TagEnd::Image => {
                    in_image = false;
                    out.push(']');
                }
                _ => {}
            },
            Event::Text(text) | Event::Code(text) => {
                if in_image && text.is_empty() {
                    continue;
                }
                out.push_str(&text);
            }
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::Rule => {
                block_break(&mut out);
                out.push_str("——————");
            }
            Event::Html(html) | Event::InlineHtml(html) => out.push_str(&html),
            Event::TaskListMarker(done) => out.push_str(if done { "[x] " } else { "[ ] " }),
            _ => {}
        }
    }
    out.trim().to_owned()
}

/// Ends the current block with a blank line (none at the start).
fn block_break(out: &mut String) {
    let trimmed = out.trim_end_matches([' ', '\n']).len();
    out.truncate(trimmed);
    if !out.is_empty() {
        out.push_str("\n\n");
    }
}

/// Starts a new line (none at the start).
fn line_break(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// An answer fitted to what the session allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// The texts to send, in order; each at most the given bytes. Empty for an empty answer.
    pub texts: Vec<String>,
    /// Whether part of the answer did not fit and was cut (the last text ends with the marker).
    pub truncated: bool,
}

/// Splits `text` into at most `max_texts` texts of at most `max_bytes` bytes each: paragraphs
/// (separated by a blank line) are packed together as long as they fit; a paragraph too long
/// for one text is split between sentences (after `。！？!?；;` or `. `, or at a line break);
/// a sentence too long for one text is split at a character boundary. When the texts would be
/// more than `max_texts`, the last one allowed holds as many whole sentences as fit with
/// `marker` after them, and the rest is dropped. `max_bytes` is at least 4 (one character of
/// any width); a smaller limit is taken as 4.
pub fn fit(text: &str, max_texts: usize, max_bytes: usize, marker: &str) -> Fitted {
    let text = text.trim();
    let max_bytes = max_bytes.max(MIN_TEXT_BYTES);
    if text.is_empty() || max_texts == 0 {
        return Fitted {
            texts: Vec::new(),
            truncated: !text.is_empty(),
        };
    }
    let mut texts: Vec<String> = Vec::new();
    let mut current = String::new();
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if joined_len(&current, paragraph, "\n\n") <= max_bytes {
            push_joined(&mut current, paragraph, "\n\n");
            continue;
        }
        if !current.is_empty() {
            texts.push(std::mem::take(&mut current));
        }
        if paragraph.len() <= max_bytes {
            current.push_str(paragraph);
            continue;
        }
        for piece in sentences(paragraph).flat_map(|s| hard_split(s, max_bytes)) {
            if joined_len(&current, piece, "") > max_bytes {
                texts.push(std::mem::take(&mut current));
            }
            current.push_str(piece);
        }
    }
    if !current.is_empty() {
        texts.push(current);
    }
    let texts: Vec<String> = texts.into_iter().map(|t| t.trim().to_owned()).collect();
    if texts.len() <= max_texts {
        return Fitted {
            texts,
            truncated: false,
        };
    }
    let mut kept: Vec<String> = texts[..max_texts].to_vec();
    let last = kept.pop().unwrap_or_default();
    kept.push(with_marker(&last, max_bytes, marker));
    Fitted {
        texts: kept,
        truncated: true,
    }
}

/// `text` cut at a sentence so that `marker` fits after it within `max_bytes`.
fn with_marker(text: &str, max_bytes: usize, marker: &str) -> String {
    let room = max_bytes.saturating_sub(marker.len());
    let mut out = String::new();
    for sentence in sentences(text) {
        if out.len() + sentence.len() > room {
            break;
        }
        out.push_str(sentence);
    }
    if out.trim().is_empty() {
        // Not one whole sentence fits: cut at a character.
        out = hard_split(text, room).next().unwrap_or_default().to_owned();
    }
    let mut out = out.trim_end().to_owned();
    if out.len() + marker.len() <= max_bytes {
        out.push_str(marker);
    }
    out
}

fn joined_len(current: &str, next: &str, separator: &str) -> usize {
    if current.is_empty() {
        next.len()
    } else {
        current.len() + separator.len() + next.len()
    }
}

fn push_joined(current: &mut String, next: &str, separator: &str) {
    if !current.is_empty() {
        current.push_str(separator);
    }
    current.push_str(next);
}

/// The sentences of `text`, each with its ending punctuation and the whitespace after it (so
/// that they concatenate back to `text`).
fn sentences(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            let ends = match c {
                '。' | '！' | '？' | '；' | '!' | '?' | ';' | '\n' => true,
                '.' => next.is_none_or(char::is_whitespace),
                _ => false,
            };
            if ends {
                // Keep closing quotes and whitespace with the sentence.
                let mut stop = i + c.len_utf8();
                while let Some(&(j, n)) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '”' | '’' | '"' | '）' | ')' | '」') {
                        stop = j + n.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                end = stop;
                break;
            }
        }
        let (sentence, tail) = rest.split_at(end);
        rest = tail;
        Some(sentence)
    })
}

/// `text` in pieces of at most `max_bytes`, cut at character boundaries.
fn hard_split(text: &str, max_bytes: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() || max_bytes == 0 {
            return None;
        }
        let mut end = rest.len().min(max_bytes);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // One character wider than the limit: it goes alone rather than loop forever.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_text_wechat_shows_well() {
        let md = "# 标题\n\n一段**加粗**和*斜体*，还有`代码`。\n\n- 第一\n- 第二\n  1. 子项\n\n> 引用\n\n[官网](https://a.example) 和 <https://b.example>\n\n---\n\n| 名称 | 价格 |\n|---|---|\n| 苹果 | 5 |";
        let text = plain_text(md);
        assert_eq!(
            text,
            "标题\n\n一段加粗和斜体，还有代码。\n\n• 第一\n• 第二\n  1. 子项\n\n引用\n\n官网 (https://a.example) 和 https://b.example\n\n——————\n\n名称 | 价格\n苹果 | 5"
        );
    }

    #[test]
    fn plain_text_without_markdown_comes_back_unchanged() {
        let text = "您好！订单已发货，预计明天送达。";
        assert_eq!(plain_text(text), text);
    }

    #[test]
    fn short_answers_stay_one_message() {
        let fitted = fit("您好。\n\n请问有什么可以帮您？", 5, MAX_TEXT_BYTES, "…");
        assert_eq!(fitted.texts, vec!["您好。\n\n请问有什么可以帮您？"]);
        assert!(!fitted.truncated);
    }

    #[test]
    fn long_answers_split_at_paragraphs_then_sentences_within_the_limit() {
        let paragraph = "这是一句话。".repeat(200); // 3,600 bytes
        let text = format!("开头。\n\n{paragraph}\n\n结尾。");
        let fitted = fit(&text, 5, MAX_TEXT_BYTES, "…");
        assert!(!fitted.truncated);
        assert!(fitted.texts.iter().all(|t| t.len() <= MAX_TEXT_BYTES));
        assert!(fitted.texts.len() >= 2);
        for t in &fitted.texts[1..fitted.texts.len() - 1] {
            assert!(t.ends_with('。'), "split between sentences: {t}");
        }
        let joined: String = fitted
            .texts
            .concat()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let original: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(joined, original, "nothing lost, nothing reordered");
    }

    #[test]
    fn what_does_not_fit_is_cut_at_a_sentence_with_a_marker() {
        let text = "第一句话。".repeat(2000); // ~30 KB
        let fitted = fit(&text, 3, MAX_TEXT_BYTES, "（内容较长，已省略）");
        assert!(fitted.truncated);
        assert_eq!(fitted.texts.len(), 3);
        assert!(fitted.texts.iter().all(|t| t.len() <= MAX_TEXT_BYTES));
        let last = fitted.texts.last().unwrap();
        assert!(last.ends_with("第一句话。（内容较长，已省略）"), "{last}");
    }

    #[test]
    fn a_sentence_longer_than_a_message_is_cut_at_a_character_boundary() {
        let text = "长".repeat(1000); // 3,000 bytes, no punctuation
        let fitted = fit(&text, 5, MAX_TEXT_BYTES, "…");
        assert_eq!(fitted.texts.len(), 2);
        assert!(fitted.texts.iter().all(|t| t.len() <= MAX_TEXT_BYTES));
        assert_eq!(fitted.texts.concat(), text);
    }

    #[test]
    fn nothing_is_sent_when_nothing_may_be() {
        let fitted = fit("你好", 0, MAX_TEXT_BYTES, "…");
        assert!(fitted.texts.is_empty());
        assert!(fitted.truncated);
        assert_eq!(
            fit("   ", 5, MAX_TEXT_BYTES, "…").texts,
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_fit_respects_its_limits_whatever_the_text() {
        let samples = [
            "a. b. c. ".repeat(700),
            "😀".repeat(1200),
            "句子！\n".repeat(900),
            format!("{}\n\n{}", "x".repeat(5000), "y".repeat(10)),
        ];
        for sample in &samples {
            for (max_texts, max_bytes) in [(1, 2048), (2, 100), (5, 7), (5, 2048), (3, 4)] {
                let fitted = fit(sample, max_texts, max_bytes, "…");
                assert!(fitted.texts.len() <= max_texts);
                assert!(
                    fitted.texts.iter().all(|t| t.len() <= max_bytes),
                    "{max_texts} × {max_bytes}"
                );
            }
        }
    }
}

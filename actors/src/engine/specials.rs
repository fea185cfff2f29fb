//! The special tokens of chat models' vocabularies: those that end a sequence (every
//! answer stops at any of them) and the markers of chat templates, neither ever text of
//! an answer. Pure; the mistral.rs engine asks its tokenizer which it has.

/// Tokens that end a sequence in one model family or another. A grammar engine
/// (llguidance) ends a constrained answer with the first of the first five its tokenizer
/// has, whatever the model's `eos_token_id` says: a Qwen model whose generation config
/// names `<|im_end|>` alone gets `<|endoftext|>` at the end of a forced tool call, which
/// the engine would otherwise print as text, again and again, until `max_tokens`.
pub(crate) const END_TOKENS: [&str; 11] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<eos>",
    "<|end|>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|return|>",
];

/// Other special tokens of chat templates: markers, never text of an answer.
pub(crate) const TEMPLATE_TOKENS: [&str; 14] = [
    "<|im_start|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|start|>",
    "<|message|>",
    "<|channel|>",
    "<|python_tag|>",
    "<s>",
    "<bos>",
    "<start_of_turn>",
    "<pad>",
    "<|pad|>",
    "<unk>",
];

/// `text` without the special tokens of `specials` (pure). A marker made of `<|…|>` (or
/// DeepSeek's `<｜…｜>`) is cut wherever it is, since no text spells one; a shorter one
/// (`<s>`, `<eos>`) only when it is the whole piece: one token, not an answer's HTML.
pub(crate) fn without_specials<'a>(text: &'a str, specials: &[String]) -> std::borrow::Cow<'a, str> {
    let mut out = std::borrow::Cow::Borrowed(text);
    // Every special token starts with `<`: most pieces hold none (the token path).
    if !text.contains('<') {
        return out;
    }
    for s in specials {
        let piped = s.starts_with("<|") || (s.starts_with('<') && s.contains('\u{ff5c}'));
        if out.as_ref() == s.as_str() {
            return std::borrow::Cow::Borrowed("");
        }
        if piped && out.contains(s.as_str()) {
            out = std::borrow::Cow::Owned(out.replace(s.as_str(), ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_are_never_text_but_html_stays() {
        let specials: Vec<String> = ["<|endoftext|>", "<|im_start|>", "</s>", "<s>"].map(String::from).to_vec();
        assert_eq!(without_specials("{\"a\":1}<|endoftext|>", &specials), "{\"a\":1}");
        assert_eq!(without_specials("<|im_start|>assistant", &specials), "assistant");
        assert_eq!(without_specials("</s>", &specials), "");
        assert_eq!(without_specials("<s>old</s> price", &specials), "<s>old</s> price", "HTML is text");
        assert_eq!(without_specials("plain", &specials), "plain");
        assert!(END_TOKENS.iter().all(|t| t.starts_with('<') && t.ends_with('>')));
    }
}

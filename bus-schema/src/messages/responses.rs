//! A Responses API answer as stored, so that a later request continues its conversation
//! (`previous_response_id`) and its owner can read or delete it.

use serde::{Deserialize, Serialize};

use crate::ChatMessage;

/// A stored response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// `resp_<task id>`.
    pub id: String,
    /// The API key (its id) that created it: only that key (or an admin key) reads,
    /// continues or deletes it.
    #[serde(default)]
    pub owner: Option<String>,
    /// The model that answered.
    pub model: String,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
    /// The conversation up to and including this answer: every earlier turn, this
    /// request's input, then the answer as an assistant message (instructions are not
    /// carried on, as OpenAI's are not).
    pub conversation: Vec<ChatMessage>,
    /// The response object as the API returned it, JSON text.
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    #[test]
    fn a_stored_response_pins_its_fields() {
        pin(
            StoredResponse {
                id: "resp_1".into(),
                owner: Some("k".into()),
                model: "m".into(),
                created_ms: 1,
                conversation: vec![ChatMessage::new("user", "hi")],
                body: "{}".into(),
            },
            &["id", "owner", "model", "created_ms", "conversation", "body"],
        );
    }
}

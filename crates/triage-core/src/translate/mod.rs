//! Translation between the OpenAI Chat Completions and Anthropic Messages wire formats, both
//! ways, so that any client can be routed to any model. Lossless wherever both sides can express
//! a field; where one cannot, the field is dropped with a debug log (never silently wrong, never
//! a crash). The mappings follow the two API references and the shared cases C06–C20.

mod request;
mod response;
mod stream;

pub use request::{anthropic_to_openai, openai_to_anthropic, thinking_budget, TranslateError, THINKING_BLOCKS};
pub use response::{
    anthropic_to_openai_response, anthropic_usage_of, arguments_of, finish_reason_of, openai_to_anthropic_response,
    openai_usage_of, stop_reason_of,
};
pub use stream::{AnthropicToOpenAi, Flow, OpenAiToAnthropic};

#[cfg(test)]
mod tests;

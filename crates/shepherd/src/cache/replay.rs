//! Cached answers in and out: canonical events gathered into one answer as a stream passes
//! (`AnswerBuilder`), and a cached answer replayed in the client's protocol: the exact body it
//! was first served with, or a whole answer or a well-formed stream built from its canonical form
//! (a cached stream serves a whole request and the reverse).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};

use super::store::Entry;
use crate::providers::Endpoint;
use crate::translate::ir::{self, Event, Finish, Part, ToolCall, Usage};
use crate::translate::shapes::Echo;

/// The most choices an answer gathered from a stream may have.
const MAX_CHOICES: usize = 128;

/// Gathers the canonical events of a stream into one answer.
#[derive(Debug, Default)]
pub struct AnswerBuilder {
    id: Option<String>,
    model: Option<String>,
    /// The choice the events are for.
    current: usize,
    choices: Vec<ChoiceBuilder>,
    usage: Option<Usage>,
}

/// One choice of an answer being gathered.
#[derive(Debug, Default)]
struct ChoiceBuilder {
    parts: Vec<Part>,
    /// Position in `parts` of each tool call, by canonical index.
    calls: Vec<usize>,
    finish: Option<(Finish, Option<String>)>,
}

impl AnswerBuilder {
    pub fn push(&mut self, event: &Event) {
        match event {
            Event::Start { id, model } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
            }
            Event::Choice(index) => self.current = (*index).min(MAX_CHOICES),
            Event::Usage(usage) => self.usage = Some(*usage),
            other => {
                if self.choices.len() <= self.current {
                    self.choices
                        .resize_with(self.current + 1, ChoiceBuilder::default);
                }
                self.choices[self.current].push(other);
            }
        }
    }

    /// The whole answer, if the stream said how every choice finished.
    pub fn finish(self) -> Option<ir::Response> {
        let mut choices = self.choices.into_iter().map(|choice| {
            let (finish, stop_sequence) = choice.finish?;
            Some(ir::Choice {
                parts: choice.parts,
                finish,
                stop_sequence,
            })
        });
        let first = choices.next()??;
        let alternatives = choices.collect::<Option<Vec<_>>>()?;
        Some(ir::Response {
            id: self.id,
            model: self.model,
            parts: first.parts,
            finish: first.finish,
            stop_sequence: first.stop_sequence,
            alternatives,
            usage: self.usage,
        })
    }
}

impl ChoiceBuilder {
    fn push(&mut self, event: &Event) {
        match event {
            Event::Text(text) => match self.parts.last_mut() {
                Some(Part::Text(last)) => last.push_str(text),
                _ => self.parts.push(Part::Text(text.clone())),
            },
            Event::Thinking(text) => match self.parts.last_mut() {
                Some(Part::Thinking { text: last, .. }) => last.push_str(text),
                _ => self.parts.push(Part::Thinking {
                    text: text.clone(),
                    signature: None,
                }),
            },
            Event::ToolStart { index, id, name } => {
                if *index >= MAX_TOOL_CALLS {
                    return;
                }
                if self.calls.len() <= *index {
                    self.calls.resize(index + 1, usize::MAX);
                }
                self.calls[*index] = self.parts.len();
                self.parts.push(Part::ToolCall(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                }));
            }
            Event::ToolArgs { index, fragment } => {
                let at = self.calls.get(*index).copied().unwrap_or(usize::MAX);
                if let Some(Part::ToolCall(call)) = self.parts.get_mut(at) {
                    call.arguments.push_str(fragment);
                }
            }
            Event::Finish {
                reason,
                stop_sequence,
            } => self.finish = Some((*reason, stop_sequence.clone())),
            Event::Start { .. } | Event::Choice(_) | Event::Usage(_) => {}
        }
    }
}

/// The most tool calls of one choice kept for the cache.
const MAX_TOOL_CALLS: usize = 1024;

/// The canonical events that replay `answer` as a stream.
fn events(answer: &ir::Response) -> Vec<Event> {
    let mut events = vec![Event::Start {
        id: None,
        model: answer.model.clone(),
    }];
    for (n, choice) in answer.choices().enumerate() {
        if n > 0 {
            events.push(Event::Choice(n));
        }
        let mut tools = 0;
        for part in choice.parts {
            match part {
                Part::Text(text) => events.push(Event::Text(text.clone())),
                Part::Thinking { text, .. } => events.push(Event::Thinking(text.clone())),
                Part::ToolCall(call) => {
                    events.push(Event::ToolStart {
                        index: tools,
                        id: call.id.clone(),
                        name: call.name.clone(),
                    });
                    events.push(Event::ToolArgs {
                        index: tools,
                        fragment: call.arguments.clone(),
                    });
                    tools += 1;
                }
                _ => {}
            }
        }
        events.push(Event::Finish {
            reason: choice.finish,
            stop_sequence: choice.stop_sequence.map(str::to_owned),
        });
    }
    events
}

fn answer_model(answer: &ir::Response, fallback: &str) -> String {
    answer.model.clone().unwrap_or_else(|| fallback.to_owned())
}

/// The cached answer for a client on `endpoint`, whole or streamed.
pub fn respond(
    entry: &Entry,
    endpoint: Endpoint,
    stream: bool,
    include_usage: bool,
    model: &str,
    echo: &Echo,
) -> Option<Response> {
    let answer = entry.answer.as_ref();
    let shape = endpoint.shape();
    // Answers with an identity of their own (stored responses) are encoded anew.
    let same_bytes = shape.is_none_or(|shape| !shape.fresh_per_answer());
    if !stream {
        let body = match (&entry.body, answer) {
            (Some(body), _) if same_bytes => body.clone(),
            (_, Some(answer)) => Bytes::from(whole(answer, endpoint, model, echo)?.to_string()),
            (_, None) => return None,
        };
        return Some(build(body, "application/json"));
    }
    let answer = answer?;
    let usage = answer.usage.unwrap_or_default();
    let mut encoder =
        shape?.stream_encoder(answer_model(answer, model), include_usage, echo.clone());
    let mut out = BytesMut::new();
    for event in events(answer) {
        encoder.encode(event, &mut out);
    }
    encoder.finish(&usage, &mut out);
    let mut response = build(out.freeze(), "text/event-stream");
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

fn whole(
    answer: &ir::Response,
    endpoint: Endpoint,
    model: &str,
    echo: &Echo,
) -> Option<serde_json::Value> {
    let usage = answer.usage.unwrap_or_default();
    let model = answer_model(answer, model);
    Some(
        endpoint
            .shape()?
            .encode_answer(answer, &model, &usage, echo),
    )
}

fn build(body: Bytes, content_type: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_gathers_into_one_answer() {
        let mut builder = AnswerBuilder::default();
        for event in [
            Event::Start {
                id: Some("c1".into()),
                model: Some("m".into()),
            },
            Event::Text("Hel".into()),
            Event::Text("lo".into()),
            Event::ToolStart {
                index: 0,
                id: "t1".into(),
                name: "f".into(),
            },
            Event::ToolArgs {
                index: 0,
                fragment: "{\"a\":".into(),
            },
            Event::ToolArgs {
                index: 0,
                fragment: "1}".into(),
            },
            Event::Finish {
                reason: Finish::ToolCalls,
                stop_sequence: None,
            },
            Event::Usage(Usage {
                input: 3,
                output: 4,
                ..Usage::default()
            }),
        ] {
            builder.push(&event);
        }
        let answer = builder.finish().unwrap();
        assert_eq!(answer.text(), "Hello");
        assert_eq!(answer.tool_calls().next().unwrap().arguments, "{\"a\":1}");
        assert_eq!(answer.usage.unwrap().output, 4);
        assert!(
            AnswerBuilder::default().finish().is_none(),
            "a cut stream is no answer"
        );
    }
}
